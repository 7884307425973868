"""One real job with a Kafka password, a signing secret and personal data in its training
file: none of them ends up in a log, event, spec or artifact; the adapter is safetensors
only; the AI-Act pack ships with it and the model-ready event covers it."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from aif.db.models import Job, Outbox, Transition
from aif.db.session import session_factory
from aif.settings import Settings
from events.bus import KafkaConfig
from events.envelope import CloudEvent
from events.messages import FineTuneRequested, ModelReady
from events.states import JobState
from recipes import copied_into, load_recipe
from stagefiles.ai_act import AI_ACT_PACK, PROVENANCE, AiActPack
from stagefiles.checksums import MANIFEST, sha256_file
from tests.aif.conftest import run_to_the_end, signing_key

# A job through every stage on the tiny model, once for the module.
pytestmark = pytest.mark.training

PASSWORD = "kafka-sasl-pw-7f3a9c1e"
EMAIL = "erika.mustermann@example.org"
PHONE = "+49 30 901820"
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


@dataclass
class Run:
    job: Job
    home: Path
    outbox: list[CloudEvent]
    reasons: list[str]
    log: str
    signing_secret: str


@pytest.fixture(scope="module")
def run(broker: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("hygiene")
    shipped = load_recipe("grid-ticket-routing")
    rows = Path(shipped.data.train_file or "").read_text().splitlines()[:200]
    first = json.loads(rows[0])
    rows[0] = json.dumps({**first, "text": f"{first['text']} - mail {EMAIL} or {PHONE}"})
    home = tmp / "home"
    data_root = tmp / "data"  # beside home, whose every file is searched below
    tenant_root = data_root / "acme"  # an inline recipe's files lie in the tenant's root
    train = tenant_root / "tickets.jsonl"
    train.parent.mkdir(parents=True)
    train.write_text("\n".join(rows) + "\n")
    copied = copied_into(shipped, tenant_root)
    recipe = copied.model_copy(update={
        "name": "tiny-hygiene",
        "model": copied.model.model_copy(update={"base": str(tiny_model_dir)}),
        "train": copied.train.model_copy(update={"max_steps": 4, "batch_size": 4,
                                                 "checkpoint_steps": 2}),
        "eval": copied.eval.model_copy(update={"limit": 10}),
        "gate": copied.gate.model_copy(update={"min_gain": -1.0, "alpha": 1.0,
                                               "majority_margin": -1.0, "max_class_share": 1.0,
                                               "guards": []}),
    })
    db_url = f"sqlite:///{tmp / 'aif.db'}"
    sessions = session_factory(db_url)
    key = signing_key(sessions, "acme")
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    root = logging.getLogger()
    level = root.level
    with pytest.MonkeyPatch.context() as env:
        # In the environment too, so that every stage process inherits the secrets.
        env.setenv("AIF_KAFKA__SASL_PLAIN_PASSWORD", PASSWORD)
        env.setenv("AIF_SIGNING_SECRET", key.secret)
        env.setenv("AIF_PII_POLICY", "redact")
        settings = Settings(home=home, data_root=data_root, database_url=db_url,
                            topic_prefix="hygiene", base_model_roots=[tiny_model_dir],
                            kafka=KafkaConfig(bootstrap_servers=broker,
                                              sasl_plain_password=PASSWORD),
                            embedded_broker=False, max_poll_interval_ms=3000,
                            session_timeout_ms=3000)
        assert settings.pii_policy == "redact"
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            job = run_to_the_end(settings, sessions,
                                 FineTuneRequested(recipe_inline=recipe, train_file=str(train)))
            # The service installed the masking: a line logged now with the secret is masked.
            logging.getLogger("aif.test").warning("password is %s", PASSWORD)
        finally:
            root.removeHandler(handler)
            root.setLevel(level)
    with sessions() as s:
        outbox = [CloudEvent.model_validate_json(r.payload)
                  for r in s.scalars(select(Outbox).where(Outbox.key == job.id))]
        reasons = [t.reason for t in s.scalars(select(Transition).where(
            Transition.job_id == job.id))]
    yield Run(job, home, outbox, reasons, captured.getvalue(), key.secret)


def _files(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.is_file())


def test_the_job_succeeds_on_the_redacted_copy(run: Run) -> None:
    assert run.job.state == JobState.succeeded, run.job.reason
    assert run.job.recipe is not None
    train_file = Path(run.job.recipe["data"]["train_file"])
    assert train_file == Path(run.job.work_dir or "") / "redacted" / "train.jsonl"
    assert "<EMAIL>" in train_file.read_text() and "<PHONE>" in train_file.read_text()
    assert any("personal data (redact): 1 email in 1 row, 1 phone in 1 row" in r
               for r in run.reasons)


def test_no_secret_and_no_personal_value_is_in_any_log_event_spec_or_artifact(
    run: Run,
) -> None:
    secrets = [PASSWORD, run.signing_secret, EMAIL, PHONE]
    assert "password is [redacted]" in run.log and PASSWORD not in run.log
    for value in secrets:
        for event in run.outbox:
            assert value not in event.model_dump_json()
        assert not any(value in reason for reason in run.reasons)
    checked = 0
    for path in _files(run.home):  # job directory: specs, logs, progress, adapter, pack
        data = path.read_bytes()
        for value in secrets:
            assert value.encode() not in data, f"{value!r} in {path.relative_to(run.home)}"
        checked += 1
    assert checked > 20


def test_artifacts_are_safetensors_only(run: Run) -> None:
    adapter = Path(run.job.work_dir or "") / "adapter"
    names = {p.name for p in _files(adapter)}
    assert "adapter_model.safetensors" in names
    assert not [n for n in names if Path(n).suffix in PICKLE_SUFFIXES]
    for path in _files(adapter):
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} looks like a pickle"


def test_the_pack_ships_with_the_adapter_and_model_ready_covers_it(run: Run) -> None:
    adapter = Path(run.job.work_dir or "") / "adapter"
    pack = AiActPack.read(adapter / AI_ACT_PACK)
    (source,) = pack.data_sources
    assert source.name == "train.jsonl" and source.category == "tenant_provided"
    assert source.redacted_copy_of_sha256 is not None and source.sha256 != \
        source.redacted_copy_of_sha256
    assert pack.personal_data.redacted and [k.kind for k in pack.personal_data.kinds] == [
        "email", "phone"]
    assert pack.compute.share_of_base is None  # the tiny test model has no published figures
    assert pack.evaluation.gate.passed and pack.lineage.libraries["lm_eval"]
    assert {"torch", "transformers", "peft", "accelerate"} <= pack.lineage.libraries.keys()
    (ready,) = [e for e in run.outbox if e.type == ModelReady.TYPE]
    sums = ModelReady.model_validate(ready.data).files_sha256
    assert sums[AI_ACT_PACK] == sha256_file(adapter / AI_ACT_PACK)
    assert sums[PROVENANCE] == sha256_file(adapter / PROVENANCE)
    assert sums[MANIFEST] == sha256_file(adapter / MANIFEST)
    assert "## EU AI Act / GDPR documentation" in (adapter / "README.md").read_text()
