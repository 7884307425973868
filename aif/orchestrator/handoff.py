"""Hand-off of a passing model: the serving check's spec, publication and the registry row.

`HandOff.run` runs them in this order: the serving-compatibility stage in its
own process, the upload to the artifact store (every digest verified), active loading on
the configured endpoints, then one transaction that registers the version and queues
`model.ready` (v1 and v2), `model.serving` and the job's `succeeded`.
"""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from aif import audit, registry
from aif.artifact_stores import ArtifactStoreError
from aif.db.models import Job, RegisteredModel
from aif.jobstore.outbox import enqueue_event
from aif.jobstore.transitions import advance
from aif.orchestrator.ai_act_pack import CARD, write_pack
from aif.orchestrator.errors import FinalError
from aif.orchestrator.leases import Leases
from aif.orchestrator.scores import metric_score
from aif.orchestrator.stage_runs import StageRunner, read_result
from aif.settings import Settings
from aif.stages import SERVING_CHECK, TRAINING
from events.messages import (
    GateDecision,
    MetricScore,
    ModelIntent,
    ModelReady,
    ModelReadyV2,
    ServedBase,
)
from events.recipe import Recipe
from events.states import JobState
from stagefiles.ai_act import AI_ACT_PACK
from stagefiles.checksums import MANIFEST
from stagefiles.failpoints import failpoint
from stagefiles.jobspec import ServingCheckResult, ServingCheckSpec, TrainingResult


def serving_check_spec(job: Job, recipe: Recipe, trained: TrainingResult,
                       scores: list[MetricScore], settings: Settings, evaluation_dir: Path
                       ) -> ServingCheckSpec:
    """Re-score the evaluation's own documents where there are at most
    `serving_check_docs` of them (the score must then be equal), else a sample of that size
    (it must then be within three binomial standard errors)."""
    gate = recipe.gate
    stored = next(s.tuned for s in scores if s.task == gate.task and s.metric == gate.metric)
    limit = recipe.eval.limit
    same_docs = limit is not None and limit <= settings.serving_check_docs
    n = limit if same_docs and limit else settings.serving_check_docs
    tolerance = 1e-6 if same_docs else 3 * math.sqrt(stored * (1 - stored) / n) + 1 / n
    return ServingCheckSpec(job_id=job.id, base_model_dir=trained.base_model_dir,
                            adapter_dir=trained.adapter_dir, limits=settings.serving_limits,
                            recipe=recipe, evaluation_dir=str(evaluation_dir),
                            stored_score=stored, metric=gate.metric, sample_docs=n,
                            tolerance=tolerance, probe_prompts=settings.serving_probe_prompts)


REWRITTEN = frozenset({CARD, AI_ACT_PACK, MANIFEST})
"""Adapter files the hand-off itself rewrites (`write_pack`); training wrote the others."""


def expected_digests(trained: TrainingResult, packed: dict[str, str]) -> dict[str, str]:
    """What each published file must hash to: training's own record for the files it
    wrote, so bytes changed anywhere since (shared file system, upload) stop the hand-off,
    and the pack's for the files the hand-off rewrote."""
    return {**packed, **{name: digest for name, digest in trained.files_sha256.items()
                         if name in packed and name not in REWRITTEN}}


def load_path(uri: str) -> str:
    """What a server's load call is given: a local folder for file://, else the URI."""
    parts = urlsplit(uri)
    return parts.path if parts.scheme == "file" else uri


def version_of(session: Session, job: Job) -> tuple[str, int]:
    """The job's model name and version: the one registered for it (a re-adopted job), else
    the next free one."""
    name = registry.model_name(job)
    mine = session.scalar(select(RegisteredModel.version).where(
        RegisteredModel.job_id == job.id))
    return name, mine or registry.next_version(session, job.tenant, name)


