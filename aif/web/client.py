"""A small client of the HTTP API v1, for `aif submit --api`: submit a request, follow its
job's event stream (resuming after a dropped connection) until the job is over."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import httpx

from aif.follow import JobWatch
from events.envelope import CloudEvent
from events.messages import EVENT_TYPES, EventData, FineTuneRequested

APPEAR_TIMEOUT_S = 60.0
"""How long a just-submitted job may take to be stored by intake (404 until then)."""


class ApiError(RuntimeError):
    """The API refused; the message is its problem document's detail."""


def _raise_for_problem(answer: httpx.Response) -> None:
    if answer.is_error:
        try:
            detail = answer.json().get("detail", answer.text)
        except ValueError:
            detail = answer.text
        raise ApiError(f"{answer.status_code}: {detail}")


def _client(api: str, key: str) -> httpx.Client:
    return httpx.Client(base_url=api.rstrip("/"), headers={"Authorization": f"Bearer {key}"},
                        timeout=httpx.Timeout(60.0, read=None))  # the stream may be quiet


def submit(api: str, key: str, request: FineTuneRequested) -> str:
    """The job id. An Idempotency-Key makes a retried POST the same job, never a second."""
    with _client(api, key) as client:
        answer = client.post("/v1/jobs", json=request.model_dump(mode="json", exclude_none=True),
                             headers={"Idempotency-Key": str(uuid.uuid4())})
    _raise_for_problem(answer)
    return answer.json()["id"]


def follow(api: str, key: str, job_id: str, on_event: Callable[[EventData], None]) -> JobWatch:
    """Read the job's events until its final status, reconnecting with Last-Event-ID."""
    watch, last_id = JobWatch(), 0
    appear_by = time.monotonic() + APPEAR_TIMEOUT_S
    with _client(api, key) as client:
        while watch.final is None:
            try:
                with client.stream("GET", f"/v1/jobs/{job_id}/events",
                                   headers={"Last-Event-ID": str(last_id)}) as answer:
                    if answer.status_code == 404 and time.monotonic() < appear_by:
                        time.sleep(1)  # not stored by intake yet
                        continue
                    if answer.is_error:
                        answer.read()
                        _raise_for_problem(answer)
                    event_id, data = None, None
                    for line in answer.iter_lines():
                        if line.startswith("id: "):
                            event_id = int(line[4:])
                        elif line.startswith("data: "):
                            data = line[6:]
                        elif not line and data is not None:
                            event = CloudEvent.model_validate(json.loads(data))
                            if (model := EVENT_TYPES.get(event.type)) is not None:
                                parsed = model.model_validate(event.data)
                                watch.add(parsed)
                                on_event(parsed)
                            last_id, data = event_id or last_id, None
            except httpx.TransportError:
                time.sleep(1)  # dropped: resume after the last event received
    return watch
