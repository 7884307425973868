"""Files exchanged between the orchestrator and the worker processes it launches.

Workers may run on another node (Slurm, Kubernetes), so they get a frozen JSON spec on a
shared filesystem and answer with a result JSON and a progress JSONL beside it. They report;
the orchestrator decides.
"""

from __future__ import annotations

import os
from enum import StrEnum
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from events.messages import AdapterShape
from events.recipe import Recipe
from stagefiles.preflight_report import GateNoise

PREFLIGHT_SPEC = "preflight_spec.json"
TRAINING_SPEC = "training_spec.json"
TRAINING_RESULT = "training_result.json"
EVALUATION_SPEC = "evaluation_spec.json"
EVALUATION_RESULT = "evaluation_result.json"
EVAL_COMMANDS = "lm_eval_commands.json"
"""Beside the result: model (base, tuned) -> the equivalent `lm_eval` command line."""
EVALUATION_FAILURE = "evaluation_failure.json"
"""In one adapter's own output folder (`more_output_dirs`): why that adapter was not scored."""
PROGRESS_LOG = "progress.jsonl"
SERVING_CHECK_SPEC = "serving_check_spec.json"
SERVING_CHECK_RESULT = "serving_check_result.json"
EVAL_SETUP_SPEC = "eval_setup_spec.json"
EVAL_SETUP_RESULT = "eval_setup_result.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def write(self, path: Path) -> None:
        """Write atomically so a reader never sees half a file."""
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.model_dump_json(indent=2))
        tmp.replace(path)

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls.model_validate_json(path.read_text())


class FailureKind(StrEnum):
    final = "final"  # the request, its data or its recipe: running it again cannot help
    retryable = "retryable"  # the infrastructure (disk, network, a node): try again later


class StageFailure(_Frozen):
    """Why a stage gave up, written beside its spec before a non-zero exit.

    The exit code alone cannot tell the orchestrator whether to retry (`accelerate launch`
    reports every failure of its workers as 1). The reason names the rule, field, line or
    file at fault and never quotes the data.
    """

    kind: FailureKind
    reason: str

    @staticmethod
    def path_for(spec_path: Path) -> Path:
        return spec_path.with_name(f"{spec_path.stem}.failure.json")

    @classmethod
    def find(cls, spec_path: Path) -> StageFailure | None:
        return cls.find_at(cls.path_for(spec_path))

    @classmethod
    def find_at(cls, path: Path) -> StageFailure | None:
        try:
            return cls.read(path)
        except (FileNotFoundError, ValueError):
            return None


def record_failure(spec_path: Path, kind: FailureKind, reason: str) -> None:
    """Write the stage's StageFailure; under `accelerate launch` only rank 0 does."""
    if int(os.environ.get("RANK", "0")) == 0:
        StageFailure(kind=kind, reason=reason).write(StageFailure.path_for(spec_path))


class Throughput(_Frozen):
    """How fast the training stage is expected to run, for the pre-flight's compute estimate:
    the orchestrator knows the launcher and the tenant's past jobs, the stage knows the
    device kind (it runs where training will)."""

    launcher: str
    devices: int = Field(ge=1, description="Training processes the launcher will start.")
    tokens_per_s: dict[str, float] = Field(
        description="Site figure per device (process) by device kind ('cpu', 'cuda'): rough.")
    measured_tokens_per_s: float | None = Field(
        None, gt=0, description="Per device, measured by the tenant's last job on the same "
        "base model and launcher; preferred to the site figure.")
    measured_job: str | None = None


class PreflightSpec(_Frozen):
    """The pre-flight stage's input; it answers with `PREFLIGHT` (the report) in work_dir."""

    job_id: str
    tenant: str
    recipe: Recipe = Field(description="The effective recipe, as training would get it.")
    work_dir: str
    model_cache_dir: str = Field(description="Where converted base models are cached.")
    throughput: Throughput
    remote_data_allow_networks: list[IPv4Network | IPv6Network] = Field(
        default_factory=list, description="Non-public networks that URL data may come from.")
    max_download_bytes: int = Field(
        512 * 2**20, ge=1, description="Largest file a data URL may answer with.")
    s3_endpoint_url: str | None = Field(None, description="The S3-compatible store, if not AWS.")


class TrainingSpec(_Frozen):
    job_id: str
    tenant: str
    recipe: Recipe = Field(description="The effective recipe: overrides applied, paths absolute.")
    work_dir: str = Field(description="Job directory; outputs go under it.")
    model_cache_dir: str = Field(description="Where converted base models are cached.")
    init_adapter_dir: str | None = Field(
        None, description="train.init_from resolved: the registered adapter training starts "
        "from (trainable) instead of a fresh one.")


