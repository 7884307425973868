"""Recording an evaluation: its scores, the gate's decision and the event announcing both."""

from __future__ import annotations

from sqlalchemy.orm import Session

from aif.db.models import Job, Score
from aif.orchestrator.gate import decide
from aif.orchestrator.states import enqueue_event
from events.jobspec import EvaluationResult
from events.messages import EvaluationCompleted, GateDecision
from events.recipe import Recipe
from events.topics import Topics


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
            job_id=job.id, task=s.task, metric=s.metric, base=s.base, tuned=s.tuned,
            base_stderr=s.base_stderr, tuned_stderr=s.tuned_stderr,
            majority=s.majority, chance=s.chance, base_macro_f1=s.base_macro_f1,
            tuned_macro_f1=s.tuned_macro_f1, base_recall=s.base_recall,
            tuned_recall=s.tuned_recall,
            vs_base=s.vs_base.model_dump() if s.vs_base else None,
            vs_majority=s.vs_majority.model_dump() if s.vs_majority else None,
            num_fewshot=m.num_fewshot, samples=m.samples,
            lm_eval_version=result.lm_eval_version,
            task_config_sha256=result.task_config_sha256.get(s.task, ""),
        ))
    enqueue_event(session, topics.models, EvaluationCompleted(
        job_id=job.id, tenant=job.tenant, scores=scores, gate=decision), job=job)
    return decision
