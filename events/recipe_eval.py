"""A recipe's eval and gate sections: the lm-eval tasks and the rule a tuned model must pass."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Tag

from events.fields import NUMBER, Bool, Closed, Float, Int


class EvalTask(Closed):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    yaml: str | None = Field(
        None, description="lm-eval task YAML shipped with the recipe; None for built-in tasks."
    )
    data_file: str | None = Field(
        None, description="Score the YAML's task on this file's rows instead of its own "
        "data, under `name` (data.eval_file sets it).",
    )


OWN_EVAL_SUFFIX = "_own"


class EvalSection(Closed):
    tasks: list[EvalTask] = Field(min_length=1)
    num_fewshot: Int = Field(0, ge=0, le=64)
    batch_size: Int = Field(16, ge=1, le=1024)
    limit: Annotated[int, Field(ge=1), NUMBER, Tag("int")] | None = Field(
        None, description="Evaluate at most this many documents.")
    apply_chat_template: Bool = False
    seed: Int = 1234
    log_samples: Bool = Field(
        False, description="Keep every scored document (prompt, choices, model output) as JSONL."
    )
    num_processes: Int = Field(
        1, ge=1, le=1024, description="Data-parallel lm-eval under accelerate launch; lm-eval "
        "splits the documents across GPUs (on CPUs every process scores them all).",
    )


class GuardTask(Closed):
    """A task the base model already does; the tuned model may lose at most this much on it."""

    task: str
    metric: str = "acc"
    max_regression: Float = Field(
        0.05, ge=0.0, le=1.0, description="Largest allowed drop below base (absolute)."
    )


class GateSection(Closed):
    task: str
    metric: str = "acc"
    min_gain: Float = Field(0.0, description="Tuned must beat base by this much (absolute).")
    alpha: Float = Field(
        0.05, gt=0.0, le=1.0, description="The gain over base (and over the majority answer) "
        "must also be significant: the one-sided exact McNemar test on the documents both "
        "scored, paired by doc_id, below this p-value. 1 switches every noise check off.",
    )
    stderr_factor: Float = Field(
        1.0, ge=0.0, description="Only where per-document outcomes are missing (a metric "
        "not scored 0/1 per document, results from before they were kept): the gain must "
        "exceed this many combined stderrs instead of the paired test; 0 switches it off.",
    )
    guards: list[GuardTask] = Field(
        default_factory=list, description="Regression checks on general tasks."
    )
    max_needed_gain: Float = Field(
        0.25, gt=0.0, le=1.0, description="The pre-flight warns (or with noise: refuse, "
        "refuses) when the evaluation's documents are so few that the noise alone demands a "
        "larger gain than this; a gain no model can make is always refused.",
    )
    noise: Literal["warn", "refuse"] = "warn"
    majority_margin: Float = Field(
        0.05, description="On multiple-choice tasks tuned must also beat the constant "
        "majority answer by this much (absolute), and beyond the noise (alpha).",
    )
    max_class_share: Float = Field(
        0.9, gt=0.0, le=1.0, description="A tuned model giving one answer to more than this "
        "share of the documents (and to more than the targets hold) has collapsed onto it.",
    )