class TrainingResult(_Frozen):
    adapter_dir: str
    base_model_dir: str = Field(description="HF directory of the base model the adapter fits.")
    steps: int
    final_loss: float
    train_tokens: int
    validation_loss: float | None = Field(
        None, description="Mean loss per trained token on the validation split, if any."
    )
    validation_accuracy: float | None = Field(
        None, description="With train.early_stopping_metric accuracy: the gate task's "
        "accuracy on the validation rows at the kept step, each answer chosen by "
        "log-likelihood over the task's choices as lm-eval does.")
    wall_s: float
    processes: int = Field(1, description="Training processes (ranks) across all machines.")
    precision: str | None = Field(None, description="What the matmuls ran in: fp32, or bf16 "
                                  "autocast (train.precision as resolved on the node).")
    tokens_per_s: float | None = Field(
        None, description="Real (non-padding) tokens per second of the training loop itself."
    )
    reference_s: float | None = Field(
        None, description="dpo: seconds spent once, before the loop, scoring every pair with "
        "the base model (the reference log-probabilities); not in tokens_per_s.")
    peak_memory_mb: float | None = Field(
        None, description="Peak GPU memory allocated, or peak resident memory on CPUs (rank 0)."
    )
    best_step: int | None = Field(None, description="With early stopping: the step whose "
                                  "adapter was kept (the best validation loss or accuracy).")
    stopped_early: bool = Field(False, description="Early stopping ended the run before "
                                "max_steps.")
    files_sha256: dict[str, str] = Field(description="Adapter file name -> sha256.")
    merged_dir: str | None = Field(None, description="Base with the adapter merged in, if asked.")
    merged_files_sha256: dict[str, str] = Field(default_factory=dict)

    def summary(self) -> str:
        """The `evaluating` reason: the run, and which step's adapter was kept, by what."""
        run = f"trained {self.steps} steps, final loss {self.final_loss:.4f}"
        if self.best_step is None:
            return run
        chosen = f"validation loss {self.validation_loss:.4f}"
        if self.validation_accuracy is not None:
            chosen = f"validation accuracy {self.validation_accuracy:.3f}; {chosen}"
        return (f"{run}; {'stopped early, ' * self.stopped_early}kept the adapter of step "
                f"{self.best_step} ({chosen})")


class BaseScoreCache(_Frozen):
    """Where the evaluation stage keeps base-model scores, chosen by the orchestrator: the
    stage never picks a tenant, it only files each task's scores where it is told."""

    shared_dir: str = Field(description="Scores of public tasks: shipped or lm-eval's own.")
    tenant_dir: str | None = Field(
        None, description="The job's tenant's own tasks; None: such tasks are not cached.")
    shared_tasks: list[str] = Field(
        default_factory=list, description="Tasks whose scores may go to `shared_dir`.")
    refresh: bool = Field(False, description="Score again and overwrite what is stored.")


class EvaluationSpec(_Frozen):
    job_id: str
    base_model_dir: str
    adapter_dir: str | None = Field(None, description="None scores the base model alone.")
    recipe: Recipe
    output_dir: str
    base_cache: BaseScoreCache | None = Field(
        None, description="None: base scores are neither read from nor written to a cache.")
    more_adapter_dirs: list[str] = Field(
        default_factory=list, description="Further adapters of the same base, scored after "
        "`adapter_dir` with one base load.")
    more_output_dirs: list[str] = Field(
        default_factory=list, description="One folder per `more_adapter_dirs` entry (or none): "
        "each adapter's files and result go to its own folder, as if it had been evaluated "
        "alone, and an adapter that fails its probe fails alone (EVALUATION_FAILURE).")

    @model_validator(mode="after")
    def _one_folder_per_adapter(self) -> Self:
        if self.more_output_dirs and len(self.more_output_dirs) != len(self.more_adapter_dirs):
            raise ValueError("more_output_dirs: one folder per entry of more_adapter_dirs")
        return self

    def output_dirs(self) -> list[Path]:
        """Each adapter's own folder when they are kept apart, else none."""
        if not self.more_output_dirs:
            return []
        return [Path(self.output_dir), *map(Path, self.more_output_dirs)]


class EvalSetupSpec(_Frozen):
    """An evaluation outside any job (`aif eval`): what the training stage's side prepares
    first, the base model in the model cache and the gate's evidence planning."""

    base: str = Field(description="Registered model name, hub id, local HF directory or path "
                      "to a .gguf file.")
    recipe: Recipe = Field(description="The recipe as it will be evaluated (limit, own rows).")
    model_cache_dir: str = Field(description="Where converted base models are cached.")


class EvalSetupResult(_Frozen):
    base_model_dir: str = Field(description="HF directory of the base model, as training "
                                "would load it.")
    gate_noise: GateNoise | None = Field(
        None, description="What the pre-flight would say of the gate task's documents; None "
        "for a built-in gate task.")


