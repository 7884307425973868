"""One pydantic model per event type: the `data` of a CloudEvent.

Type names are reverse-DNS and versioned; a breaking change gets a new `.vN` type, so old
consumers keep working while partners migrate.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, model_validator

from events.recipe import HyperparameterOverrides, Recipe
from events.states import JobState

TYPE_PREFIX = "eu.aifactory.tuning"


class EventData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    TYPE: ClassVar[str] = ""


class FineTuneRequested(EventData):
    """Partner -> service. Recipe by name or inline; the dataset may override the recipe's."""

    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.finetune.requested.v1"
    recipe: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    recipe_inline: Recipe | None = None
    train_file: str | None = Field(None, description="Overrides the recipe's training file.")
    dataset: str | None = Field(
        None, description="Hub dataset id replacing the recipe's data (its local files unused)."
    )
    overrides: HyperparameterOverrides = HyperparameterOverrides()
    extra_eval_tasks: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")]] = Field(
        default_factory=list, max_length=16,
        description="Built-in lm-eval tasks scored besides the recipe's (needs hub access).",
    )
    labels: dict[str, str] = Field(default_factory=dict, max_length=32)
    callback_url: HttpUrl | None = None

    @model_validator(mode="after")
    def check_one_recipe(self) -> FineTuneRequested:
        if (self.recipe is None) == (self.recipe_inline is None):
            raise ValueError("give exactly one of 'recipe' (a name) or 'recipe_inline'")
        if self.train_file is not None and self.dataset is not None:
            raise ValueError("give at most one of 'train_file' or 'dataset'")
        return self


class CancelRequested(EventData):
    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.cancel.requested.v1"
    job_id: str
    reason: str = ""


class JobStatusChanged(EventData):
    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.job.status.v1"
    job_id: str
    tenant: str
    state: JobState
    previous_state: JobState | None = None
    reason: str = ""
    at: datetime


class JobProgress(EventData):
    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.job.progress.v1"
    job_id: str
    stage: str
    step: int
    total_steps: int
    loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None


class MetricScore(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    task: str
    metric: str
    base: float
    tuned: float
    base_stderr: float | None = None
    tuned_stderr: float | None = None

    @property
    def delta(self) -> float:
        return self.tuned - self.base


class GateDecision(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    passed: bool
    reason: str


class EvaluationCompleted(EventData):
    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.evaluation.completed.v1"
    job_id: str
    tenant: str
    scores: list[MetricScore]
    gate: GateDecision


class ModelReady(EventData):
    """Service -> inference module: where the adapter is and how to verify every file."""

    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.model.ready.v1"
    job_id: str
    tenant: str
    base_model: str
    adapter_uri: str
    files_sha256: dict[str, str]
    scores: list[MetricScore]
    merged_uri: str | None = Field(
        None, description="Full model with the adapter merged in, when the recipe asks for it."
    )
    merged_files_sha256: dict[str, str] = Field(default_factory=dict)


EVENT_TYPES: dict[str, type[EventData]] = {
    m.TYPE: m
    for m in (
        FineTuneRequested,
        CancelRequested,
        JobStatusChanged,
        JobProgress,
        EvaluationCompleted,
        ModelReady,
    )
}

