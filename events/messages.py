"""One pydantic model per event type: the `data` of a CloudEvent.

Type names are reverse-DNS and versioned; a breaking change gets a new `.vN` type, so old
consumers keep working while partners migrate. Requests (partner -> service) are closed: an
unknown field is refused by name, so a typo or a retired field is never silently dropped.
Events from the service are open: a version may gain optional fields, and consumers ignore
fields they do not know (the committed schemas allow them).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, Tag, model_validator
from pydantic_core import PydanticCustomError

from events.fields import NUMBER, given
from events.recipe import HyperparameterOverrides, Recipe
from events.states import JobState

TYPE_PREFIX = "eu.aifactory.tuning"
PUBLIC_LABEL = "public"
"""A request label `public: "true"` publishes the job's scores to every tenant's leaderboard."""


class EventData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    TYPE: ClassVar[str] = ""


OPEN = ConfigDict(extra="ignore", frozen=True)
"""Config of service output: a consumer on an older model ignores fields added since."""

REQUEST_EXTENSIONS = {"request_source": "requestsource", "request_id": "requestid"}
"""Data field -> CloudEvents extension attribute (lowercase alphanumeric, at most 20 chars)."""


class RequestEvent(EventData):
    """Service -> partner, answering a request: it names the request, in the data and on the
    envelope, so a partner matches it with no code of ours."""

    model_config = OPEN
    request_source: str | None = Field(
        None,
        description="CloudEvents `source` of the request; also the envelope's "
        "`requestsource` extension attribute. Absent only in events older than the field, "
        "and where a refused record named no request the service could read.",
    )
    request_id: str | None = Field(
        None,
        description="CloudEvents `id` of the request; also the envelope's "
        "`requestid` extension attribute. Source and id together identify the request.",
    )

    def extensions(self) -> dict[str, str]:
        """The request's source and id as envelope extension attributes."""
        return {ext: value for name, ext in REQUEST_EXTENSIONS.items()
                if (value := getattr(self, name)) is not None}


class JobEvent(RequestEvent):
    """Service -> partner, about one job and the fine-tuning request it serves."""

    job_id: str


class RequestRefused(RequestEvent):
    """Service -> partner: a request record its signature proves the tenant's, refused at
    intake where no job of the tenant says why (the record names no request, or none the
    service could read; it is a cancel, of an unknown type or for another tenant; it reuses
    the source and id of an earlier request with another payload). A refused fine-tuning
    request that names itself becomes a job, `rejected` with the reason, instead. Sent on the
    tenant's status topic, beside the operators' dead letter of the same record."""

    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.request.refused.v1"
    tenant: str
    reason: str = Field(description="Field and rule, as the dead letter's `aif.dlq.reason`; "
                        "never the record's values.")
    record: str = Field(description="topic/partition/offset of the refused record, as the "
                        "producer's send reported them; also the envelope's `subject`.")
    record_sha256: str = Field(description="SHA-256 (hex) of the refused record's value.")
    at: datetime


EXCLUSIVE_FIELDS = {
    "oneOf": [given("recipe"), given("recipe_inline")],
    "not": {"anyOf": [given(*pair) for pair in (
        ("train_file", "dataset"), ("train_file", "file_id"), ("dataset", "file_id"),
        ("eval_file", "eval_split"))]},
}
"""`check_one_recipe` in JSON Schema, so the published schemas say it too."""


