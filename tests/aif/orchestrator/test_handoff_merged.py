"""The merged export of a handed-off model is in the registry with its own checksums, and
`transformers serve` (the transformers package's own OpenAI-compatible server) serves it on
loopback with the same greedy answer as plain peft on the adapter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import RegisteredModel
from aif.settings import Settings
from events.bus import KafkaConfig
from events.messages import FineTuneRequested
from events.states import JobState
from events.topics import Topics
from stagefiles.checksums import sha256_file
from stagefiles.jobspec import SERVING_CHECK_RESULT, ServingCheckResult
from tests.aif.conftest import run_to_the_end
from tests.conftest import free_port

TRANSFORMERS_CLI = Path(sys.executable).with_name("transformers")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_transformers_serve_answers_with_the_merged_export_as_peft_does(
    broker: str, topics: Topics, db_url: str, sessions: sessionmaker[Session],
    tiny_request: FineTuneRequested, tmp_path: Path,
) -> None:
    recipe = tiny_request.recipe_inline
    assert recipe is not None
    request = FineTuneRequested(recipe_inline=recipe.model_copy(update={
        "train": recipe.train.model_copy(update={"max_steps": 4}),
        "lora": recipe.lora.model_copy(update={"save_merged": True})}))
    settings = Settings(home=tmp_path / "home", database_url=db_url,
                        kafka=KafkaConfig(bootstrap_servers=broker), topic_prefix=topics.prefix,
                        embedded_broker=False, max_poll_interval_ms=3000,
                        session_timeout_ms=3000)
    job = run_to_the_end(settings, sessions, request)
    assert job.state == JobState.succeeded, job.reason
    with sessions() as s:
        (model,) = s.scalars(select(RegisteredModel)).all()
    merged = Path((model.merged_uri or "").removeprefix("file://"))
    assert model.merged_files_sha256 and {
        n: sha256_file(merged / n) for n in model.merged_files_sha256} == \
        model.merged_files_sha256

    port = free_port()
    server = subprocess.Popen(
        [str(TRANSFORMERS_CLI), "serve", str(merged), "--host", "127.0.0.1", "--port",
         str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"}, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "transformers serve not healthy in 180 s"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        listed = {m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]}
        assert str(merged) in listed
        answer = httpx.post(f"{url}/v1/completions", timeout=120, json={
            "model": str(merged), "prompt": "Hello", "max_tokens": 16})
        answer.raise_for_status()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    check = ServingCheckResult.read(Path(job.work_dir or "") / SERVING_CHECK_RESULT)
    assert answer.json()["choices"][0]["text"] == check.greedy["Hello"]