def register(session: Session, settings: Settings, job: Job, recipe: Recipe,
             trained: TrainingResult, check: ServingCheckResult, files_sha256: dict[str, str],
             scores: list[MetricScore], adapter_uri: str, version: int, replaces: int | None
             ) -> tuple[RegisteredModel, tuple[ModelReady, ModelReadyV2]]:
    """The registry row of the version and the events announcing it (v1 for old readers)."""
    name = registry.model_name(job)
    base = ServedBase(id=settings.served_base_models.get(recipe.model.base, recipe.model.base),
                      revision=check.base_revision, tokenizer_sha256=check.tokenizer_sha256)
    shape = check.adapter
    row = RegisteredModel(
        tenant=job.tenant, name=name, version=version,
        served_name=registry.served_name(name, version), job_id=job.id,
        status=registry.Status.ready, base_model=base.id, base_revision=base.revision,
        adapter_uri=adapter_uri, files_sha256=files_sha256,
        merged_uri=Path(trained.merged_dir).as_uri() if trained.merged_dir else None,
        merged_files_sha256=trained.merged_files_sha256, adapter=shape.model_dump(mode="json"),
        scores=[s.model_dump(mode="json") for s in scores], gate_reason=job.gate_reason or "",
        serving={})
    session.add(row)
    v1 = ModelReady(job_id=job.id, tenant=job.tenant, base_model=recipe.model.base,
                    adapter_uri=Path(trained.adapter_dir).as_uri(), files_sha256=files_sha256,
                    scores=scores, merged_uri=row.merged_uri,
                    merged_files_sha256=trained.merged_files_sha256)
    v2 = ModelReadyV2(
        job_id=job.id, tenant=job.tenant, name=name, version=version,
        served_name=row.served_name,
        intent=ModelIntent.replace if replaces else ModelIntent.load, base_model=base,
        adapter_uri=adapter_uri, files_sha256=files_sha256, adapter=shape, scores=scores,
        gate=GateDecision(passed=True, reason=row.gate_reason),
        model_card_uri=adapter_uri.rstrip("/") + "/README.md", merged_uri=row.merged_uri,
        merged_files_sha256=row.merged_files_sha256,
        replaces_version=replaces)
    return row, (v1, v2)


class HandOff:
    """The step of a job in `handing_off` (see the module), on `Steps`' behalf."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], leases: Leases,
                 runner: StageRunner) -> None:
        self.settings, self.sessions, self.leases, self.runner = (
            settings, sessions, leases, runner)

    def run(self, job: Job, work: Path) -> None:
        """Prove a server can load the adapter (a stage), publish and verify its files, load
        it on the endpoints, then register and announce it with the job's success."""
        failpoint("worker.before_handoff")
        recipe = Recipe.model_validate(job.recipe)
        trained = read_result(TRAINING, work)
        with self.sessions() as session:
            row = self.leases.owned(session, job.id)
            scores = [metric_score(s) for s in row.scores]
            lm_eval_version = next((s.lm_eval_version for s in row.scores), "")
            files_sha256 = expected_digests(trained, write_pack(
                row, recipe, trained, scores, lm_eval_version))
            name, version = version_of(session, row)
            replaces = max((v.version for v in registry.live_versions(session, job.tenant, name)
                            if v.version != version), default=None)
        spec_path = work / SERVING_CHECK.spec_file
        serving_check_spec(job, recipe, trained, scores, self.settings,
                           work / "evaluation").write(spec_path)
        self.runner.run_stage(job, JobState.handing_off, SERVING_CHECK, spec_path)
        check = read_result(SERVING_CHECK, work)
        served = registry.served_name(name, version)
        try:
            adapter_uri = registry.published_store(self.settings).publish(
                Path(trained.adapter_dir), served, files_sha256)
        except ArtifactStoreError as exc:
            raise FinalError(f"hand-off stopped: {exc}") from exc
        outcomes = registry.endpoints(self.settings).load(served, load_path(adapter_uri))
        with self.sessions() as session:
            row = self.leases.owned(session, job.id)
            model, announced = register(
                session, self.settings, row, recipe, trained, check, files_sha256, scores,
                adapter_uri, version, replaces)
            event = enqueue_event(session, self.settings.topics.models, announced[0], job=row,
                                  event_id=f"{job.id}:model-ready")
            enqueue_event(session, self.settings.topics.models, announced[1], job=row,
                          event_id=f"{job.id}:model-ready:v2")
            if outcomes:
                registry.record_serving(session, self.settings, model, row, outcomes,
                                        f"{job.id}:serving:v{version}:load")
            for old in registry.live_versions(session, job.tenant, name):
                if old.version != version:
                    registry.retire_row(session, self.settings, old,
                                        f"replaced by version {version}", audit.SERVICE)
            audit.record(session, audit.Action.hand_off, actor=audit.SERVICE,
                         tenant=row.tenant, job_id=row.id, event_id=event.id,
                         payload_sha256=audit.sha256(event.to_bytes()),
                         files_sha256=trained.files_sha256, model=model.name, version=version)
            advance(session, row, JobState.succeeded, self.settings.topics,
                    f"model handed off as {model.name}:{version}")
            session.commit()
