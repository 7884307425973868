"""A consumer that shares no code with the project (`inference_consumer.py`, run as its own
process) reads the hand-off from the tenant's models topic, verifies every file and the base
model's revision, and loads the adapter with plain peft: same greedy answer as the stage's.
Erasing the tenant afterwards withdraws the published copy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aif.db.models import RegisteredModel
from aif.erasure import erase_tenant
from aif.settings import Settings
from events.bus import KafkaConfig
from events.messages import FineTuneRequested
from events.states import JobState
from events.topics import Topics
from stagefiles.jobspec import SERVING_CHECK_RESULT, ServingCheckResult
from tests.aif.conftest import run_to_the_end

CONSUMER = Path(__file__).with_name("inference_consumer.py")


def test_the_consumer_source_imports_nothing_of_the_project() -> None:
    imported = [line.split()[1] for line in CONSUMER.read_text().splitlines()
                if line.startswith(("import ", "from "))]
    assert set(imported) <= {"__future__", "hashlib", "json", "re", "sys", "urllib.request",
                             "pathlib", "kafka"}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_independent_consumer_verifies_and_loads_the_handed_off_adapter(
    broker: str, topics: Topics, db_url: str, sessions: sessionmaker[Session],
    tiny_request: FineTuneRequested, tiny_model_dir: Path, tmp_path: Path,
) -> None:
    recipe = tiny_request.recipe_inline
    assert recipe is not None
    settings = Settings(home=tmp_path / "home", database_url=db_url,
                        kafka=KafkaConfig(bootstrap_servers=broker), topic_prefix=topics.prefix,
                        embedded_broker=False, max_poll_interval_ms=3000,
                        session_timeout_ms=3000,
                        served_base_models={str(tiny_model_dir): "tiny-base"})
    request = FineTuneRequested(recipe_inline=recipe.model_copy(update={
        "train": recipe.train.model_copy(update={"max_steps": 4})}))
    job = run_to_the_end(settings, sessions, request)
    assert job.state == JobState.succeeded, job.reason

    pattern = settings.topics.models_pattern()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # none of our code
    done = subprocess.run(
        [sys.executable, str(CONSUMER), broker, pattern, f"tiny-base={tiny_model_dir}",
         str(tmp_path / "inference")], capture_output=True, text=True, timeout=300, env=env,
        cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["served_name"] == "acme.tiny-grid-routing.v1"
    assert {"adapter_model.safetensors", "adapter_config.json", "SHA256SUMS",
            "README.md"} <= set(said["verified"])
    check = ServingCheckResult.read(Path(job.work_dir or "") / SERVING_CHECK_RESULT)
    assert said["greedy"] == check.greedy["Hello"]

    # Erasing the tenant withdraws the published copy with the registry row.
    erase_tenant(sessions, settings, "acme")
    assert not (settings.published_dir / said["served_name"]).exists()
    with sessions() as s:
        assert s.scalars(select(RegisteredModel)).all() == []
