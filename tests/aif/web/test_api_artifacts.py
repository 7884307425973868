"""A job's artifacts over HTTP: only its own adapter, merged and evaluation files, only for
its tenant (and staff), and no path leads anywhere else."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aif.db.models import Job
from events.states import JobState
from tests.aif.web.test_api_jobs import Api
from tests.aif.web.test_api_jobs import api as api  # the fixture, re-exported for pytest

SECRET = "SECRET-OUTSIDE-THE-JOB"


@pytest.fixture
def job_with_files(api: Api, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    job_id = api.store_job("acme", [JobState.validating, JobState.queued])
    work = tmp_path / "jobs" / "acme" / job_id
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    adapter = work / "adapter"
    (adapter / "nested").mkdir(parents=True)
    weights = b"\x00safetensors bytes"
    (adapter / "adapter_model.safetensors").write_bytes(weights)
    (adapter / "nested" / "tokenizer.json").write_text("{}")
    digest = hashlib.sha256(weights).hexdigest()
    (adapter / "SHA256SUMS").write_text(f"{digest}  adapter_model.safetensors\n")
    (work / "evaluation" / "tasks").mkdir(parents=True)
    (work / "evaluation" / "samples_tuned.jsonl").write_text('{"task": "t"}\n')
    (work / "evaluation" / "tasks" / "t.yaml").write_text("task: t\n")
    (work / "training_spec.json").write_text(f'{{"data": "{SECRET}"}}')  # not an artifact
    (work / "training.log").write_text(SECRET)
    os.symlink(outside / "secret.txt", adapter / "link.safetensors")
    os.symlink(outside, work / "evaluation" / "linked_dir")
    with api.sessions() as s:
        s.get_one(Job, job_id).work_dir = str(work)
        s.commit()
    yield job_id, work


def test_the_listing_holds_the_stage_outputs_and_nothing_else(
        api: Api, job_with_files: tuple[str, Path]) -> None:
    job_id, _ = job_with_files
    listing = api.get(api.acme, f"/v1/jobs/{job_id}/artifacts").json()["data"]
    by_path = {a["path"]: a for a in listing}
    assert sorted(by_path) == ["adapter/SHA256SUMS", "adapter/adapter_model.safetensors",
                               "adapter/nested/tokenizer.json",
                               "evaluation/samples_tuned.jsonl", "evaluation/tasks/t.yaml"]
    weights = by_path["adapter/adapter_model.safetensors"]
    assert weights["sha256"] == hashlib.sha256(b"\x00safetensors bytes").hexdigest()
    assert weights["size_bytes"] == len(b"\x00safetensors bytes")
    assert by_path["evaluation/samples_tuned.jsonl"]["sha256"] is None
    assert api.get(api.staff, f"/v1/jobs/{job_id}/artifacts").json()["data"] == listing


def test_a_listed_file_downloads_as_bytes(api: Api, job_with_files: tuple[str, Path]) -> None:
    job_id, _ = job_with_files
    answer = api.get(api.acme, f"/v1/jobs/{job_id}/artifacts/adapter/adapter_model.safetensors")
    assert answer.status_code == 200 and answer.content == b"\x00safetensors bytes"
    assert answer.headers["content-type"] == "application/octet-stream"
    samples = api.get(api.acme, f"/v1/jobs/{job_id}/artifacts/evaluation/samples_tuned.jsonl")
    assert samples.text == '{"task": "t"}\n'


@pytest.mark.parametrize("path", [
    "training_spec.json", "training.log", "adapter/../training_spec.json",
    "adapter/%2e%2e/training.log", "%2Fetc%2Fpasswd", "adapter/link.safetensors",
    "evaluation/linked_dir/secret.txt", "adapter", "adapter/", "adapter/nested",
])
def test_no_path_outside_the_listing_is_served(
        api: Api, job_with_files: tuple[str, Path], path: str) -> None:
    job_id, _ = job_with_files
    answer = api.get(api.acme, f"/v1/jobs/{job_id}/artifacts/{path}")
    assert answer.status_code == 404, path
    assert SECRET not in answer.text


def test_another_tenant_reads_none_of_it_even_once_published(
        api: Api, job_with_files: tuple[str, Path]) -> None:
    job_id, _ = job_with_files
    assert api.post(api.acme, f"/v1/jobs/{job_id}/publish").status_code == 200
    for url in (f"/v1/jobs/{job_id}/artifacts",
                f"/v1/jobs/{job_id}/artifacts/adapter/adapter_model.safetensors"):
        answer = api.get(api.globex, url)
        assert answer.status_code == 404 and answer.json()["detail"] == f"no job {job_id}"


def test_a_job_before_any_stage_has_no_artifacts(api: Api) -> None:
    job_id = api.store_job("acme", [JobState.validating], request_id="fresh")
    assert api.get(api.acme, f"/v1/jobs/{job_id}/artifacts").json() == {"data": []}
