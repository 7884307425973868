"""Recording an evaluation: its scores, the gate's decision and the event announcing both;
and reading a stored score back as the event carried it."""

from __future__ import annotations

from sqlalchemy.orm import Session

from aif.db.models import Job, Score
from aif.jobstore.outbox import enqueue_event
from aif.orchestrator.gate import decide
from events.messages import EvaluationCompleted, GateDecision, MetricScore
from events.recipe import Recipe
from events.topics import Topics
from stagefiles.jobspec import EvaluationResult


def record_evaluation(session: Session, job: Job, recipe: Recipe, result: EvaluationResult,
                      topics: Topics) -> GateDecision:
    """Store every base/tuned score with how it was obtained, decide the gate and enqueue
    `evaluation.completed`; the caller moves the job and commits, all in one transaction."""
    scores, decision = decide(recipe, result)
    tuned = {(m.task, m.metric): m for m in result.tuned}
    job.gate_passed, job.gate_reason = decision.passed, decision.reason
    for s in scores:
        m = tuned[(s.task, s.metric)]
        session.add(Score(
            job_id=job.id, **s.model_dump(), num_fewshot=m.num_fewshot, samples=m.samples,
            lm_eval_version=result.lm_eval_version,
            task_config_sha256=result.task_config_sha256.get(s.task, ""),
        ))
    enqueue_event(session, topics.models, EvaluationCompleted(
        job_id=job.id, tenant=job.tenant, scores=scores, gate=decision), job=job)
    return decision


def metric_score(row: Score) -> MetricScore:
    """The stored score exactly as `evaluation.completed` carried it, so what is handed off,
    registered, shown and served is what the gate decided on. Every `MetricScore` field is a
    column of the same name (`record_evaluation` stores them by name, so a field without a
    column fails there, loudly)."""
    return MetricScore.model_validate(
        {name: getattr(row, name) for name in MetricScore.model_fields})