class FineTuneRequested(EventData):
    """Partner -> service. Recipe by name or inline; the dataset may override the recipe's.
    Exactly one of `recipe` and `recipe_inline`; at most one of `train_file`, `dataset` and
    `file_id`, and of `eval_file` and `eval_split`."""

    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra=EXCLUSIVE_FIELDS)
    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.finetune.requested.v1"
    recipe: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    recipe_inline: Recipe | None = None
    train_file: str | None = Field(None, description="Overrides the recipe's training file.")
    dataset: str | None = Field(
        None, description="Hub dataset id replacing the recipe's data (its local files unused)."
    )
    file_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_-]{1,40}$",
        description="Id of a training file this tenant uploaded (POST /v1/files); replaces the "
        "recipe's training file like `train_file`.",
    )
    eval_file: str | None = Field(
        None, description="The tenant's own evaluation rows (same columns as training): the "
        "gate's primary task, scored with the recipe's task template; a path or URL checked "
        "like `train_file`.",
    )
    eval_split: Annotated[float, Field(gt=0.0, le=0.5), NUMBER, Tag("float")] | None = Field(
        None, description="Instead of eval_file: hold this seeded share of the "
        "training rows out of training as the gate's primary task.",
    )
    overrides: HyperparameterOverrides = HyperparameterOverrides()
    extra_eval_tasks: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,100}$")]] = Field(
        default_factory=list, max_length=16,
        description="Built-in lm-eval tasks scored besides the recipe's (needs hub access).",
    )
    labels: dict[str, str] = Field(
        default_factory=dict, max_length=32,
        description=f'Free-form tags to filter jobs by; "{PUBLIC_LABEL}": "true" shows the '
                    "job's scores (never its data) on every tenant's leaderboard.")

    @model_validator(mode="before")
    @classmethod
    def refuse_callback_url(cls, data: Any) -> Any:
        """v1 once accepted `callback_url` and never called it; a sender relying on it is told
        so by name (the message is ours, so it survives masking of the sender's keys)."""
        if isinstance(data, dict) and "callback_url" in data:
            raise PydanticCustomError(
                "retired_field",
                "callback_url is no longer accepted (no callback was ever made): follow the "
                "job's status events, which carry this request's source and id",
            )
        return data

    @model_validator(mode="after")
    def check_one_recipe(self) -> FineTuneRequested:
        if (self.recipe is None) == (self.recipe_inline is None):
            raise ValueError("give exactly one of 'recipe' (a name) or 'recipe_inline'")
        if sum(x is not None for x in (self.train_file, self.dataset, self.file_id)) > 1:
            raise ValueError("give at most one of 'train_file' or 'dataset' or 'file_id'")
        if self.eval_file is not None and self.eval_split is not None:
            raise ValueError("give at most one of 'eval_file' or 'eval_split'")
        return self


class CancelRequested(EventData):
    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.cancel.requested.v1"
    job_id: str
    reason: str = ""


class JobStatusChanged(JobEvent):
    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.job.status.v1"
    tenant: str
    state: JobState
    previous_state: JobState | None = None
    reason: str = ""
    at: datetime


class JobProgress(JobEvent):
    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.job.progress.v1"
    stage: str
    step: int
    total_steps: int
    loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    reward_margin: float | None = Field(
        None, description="dpo/orpo: the chosen answer's reward minus the rejected one's, "
        "mean over the pairs since the last line (dpo: beta x log-ratio to the base model; "
        "orpo: orpo_lambda x mean token log-probability, as TRL logs them).")
    reward_accuracy: float | None = Field(
        None, description="dpo/orpo: share of those pairs whose chosen answer has the larger "
        "reward.")
    accuracy: float | None = Field(
        None, description="Validation lines with train.early_stopping_metric accuracy: the "
        "gate task's accuracy on the validation rows (answers chosen by log-likelihood over "
        "the task's choices, as lm-eval does).")


class PairedComparison(BaseModel):
    """Tuned against another scorer (the base model, the constant majority answer) on the
    documents both scored, paired by lm-eval doc_id: the figures of the gate's noise check
    (`aif.orchestrator.paired`)."""

    model_config = OPEN
    documents: int = Field(ge=1, description="Documents both scored.")
    diff: float = Field(description="Tuned accuracy minus the other's on those documents.")
    ci_low: float = Field(description="Lower end of the paired 95% bootstrap interval of diff.")
    ci_high: float = Field(description="Upper end of that interval.")
    only_tuned_right: int = Field(ge=0, description="Documents only tuned got right.")
    only_other_right: int = Field(ge=0, description="Documents only the other got right.")
    p_value: float = Field(ge=0.0, le=1.0, description="One-sided exact McNemar (sign) test "
                           "that tuned is the better: P(at least only_tuned_right of the "
                           "discordant documents favour tuned, each favouring either side "
                           "with probability 1/2).")


class MetricScore(BaseModel):
    model_config = OPEN
    task: str
    metric: str
    base: float
    tuned: float
    base_stderr: float | None = None
    tuned_stderr: float | None = None
    # Multiple-choice tasks (`acc`): what a constant answer and a guess score on the same
    # documents, and how each model's answers spread over the classes.
    majority: float | None = None
    chance: float | None = None
    base_macro_f1: float | None = None
    tuned_macro_f1: float | None = None
    base_recall: dict[str, float] | None = None
    tuned_recall: dict[str, float] | None = None
    vs_base: PairedComparison | None = Field(
        None, description="Tuned against base document by document; absent where the "
        "metric has no per-document 0/1 outcomes (and in events older than the field).")
    vs_majority: PairedComparison | None = Field(
        None, description="Multiple-choice `acc`: tuned against always answering the "
        "majority class, document by document.")

    @property
    def delta(self) -> float:
        return self.tuned - self.base


