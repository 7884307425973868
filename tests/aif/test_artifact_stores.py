"""Artifact stores by URI scheme, against the shared file system and a real S3-compatible
server (moto's, on loopback): one folder per model version, every file read back and
verified, a corrupted upload detected by name, and a hand-off stopped by it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aif.artifact_stores import ArtifactStoreError, FileStore, S3Store, artifact_store
from aif.db.models import RegisteredModel
from events.messages import FineTuneRequested
from events.states import JobState
from stagefiles.jobspec import TRAINING_RESULT, TrainingResult
from tests.aif.conftest import local_worker, store_trusted
from tests.conftest import free_port

BUCKET = "aif-models"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    # moto keeps its buckets per process, not per server: without a reset, a test sees the
    # objects an earlier test of the same worker published
    httpx.post(f"{endpoint}/moto-api/reset", timeout=30).raise_for_status()
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def _adapter(folder: Path) -> dict[str, str]:
    folder.mkdir()
    files = {"adapter_config.json": b'{"r": 16}', "adapter_model.safetensors": b"\0" * 4096,
             "README.md": b"# card\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


def _objects(endpoint: str) -> dict[str, str]:
    client = boto3.client("s3", endpoint_url=endpoint)
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    return {o["Key"]: hashlib.sha256(client.get_object(Bucket=BUCKET, Key=o["Key"])[
        "Body"].read()).hexdigest() for o in listed}


def test_s3_holds_one_verified_folder_per_version_and_retire_removes_it(
    s3: str, tmp_path: Path,
) -> None:
    sums = _adapter(tmp_path / "adapter")
    store = artifact_store(f"s3://{BUCKET}/published", s3)
    assert store == S3Store(BUCKET, "published/", s3)
    uri = store.publish(tmp_path / "adapter", "acme.router.v1", sums)
    assert uri == f"s3://{BUCKET}/published/acme.router.v1/"
    assert _objects(s3) == {f"published/acme.router.v1/{n}": d for n, d in sums.items()}
    store.remove("acme.router.v1")
    assert _objects(s3) == {}


def test_the_file_store_lays_out_a_folder_named_as_the_served_model(tmp_path: Path) -> None:
    sums = _adapter(tmp_path / "adapter")
    store = artifact_store((tmp_path / "published").as_uri())
    assert store == FileStore(tmp_path / "published")
    uri = store.publish(tmp_path / "adapter", "acme.router.v1", sums)
    assert uri == (tmp_path / "published" / "acme.router.v1").as_uri()
    assert sorted(p.name for p in (tmp_path / "published" / "acme.router.v1").iterdir()) == \
        sorted(sums)


@pytest.mark.parametrize("kind", ["s3", "file"])
def test_bytes_that_differ_from_the_recorded_digest_are_a_corrupt_upload(
    s3: str, tmp_path: Path, kind: str,
) -> None:
    sums = _adapter(tmp_path / "adapter")
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"\1" + b"\0" * 4095)
    found = hashlib.sha256(b"\1" + b"\0" * 4095).hexdigest()
    uri = f"s3://{BUCKET}/p/" if kind == "s3" else (tmp_path / "published").as_uri()
    with pytest.raises(ArtifactStoreError) as refused:
        artifact_store(uri, s3).publish(tmp_path / "adapter", "acme.router.v1", sums)
    assert str(refused.value) == (
        f"artifact adapter_model.safetensors: sha256 in the store is {found[:12]}..., training "
        f"recorded {sums['adapter_model.safetensors'][:12]}...; the upload is corrupt")


def test_an_unknown_scheme_is_refused_with_the_stores_there_are() -> None:
    with pytest.raises(ArtifactStoreError, match=r"unknown scheme 's4'\. Did you mean 's3'\? "
                       r"Available: file, s3"):
        artifact_store("s4://bucket/x")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_hand_off_whose_adapter_changed_since_training_stops_with_the_reason(
    sessions: sessionmaker[Session], tmp_path: Path, s3: str,
    tiny_request: FineTuneRequested,
) -> None:
    """The adapter's weights change after training (one low mantissa byte: the serving
    check still reproduces the score); the object store's copy then differs from what
    training recorded, and the job fails naming the file, with nothing published."""
    recipe = tiny_request.recipe_inline
    assert recipe is not None
    request = recipe.model_copy(update={"train": recipe.train.model_copy(
        update={"max_steps": 4})})
    job_id = store_trusted(sessions, recipe_inline=request.model_dump(mode="json"))
    w = local_worker(sessions, tmp_path, artifact_store=f"s3://{BUCKET}/published/",
                     s3_endpoint_url=s3)
    assert w.leases.claim() == job_id
    while (job := w.load(job_id)).state != JobState.handing_off:
        w.steps.for_state(JobState(job.state))(job)
    trained = TrainingResult.read(Path(job.work_dir or "") / TRAINING_RESULT)
    weights = Path(trained.adapter_dir) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4] ^= 1
    weights.write_bytes(bytes(data))
    w.run_job(job_id)
    job = w.load(job_id)
    assert job.state == JobState.failed
    assert job.reason.startswith("hand-off stopped: artifact adapter_model.safetensors: "
                                 "sha256 in the store is "), job.reason
    assert job.reason.endswith(f"training recorded "
                               f"{trained.files_sha256['adapter_model.safetensors'][:12]}...; "
                               "the upload is corrupt")
    with sessions() as s:
        assert s.scalars(select(RegisteredModel)).all() == []
