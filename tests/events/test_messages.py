"""The compatibility rules of the event models: closed requests, open service events."""

import re
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from events.envelope import describe_validation_error
from events.messages import (
    REQUEST_EXTENSIONS,
    EvaluationCompleted,
    FineTuneRequested,
    JobEvent,
    JobProgress,
    JobStatusChanged,
    ModelReady,
)
from events.states import JobState


def test_callback_url_is_refused_by_name() -> None:
    with pytest.raises(ValidationError) as exc:
        FineTuneRequested.model_validate(
            {"recipe": "grid-ticket-routing", "callback_url": "https://acme.example/hook"})
    reason = describe_validation_error(exc.value, "data")
    assert reason.startswith("data: callback_url is no longer accepted")
    assert "status events" in reason
    assert "callback_url" not in FineTuneRequested.model_json_schema()["properties"]


def test_requests_refuse_unknown_fields_and_service_events_ignore_them() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        FineTuneRequested.model_validate({"recipe": "grid-ticket-routing", "recipy": "x"})
    status = JobStatusChanged.model_validate({
        "job_id": "j", "tenant": "acme", "state": "queued", "at": "2026-01-01T00:00:00Z",
        "added_in_a_later_v1": 1,
    })
    assert status.state is JobState.queued


def test_job_events_name_the_request_and_old_v1_events_still_parse() -> None:
    assert all(issubclass(m, JobEvent)
               for m in (JobStatusChanged, JobProgress, EvaluationCompleted, ModelReady))
    old = JobProgress.model_validate({"job_id": "j", "stage": "training", "step": 1,
                                      "total_steps": 2})
    assert (old.request_source, old.request_id, old.extensions()) == (None, None, {})
    new = JobStatusChanged(job_id="j", tenant="acme", state=JobState.queued,
                           at=datetime.now(UTC), request_source="urn:acme", request_id="42")
    assert new.extensions() == {"requestsource": "urn:acme", "requestid": "42"}
    schema = JobStatusChanged.model_json_schema()["properties"]
    assert "requestsource" in schema["request_source"]["description"]


def test_extension_names_follow_the_cloudevents_naming_rule() -> None:
    for name in REQUEST_EXTENSIONS.values():
        assert re.fullmatch(r"[a-z0-9]{1,20}", name)