class GateDecision(BaseModel):
    model_config = OPEN
    passed: bool
    reason: str


class EvaluationCompleted(JobEvent):
    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.evaluation.completed.v1"
    tenant: str
    scores: list[MetricScore]
    gate: GateDecision


class ModelReady(JobEvent):
    """Service -> inference module: where the adapter is and how to verify every file."""

    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.model.ready.v1"
    tenant: str
    base_model: str
    adapter_uri: str
    files_sha256: dict[str, str]
    scores: list[MetricScore]
    merged_uri: str | None = Field(
        None, description="Full model with the adapter merged in, when the recipe asks for it."
    )
    merged_files_sha256: dict[str, str] = Field(default_factory=dict)


class AdapterShape(BaseModel):
    """What a serving layer checks before it loads an adapter (vLLM refuses a rank above its
    `--max-lora-rank`, `modules_to_save` and DoRA)."""

    model_config = OPEN
    peft_type: str
    r: int
    lora_alpha: float
    target_modules: list[str]
    use_dora: bool
    modules_to_save: list[str]
    dtype: str
    min_max_lora_rank: int = Field(
        description="The smallest `--max-lora-rank` a vLLM server needs for this adapter.")


class ServedBase(BaseModel):
    """The base model as a server serves it: its id and the content it must have."""

    model_config = OPEN
    id: str = Field(description="The id the inference server serves the base model under.")
    revision: str = Field(description="sha256 of the lines `<relative path>  <sha256>\\n` of "
                          "every file in the base model's directory, sorted by path.")
    tokenizer_sha256: str = Field(description="The same over the tokenizer and chat-template "
                                  "files only (tokenizer.json, tokenizer_config.json, "
                                  "special_tokens_map.json, chat_template.jinja, if present).")


class ModelIntent(StrEnum):
    load = "load"
    replace = "replace"
    retire = "retire"


class ModelReadyV2(JobEvent):
    """Service -> inference module: a registered model version, everything a server needs to
    decide whether it can load the adapter and to verify every file it fetches."""

    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.model.ready.v2"
    tenant: str
    name: str = Field(description="Registry name `<tenant>/<recipe or label>`.")
    version: int = Field(ge=1)
    served_name: str = Field(description="The adapter's name on a server and the name of its "
                             "directory in the published layout: `<tenant>.<label>.v<version>`.")
    intent: ModelIntent
    base_model: ServedBase
    adapter_uri: str = Field(description="The published adapter directory (file:// or s3://).")
    files_sha256: dict[str, str]
    adapter: AdapterShape
    scores: list[MetricScore]
    gate: GateDecision
    model_card_uri: str
    merged_uri: str | None = None
    merged_files_sha256: dict[str, str] = Field(default_factory=dict)
    replaces_version: int | None = Field(None, description="With intent `replace`.")


class ModelServing(JobEvent):
    """Service -> tenant: how loading a model version on each configured endpoint went."""

    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.model.serving.v1"
    tenant: str
    name: str
    version: int
    served_name: str
    outcomes: dict[str, str] = Field(
        description="Endpoint URL -> `loaded`, `unloaded` or `failed: <reason>`.")
    at: datetime


class ModelRetired(JobEvent):
    """Service -> inference module: a model announced by `model.ready` is withdrawn (its
    tenant or its training data was erased); unload it, its files are gone."""

    TYPE: ClassVar[str] = f"{TYPE_PREFIX}.model.retired.v1"
    tenant: str
    adapter_uri: str | None = Field(None, description="The adapter `model.ready` announced.")
    reason: str = Field(description="Why, e.g. `tenant-erased` or `file-erased`.")
    at: datetime
    name: str | None = Field(None, description="Registry name, for models handed off since v2.")
    version: int | None = None


EVENT_TYPES: dict[str, type[EventData]] = {
    m.TYPE: m
    for m in (
        FineTuneRequested,
        CancelRequested,
        JobStatusChanged,
        JobProgress,
        EvaluationCompleted,
        ModelReady,
        ModelReadyV2,
        ModelServing,
        ModelRetired,
        RequestRefused,
    )
}

