"""Refusals of bad rows name the file as the tenant named it, the line or row, the column and
the rule: never a value of the row and never the server's path of the file (#24). An upload is
refused for a row's shape exactly as the pre-flight refuses it.

Every column of each bad row holds a marker (and an IBAN, as the personal-data scan would find
it); the job is validated by a worker with the real pre-flight stage (no training: a bad row
stops the job there), and the marker and the data root are looked for in everything the job
says: its reason and transitions, the stored and served pre-flight report, the status events,
the stage's log and report, the worker's log and the job's page.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from aif.settings import Settings
from aif.tenants import add_api_key, create_tenant
from aif.web.app import create_app
from aif.web.deps import install_problem_handlers
from aif.web.routes import files
from events.messages import FineTuneRequested
from events.states import JobState
from stagefiles.jobspec import PREFLIGHT_SPEC
from tests.aif.conftest import everything_said, local_worker, store_trusted

MARKER = "SECRET-MARKER-d41c"
IBAN = "DE89370400440532013000"  # a valid one: the pii scan counts it, by row only


def _cell(column: str) -> str:
    return f"{MARKER}-{column} {IBAN}"


def _jsonl(path: Path, good: list[dict]) -> list[str]:
    bad = [{"text": _cell("text"), "label": _cell("label")},
           {"text": _cell("text"), "label": {_cell("key"): _cell("label")}}]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*good, *bad]))
    n = len(good)
    return [f"line {n + 1}: column 'label': the label is not one of the task's choices",
            f"line {n + 2}: column 'label': the label is not one of the task's choices"]


def _csv(path: Path, good: list[dict]) -> list[str]:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows([r["text"], r["label"]] for r in good)
        writer.writerow([_cell("text"), _cell("label"), _cell("extra")])  # one cell too many
        writer.writerow([_cell("text"), _cell("label")])
    n = len(good) + 1  # the header is line 1
    return [f"line {n + 1}: 3 columns, the header has 2",
            f"line {n + 2}: column 'label': the label is not one of the task's choices"]


def _parquet(path: Path, good: list[dict]) -> list[str]:
    pq.write_table(pa.Table.from_pylist([*good, {"text": _cell("text"),
                                                 "label": _cell("label")}]), path)
    return [f"row {len(good) + 1}: column 'label': the label is not one of the task's choices"]


WRITERS: dict[str, Callable[[Path, list[dict]], list[str]]] = {
    "jsonl": _jsonl, "csv": _csv, "parquet": _parquet}


def _job_page(sessions: sessionmaker[Session], job_id: str) -> str:
    """The job's HTML page, as the tenant's browser gets it after signing in."""
    with sessions() as s:
        key = add_api_key(s, "acme")[1]
        s.commit()
    client = TestClient(create_app(sessions, Settings()), base_url="https://testserver")
    form = client.get("/signin").text
    token = re.search(r'name="csrf" value="([^"]+)"', form)[1]  # type: ignore[index]
    signed = client.post("/signin", data={"api_key": key, "csrf": token, "next": "/jobs"},
                         follow_redirects=False)
    assert signed.status_code == 303, signed.text
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200, page.text
    return page.text


@pytest.mark.parametrize("kind", WRITERS)
def test_a_bad_row_is_refused_by_file_line_column_and_rule_never_by_value_or_server_path(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested,
    data_root: Path, caplog: pytest.LogCaptureFixture, kind: str,
) -> None:
    recipe = tiny_request.recipe_inline
    assert recipe is not None and recipe.data.train_file is not None
    good = [json.loads(line) for line in
            Path(recipe.data.train_file).read_text().splitlines()[:12]]
    (data_root / "acme" / "exports").mkdir(parents=True)
    reasons = WRITERS[kind](data_root / "acme" / "exports" / f"tickets.{kind}", good)
    job_id = store_trusted(sessions, recipe_inline=recipe.model_dump(mode="json"),
                           train_file=f"exports/tickets.{kind}")  # relative, as tenants do
    w = local_worker(sessions, tmp_path)
    assert w.leases.claim() == job_id
    with caplog.at_level(logging.DEBUG):
        w.steps.validate(w.load(job_id))
    job = w.load(job_id)
    assert job.state == JobState.rejected, job.reason
    assert f"exports/tickets.{kind}: {len(reasons)} problem(s) in" in job.reason
    for reason in reasons:
        assert reason in job.reason
    assert job.preflight["train"]["source"] == f"exports/tickets.{kind}"
    assert job.preflight["pii"]["kinds"][0]["kind"] == "iban"  # found, counted, not quoted

    said = everything_said(sessions, job_id) + caplog.text  # creates the tenant's row too
    page = _job_page(sessions, job_id)
    for reason in reasons:
        assert reason in said  # what is looked through holds the refusal
    assert MARKER not in said + page and IBAN not in said + page
    # The stage's own input names the files it reads; nothing it or the worker says does,
    # nor the page's timeline and pre-flight sections (its lineage shows the frozen recipe).
    spec = (Path(job.work_dir) / PREFLIGHT_SPEC).read_text()
    told = said.replace(spec, "") + "".join(
        re.findall(r'<section aria-labelledby="h-(?:timeline|preflight)">.*?</section>', page,
                   re.DOTALL))
    assert "problem(s) in" in told.split('aria-labelledby="h-timeline"', 1)[1]  # the sections
    for root in {str(data_root), os.path.realpath(data_root)}:
        assert root not in told


def test_the_upload_check_refuses_a_csv_row_with_a_cell_too_many_as_the_pre_flight_does(
    sessions: sessionmaker[Session], tmp_path: Path, tiny_request: FineTuneRequested,
    data_root: Path,
) -> None:
    recipe = tiny_request.recipe_inline
    assert recipe is not None and recipe.data.train_file is not None
    good = [json.loads(line) for line in
            Path(recipe.data.train_file).read_text().splitlines()[:12]]
    written = tmp_path / "tickets.csv"
    extra_cell = _csv(written, good)[0]  # the pre-flight's reason for that row, seen above
    with sessions() as s:
        key = create_tenant(s, "acme").api_key
        s.commit()
    app = FastAPI()
    install_problem_handlers(app)
    app.include_router(files.router)
    app.state.sessions, app.state.settings = sessions, Settings(home=tmp_path)
    client = TestClient(app)
    auth = {"Authorization": f"Bearer {key}"}
    answer = client.post("/v1/files", headers=auth,
                         files={"file": ("tickets.csv", written.read_bytes())})
    assert answer.status_code == 422, answer.text
    detail = answer.json()["detail"]
    assert detail == f"file: 1 bad row(s) in 14 read, max_bad_fraction 0: {extra_cell}"
    assert MARKER not in answer.text and IBAN not in answer.text
    assert not [p for p in data_root.rglob("*") if p.is_file() and "files" in p.parts]