class DocOutcomes(_Frozen):
    """Which documents (lm-eval `doc_id`s) were scored right and which wrong on one metric.

    Base and tuned score the same documents, so their outcomes pair up document by document;
    the gate's paired tests need them, where two accuracies and their standard errors throw
    most of the evidence away. Two id lists cost a few bytes a document.
    """

    right: list[int] = Field(description="doc_ids scored 1.")
    wrong: list[int] = Field(description="doc_ids scored 0.")

    @model_validator(mode="after")
    def _each_document_once(self) -> Self:
        if len({*self.right, *self.wrong}) != len(self.right) + len(self.wrong):
            raise ValueError("each doc_id must be in right or wrong, once")
        return self


class ClassStats(_Frozen):
    """How a model's answers on a multiple-choice task spread over the classes, beside the
    scores a constant answer and a uniform guess get on the same documents.

    Accuracy alone cannot tell a model that learned the task from one that learned the label
    prior; these figures can (`evaluation.baselines`).
    """

    documents: int = Field(ge=1)
    majority: float = Field(description="Accuracy of always answering the commonest target.")
    majority_stderr: float
    majority_class: str
    chance: float = Field(description="Expected accuracy of a uniform guess among the choices.")
    macro_f1: float = Field(description="Unweighted mean of the per-class F1 (argmax answers).")
    recall: dict[str, float] = Field(description="Target class -> share of its documents "
                                     "answered right.")
    predicted: dict[str, int] = Field(description="Answered class -> documents.")
    majority_per_doc: DocOutcomes | None = Field(
        None, description="Where always answering `majority_class` is right, by doc_id (for "
        "the gate's paired test against it); None where doc_ids repeat, and in results "
        "written before it was kept.")

    def top_share(self) -> tuple[str, float]:
        """The class the model answers most often, and the share of documents it gets."""
        top = max(self.predicted, key=lambda c: self.predicted[c])
        return top, self.predicted[top] / self.documents


class TaskMetric(_Frozen):
    task: str
    metric: str
    value: float
    stderr: float | None
    num_fewshot: int
    samples: int
    classes: ClassStats | None = Field(
        None, description="For the `acc` of multiple-choice tasks: baselines and class spread."
    )
    per_doc: DocOutcomes | None = Field(
        None, description="For a metric scored 0 or 1 per document whose value is their mean "
        "(acc, acc_norm, exact_match): every document's outcome, so base and tuned pair up "
        "by doc_id. None for other metrics, for groups and in older results.")


class EvaluationResult(_Frozen):
    base: list[TaskMetric]
    tuned: list[TaskMetric]
    more_tuned: list[list[TaskMetric]] = Field(
        default_factory=list, description="Each of the spec's `more_adapter_dirs`, in order.")
    lm_eval_version: str
    task_config_sha256: dict[str, str]
    wall_s: float
    base_from_cache: list[str] = Field(
        default_factory=list, description="Tasks whose base scores were read from the cache.")


class ProgressLine(_Frozen):
    """One line of progress.jsonl, appended by a worker and relayed as a progress event."""

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


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The values vLLM accepts for `--max-lora-rank`."""


class ServingLimits(_Frozen):
    """What the site's inference servers accept (vLLM's defaults: rank 16, no
    `modules_to_save`, no DoRA)."""

    max_lora_rank: int = Field(16, description=f"One of {VLLM_LORA_RANKS}.")
    allowed_target_modules: list[str] | None = Field(
        None, description="Modules an adapter may target; None: any.")
    allow_modules_to_save: bool = False
    allow_dora: bool = False


class ServingCheckSpec(_Frozen):
    """The serving-compatibility stage's input: answers with SERVING_CHECK_RESULT."""

    job_id: str
    base_model_dir: str
    adapter_dir: str
    limits: ServingLimits
    recipe: Recipe = Field(description="The job's recipe: its primary task is re-scored.")
    evaluation_dir: str = Field(description="The evaluation stage's output (its task files).")
    stored_score: float = Field(description="The tuned score of the primary task's metric.")
    metric: str
    sample_docs: int = Field(ge=1, description="Documents of the primary task re-scored.")
    tolerance: float = Field(ge=0.0, description="Largest accepted |rescored - stored|: none "
                             "on the evaluation's own documents, sampling error on fewer.")
    probe_prompts: list[str] = Field(description="Prompts whose greedy outputs are recorded.")
    max_new_tokens: int = 16


class ServingCheckResult(_Frozen):
    adapter: AdapterShape
    base_revision: str = Field(description="sha256 over the base model's files' digests.")
    tokenizer_sha256: str
    rescored: float = Field(description="The primary task's metric on the sample, plain peft.")
    sample_docs: int
    greedy: dict[str, str] = Field(description="Probe prompt -> greedy completion (plain peft).")
