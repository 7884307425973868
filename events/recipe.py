"""Recipe schema: what to tune, on which data, how, and how to judge the result.

A recipe arrives by name (a YAML file under `recipes/`) or inline in a request. Unknown keys
are errors, never silently ignored: a typo such as `learning_rte` would otherwise train with
the default and nobody would notice.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    Tag,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from events.envelope import describe_validation_error


class RecipeError(ValueError):
    """A recipe file or inline recipe is invalid; the message names file and field."""


def _json_number(value: Any) -> Any:
    """A number as JSON has it. Lax mode reads `true` as 1 and "0.5" as 0.5: a request's
    `"max_steps": true` trained one step, and `"learning_rate": false` was accepted."""
    if isinstance(value, bool | str | bytes | bytearray):
        raise PydanticCustomError("number_type", "Input should be a number, not {kind}",
                                  {"kind": "a boolean" if isinstance(value, bool) else "text"})
    return value


# The tags keep the error locations in a union as lax mode named them (`learning_rate.float`).
# An optional number's bounds go before NUMBER in an `Annotated` of its own: on the field, or
# after NUMBER, they reach the JSON Schema as `ge`/`le` instead of `minimum`/`maximum`.
NUMBER = BeforeValidator(_json_number)
Int = Annotated[int, NUMBER, Tag("int")]
"""An integer: a number without a fractional part (1.0 too, as in JSON Schema), never a
boolean or a string."""
Float = Annotated[float, NUMBER, Tag("float")]
"""A number, never a boolean or a string."""
Bool = Annotated[bool, Strict()]
"""true or false, never 0, 1, "yes" or "true"."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataFormat(StrEnum):
    prompt_completion = "prompt_completion"
    chat = "chat"
    instruction = "instruction"
    text = "text"
    preference = "preference"  # pairs, for train.method dpo and orpo (finetune.preference_data)


class TrainMethod(StrEnum):
    """What the adapter learns from: answers to imitate, or pairs of a preferred and a
    rejected answer to the same prompt."""

    sft = "sft"
    dpo = "dpo"
    orpo = "orpo"

    @property
    def preference(self) -> bool:
        return self is not TrainMethod.sft


class PublishedFigures(_Strict):
    """What the base model's provider published about its training; the AI-Act pack sets the
    fine-tune's compute against it (`stagefiles.compute.share_of_base`)."""

    parameters: Int = Field(ge=1, description="Parameters of the base model.")
    training_tokens: Int = Field(ge=1, description="Tokens the base model was trained on.")
    source: str = Field(description="Where the figures are published (model card URL).")


PUBLISHED_FIGURES: dict[str, PublishedFigures] = {
    "smollm2-135m-instruct": PublishedFigures(
        parameters=135_000_000, training_tokens=2_000_000_000_000,
        source="https://huggingface.co/HuggingFaceTB/SmolLM2-135M (model card: 135M "
        "parameters, 2 trillion training tokens)",
    ),
}
"""The registered base models' published figures, by the name `finetune.base_model`
registers them under."""


class ModelSection(_Strict):
    base: str = Field(
        "smollm2-135m-instruct",
        description="Registered model name, hub id, local HF directory or path to a .gguf file.",
    )
    published: PublishedFigures | None = Field(
        None, description="The base model's published parameters and training tokens; "
        "registered base models have theirs built in.",
    )

    def published_figures(self) -> PublishedFigures | None:
        """The recipe's own figures, else the registered model's, else None (unknown)."""
        return self.published or PUBLISHED_FIGURES.get(self.base)


class PiiPolicy(StrEnum):
    """What the pre-flight does with personal data it finds, from least to most strict."""

    off = "off"  # no scan
    report = "report"  # counts and row numbers in the pre-flight report
    redact = "redact"  # ... and training reads a copy with each match replaced
    reject = "reject"  # ... and any match rejects the job

    def at_least(self, floor: PiiPolicy) -> PiiPolicy:
        """The stricter of this policy and `floor` (a site's minimum)."""
        order = list(PiiPolicy)
        return max(self, floor, key=order.index)


class DataSection(_Strict):
    """Where the rows come from: a local `train_file` if given, else the hub `dataset`.

    Shipped recipes name both (the hub source documented, a local copy with the same columns
    so that they run offline); a request switches to the hub by overriding `dataset`.
    """

    dataset: str | None = Field(
        None, description="Hub dataset id (or a local dataset folder); used without train_file."
    )
    dataset_config: str | None = Field(None, description="The hub dataset's configuration.")
    dataset_split: str = Field("train", description="The hub dataset's split to train on.")
    dataset_validation_split: str | None = Field(
        None, description="The hub dataset's split to validate on."
    )
    train_file: str | None = Field(
        None, description="Local JSONL/CSV/Parquet file; relative to the recipe."
    )
    validation_file: str | None = Field(
        None, description="Local file of validation rows, in the training file's format."
    )
    validation_split: Float = Field(
        0.0, ge=0.0, lt=1.0, description="Fraction of the training rows held out for "
        "validation (seeded by train.seed) when no validation file or split is given.",
    )
    eval_file: str | None = Field(
        None, description="The tenant's own evaluation rows, in the training file's columns: "
        "scored with the gate task's template, they become the gate's primary task (named "
        "<gate task>_own) and the recipe's own test set is only reported.",
    )
    eval_split: Float = Field(
        0.0, ge=0.0, le=0.5, description="Without eval_file: hold this seeded share (by "
        "train.seed) of the training rows out of training and use it as eval_file.",
    )
    max_bad_fraction: Float = Field(
        0.0, ge=0.0, lt=1.0, description="Bad rows are skipped up to this fraction of the rows "
        "read; above it the job is rejected before training.",
    )
    format: DataFormat = Field(
        DataFormat.prompt_completion, description="How a row reads: prompt_completion "
        "(the templates), chat (`messages`), instruction (`instruction`, `input`, `output`), "
        "text, or preference (`prompt`, `chosen`, `rejected` text, or `messages` before the "
        "two answers in place of `prompt`), the pairs train.method dpo and orpo learn from.",
    )
    prompt_template: str | None = Field(
        None, description="Jinja template over the row's columns giving the prompt."
    )
    completion_template: str | None = Field(
        None, description="Jinja template giving the completion; only its tokens are trained on."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="The format's column name -> the file's, e.g. {output: answer}, for data "
        "whose columns are named otherwise (such as a hub data set's).",
    )
    max_eval_overlap: Float = Field(
        0.0, ge=0.0, le=1.0, description="Share of training rows that may share a long string "
        "with the evaluation documents the job uses; above it the pre-flight warns (or with "
        "eval_overlap: refuse, refuses).",
    )
    eval_overlap: Literal["warn", "refuse"] = "warn"
    label_map: dict[str, dict[str, str | Int]] = Field(
        default_factory=dict,
        description="Column -> {a data set's label: the recipe's}, applied to every row before "
        "the templates, for data sets whose classes are named or cut otherwise.",
    )
    pii: PiiPolicy = Field(
        PiiPolicy.off, description="Personal-data scan in the pre-flight (e-mail, phone, IBAN, "
        "card and VAT numbers): off, report, redact (train on a copy with placeholders) or "
        "reject; the site's AIF_PII_POLICY is a minimum.",
    )

    @model_validator(mode="after")
    def check_source(self) -> DataSection:
        if self.train_file is None and self.dataset is None:
            raise ValueError("data needs train_file (a local file) or dataset (a hub id)")
        if self.eval_split and self.eval_file:
            raise ValueError("data.eval_split: give it only without eval_file")
        if self.validation_split and (self.validation_file or self.dataset_validation_split):
            raise ValueError("data.validation_split: give it only without validation_file "
                             "and dataset_validation_split")
        return self

    @model_validator(mode="after")
    def check_templates(self) -> DataSection:
        if self.format is DataFormat.prompt_completion and not (
            self.prompt_template and self.completion_template
        ):
            raise ValueError(
                "format 'prompt_completion' needs prompt_template and completion_template"
            )
        return self

    def with_eval(self, eval_file: str | None, eval_split: float | None) -> DataSection:
        """A request's own evaluation rows: a file, or a share of the training rows."""
        if eval_file is not None:
            return self.model_copy(update={"eval_file": eval_file, "eval_split": 0.0})
        if eval_split is not None:
            return self.model_copy(update={"eval_file": None, "eval_split": eval_split})
        return self

    def with_source(
        self, train_file: str | None = None, dataset: str | None = None
    ) -> DataSection:
        """A request's data override: a local file replaces the train file; a hub id replaces
        the dataset and drops the local files, so the hub is what is read."""
        if dataset is not None:
            return self.model_copy(
                update={"dataset": dataset, "train_file": None, "validation_file": None}
            )
        if train_file is not None:
            return self.model_copy(update={"train_file": train_file})
        return self


class LoraSection(_Strict):
    r: Int = Field(16, ge=1, le=256)
    alpha: Int = Field(32, ge=1, le=1024)
    dropout: Float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    use_dora: Bool = False
    quantize_4bit: Bool = Field(
        False, description="QLoRA: the frozen base in 4-bit NF4 (bitsandbytes; CUDA only), "
        "the adapter in bf16. A node without both stops the job with a clear error.",
    )
    save_merged: Bool = Field(
        False, description="Also write the base with the adapter merged in (`merged/`), for "
        "servers that cannot load LoRA adapters.",
    )


AUTO = "auto"
Auto = Literal["auto"]


Beta = Annotated[float, Field(gt=0.0, le=10.0), NUMBER, Tag("float")]
"""DPO's beta: above 0, where the loss would ignore the preference (and IPO divides by it)."""


class TrainSection(_Strict):
    """How to train. `epochs`, `batch_size` and `learning_rate` may be `auto`: the pre-flight,
    which sees the rows, picks them (`finetune.hyperparameters`) and the job is frozen with
    the picked values, so training and the job record read numbers only."""

    method: TrainMethod = Field(
        TrainMethod.sft, description="sft: learn to write the rows' answers. dpo: prefer each "
        "pair's chosen answer over its rejected one, measured against the base model (the "
        "adapter switched off, so no second copy of the weights). orpo: the SFT loss on the "
        "chosen answer plus an odds-ratio penalty on the rejected one, without a reference "
        "model. dpo and orpo read data.format preference.",
    )
    beta: Beta = Field(
        0.1, description="dpo: how strongly the preference is pushed against staying close "
        "to the base model; smaller lets the adapter move further from it (0.1 as in the DPO "
        "paper). Also scales the reported rewards.",
    )
    dpo_loss: Literal["sigmoid", "ipo"] = Field(
        "sigmoid", description="dpo: sigmoid, the DPO paper's loss on the reward margin; "
        "ipo, the squared loss of IPO on per-token log-ratios, which does not keep pushing "
        "pairs that are already separated (less overfitting on small pair sets).",
    )
    orpo_lambda: Float = Field(
        0.1, gt=0.0, le=10.0, description="orpo: weight of the odds-ratio term next to the "
        "SFT loss on the chosen answer (0.1 as in the ORPO paper).",
    )

    max_steps: Int = Field(100, ge=1, le=1_000_000, description="Optimizer steps; derived "
                           "from epochs when epochs is given.")
    epochs: Float | Auto | None = Field(
        None, description="Passes over the training rows (max_steps follows from the row "
        "count and the batch); auto: picked from the data set's size; None: max_steps.",
    )
    learning_rate: Float | Auto = Field(2e-4, description="Peak learning rate, or auto "
                                        "(picked from the batch size).")
    lr_scheduler: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: Float = Field(0.05, ge=0.0, le=0.5)
    batch_size: Int | Auto = Field(8, description="Examples per micro-batch and process, or "
                                   "auto (picked from the rows' count and length).")
    class_balance: Bool = Field(
        False, description="Sample training rows inversely to how often their answer (the "
        "trained tokens) occurs, so every class is seen equally often; for skewed labels.",
    )
    early_stopping_patience: Annotated[int, Field(ge=1), NUMBER, Tag("int")] | None = Field(
        None, description="Stop after this many validation losses (every eval_steps) "
        "without a new best, and keep the adapter of the best one; needs validation rows.",
    )
    early_stopping_min_delta: Float = Field(
        0.01, ge=0.0, description="A validation loss must be this much below the best so far "
        "to count as a new best.",
    )
    gradient_accumulation_steps: Int = Field(1, ge=1, le=1024)
    max_seq_len: Int = Field(256, ge=16, le=131072)
    weight_decay: Float = Field(0.0, ge=0.0, le=1.0)
    seed: Int = 42
    num_processes: Int = Field(1, ge=1, le=1024)
    logging_steps: Int = Field(5, ge=1)
    max_grad_norm: Float = Field(1.0, gt=0.0, description="Gradients are clipped to this norm.")
    grad_norm_limit: Float = Field(
        1e4, gt=0.0, description="A gradient norm above this (before clipping) stops the job.",
    )
    eval_steps: Annotated[int, Field(ge=1), NUMBER, Tag("int")] | None = Field(
        None, description="Validation loss every N optimizer steps (besides the end); "
        "None: only at the end.",
    )
    gradient_checkpointing: Bool = Field(
        False, description="Recompute activations in the backward pass: less memory, ~30% "
        "more compute; for long sequences or large models.",
    )
    packing: Bool = Field(
        True, description="Padding-free batches: a micro-batch's examples side by side in one "
        "row, each attending only to itself. Off: each batch is padded to its longest example.",
    )
    checkpoint_steps: Annotated[int, Field(ge=1), NUMBER, Tag("int")] | None = Field(
        100, description="Resumable checkpoint every N optimizer steps; None: only on "
        "SIGTERM.",
    )

    @model_validator(mode="after")
    def check_values(self) -> TrainSection:
        """Bounds of the numeric values (`auto` has none), and what early stopping needs."""
        if isinstance(self.learning_rate, float) and not 0.0 < self.learning_rate <= 1e-2:
            raise ValueError("train.learning_rate: must be above 0 and at most 0.01, or auto")
        if isinstance(self.batch_size, int) and not 1 <= self.batch_size <= 1024:
            raise ValueError("train.batch_size: must be 1 to 1024, or auto")
        if isinstance(self.epochs, float) and not 0.0 < self.epochs <= 100:
            raise ValueError("train.epochs: must be above 0 and at most 100, or auto")
        if self.early_stopping_patience is not None and self.eval_steps is None:
            raise ValueError("train.early_stopping_patience: needs train.eval_steps (how "
                             "often the validation loss is measured)")
        if self.class_balance and self.method.preference:
            raise ValueError(f"train.class_balance: not for train.method {self.method}; a "
                             "pair has two answers, not one class")
        return self

    def picked(self) -> bool:
        """True once nothing is left to pick: every value is a number and max_steps holds."""
        return self.epochs is None and AUTO not in (self.batch_size, self.learning_rate)


class EvalTask(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    yaml: str | None = Field(
        None, description="lm-eval task YAML shipped with the recipe; None for built-in tasks."
    )
    data_file: str | None = Field(
        None, description="Score the YAML's task on this file's rows instead of its own "
        "data, under `name` (data.eval_file sets it).",
    )


OWN_EVAL_SUFFIX = "_own"


class EvalSection(_Strict):
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


class GuardTask(_Strict):
    """A task the base model already does; the tuned model may lose at most this much on it."""

    task: str
    metric: str = "acc"
    max_regression: Float = Field(
        0.05, ge=0.0, le=1.0, description="Largest allowed drop below base (absolute)."
    )


class GateSection(_Strict):
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


class OutputSection(_Strict):
    """What of a job's scratch space outlives the job (the adapter and reports always do)."""

    keep_checkpoints: Bool = Field(
        False, description="Keep the resumable training checkpoints once the job has ended; "
        "by default they are deleted with the rest of the scratch space.",
    )


class Resources(_Strict):
    gpu_hours: Annotated[float, Field(ge=0.0), NUMBER, Tag("float")] | None = Field(
        None, description="Estimate on one GPU, hub data.")


class Recipe(_Strict):
    version: Annotated[Literal[1], NUMBER] = 1
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")
    sector: Literal[
        "health", "energy", "climate", "education", "media", "public_sector", "finance", "general"
    ]
    description: str
    intended_use: str = Field(
        "", description="What the tuned model is for and who checks its output; shown in the "
        "model card and the AI-Act pack.",
    )
    language: str = "en"
    model: ModelSection = ModelSection()
    data: DataSection
    lora: LoraSection = LoraSection()
    train: TrainSection = TrainSection()
    eval: EvalSection
    gate: GateSection
    output: OutputSection = OutputSection()
    resources: Resources = Resources()

    @model_validator(mode="after")
    def check_method(self) -> Recipe:
        """Pairs are what dpo and orpo learn from, and all they can learn from."""
        pairs = self.data.format is DataFormat.preference
        if self.train.method.preference and not pairs:
            raise ValueError(f"train.method {self.train.method}: needs data.format "
                             "preference (rows with prompt, chosen and rejected)")
        if pairs and not self.train.method.preference:
            raise ValueError("data.format preference: needs train.method dpo or orpo; sft "
                             "learns from one answer per row")
        return self

    @model_validator(mode="after")
    def check_gate_task(self) -> Recipe:
        names = [t.name for t in self.eval.tasks]
        if self.gate.task not in names:
            raise ValueError(f"gate.task {self.gate.task!r} is not one of eval.tasks {names}")
        for i, guard in enumerate(self.gate.guards):
            if guard.task not in names:
                raise ValueError(
                    f"gate.guards.{i}.task {guard.task!r} is not one of eval.tasks {names}"
                )
        return self

    def gated_on_own_eval(self) -> Recipe:
        """With `data.eval_file`: the gate task again over those rows, as the gate's task;
        the recipe's own test set stays as a reported task. Unchanged without one."""
        eval_file = self.data.eval_file
        gate_task = next(t for t in self.eval.tasks if t.name == self.gate.task)
        if eval_file is None or gate_task.data_file == eval_file:
            return self
        if gate_task.yaml is None:
            raise RecipeError(f"data.eval_file: the gate task {gate_task.name!r} is built "
                              "into lm-eval; own evaluation rows need a task YAML of the recipe")
        own = EvalTask(name=gate_task.name + OWN_EVAL_SUFFIX, yaml=gate_task.yaml,
                       data_file=eval_file)
        tasks = [own, *(t for t in self.eval.tasks if t.name != own.name)]
        return self.model_copy(update={
            "eval": self.eval.model_copy(update={"tasks": tasks}),
            "gate": self.gate.model_copy(update={"task": own.name})})

    def with_pii_at_least(self, floor: PiiPolicy) -> Recipe:
        """The recipe with `data.pii` raised to a site's minimum (never lowered)."""
        data = self.data.model_copy(update={"pii": self.data.pii.at_least(floor)})
        return self.model_copy(update={"data": data})

    def resolve_paths(self, base_dir: Path) -> Recipe:
        """Make every recipe-relative file path absolute, so the frozen copy runs anywhere."""

        def _abs(p: str | None) -> str | None:
            return None if p is None else str((base_dir / p).resolve())

        data = self.data.model_copy(
            update={
                "train_file": _abs(self.data.train_file),
                "validation_file": _abs(self.data.validation_file),
                "eval_file": _abs(self.data.eval_file),
            }
        )
        tasks = [t.model_copy(update={"yaml": _abs(t.yaml), "data_file": _abs(t.data_file)})
                 for t in self.eval.tasks]
        return self.model_copy(
            update={"data": data, "eval": self.eval.model_copy(update={"tasks": tasks})}
        )


class HyperparameterOverrides(_Strict):
    """What a request may change in a recipe; bounded so one request cannot book a cluster."""

    max_steps: Annotated[int, Field(ge=1, le=100_000), NUMBER, Tag("int")] | None = None
    epochs: Float | Auto | None = Field(None, description="Passes over the rows, or auto; "
                                        "replaces the recipe's max_steps.")
    learning_rate: Float | Auto | None = None
    batch_size: Int | Auto | None = None
    lora_r: Annotated[int, Field(ge=1, le=256), NUMBER, Tag("int")] | None = None
    eval_limit: Annotated[int, Field(ge=1, le=100_000), NUMBER, Tag("int")] | None = None
    num_processes: Annotated[int, Field(ge=1, le=64), NUMBER, Tag("int")] | None = None
    method: TrainMethod | None = Field(
        None, description="sft, dpo or orpo; dpo and orpo need the data in the preference "
        "format (a recipe of pairs, or train_file/dataset of pairs with such a recipe).",
    )
    beta: Beta | None = Field(None, description="dpo's beta (see the recipe's train.beta).")

    @model_validator(mode="after")
    def check_bounds(self) -> HyperparameterOverrides:
        """A request books at most 256 examples a batch and 100 passes over its rows."""
        if isinstance(self.batch_size, int) and not 1 <= self.batch_size <= 256:
            raise ValueError("overrides.batch_size: must be 1 to 256, or auto")
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("overrides: give max_steps or epochs, not both")
        return self

    def apply(self, recipe: Recipe) -> Recipe:
        train = {
            k: v
            for k, v in {
                "max_steps": self.max_steps,
                "epochs": self.epochs,
                "learning_rate": self.learning_rate,
                "batch_size": self.batch_size,
                "num_processes": self.num_processes,
                "method": self.method,
                "beta": self.beta,
            }.items()
            if v is not None
        }
        if self.max_steps is not None:  # a step count asked for replaces the recipe's epochs
            train["epochs"] = None
        update: dict[str, object] = {"train": recipe.train.model_copy(update=train)}
        if self.lora_r is not None:
            update["lora"] = recipe.lora.model_copy(update={"r": self.lora_r})
        if self.eval_limit is not None:
            update["eval"] = recipe.eval.model_copy(update={"limit": self.eval_limit})
        try:
            return Recipe.model_validate(recipe.model_copy(update=update).model_dump())
        except ValidationError as exc:  # each override is valid, the recipe with it is not
            raise RecipeError(f"overrides: {describe_validation_error(exc)}") from exc


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader reading numbers as YAML 1.2 (and JSON) do: `2e-4` is a float,
    where YAML 1.1 makes it text, which the number fields refuse."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+.0123456789"))


def load_recipe_file(path: Path) -> Recipe:
    """Parse and validate one recipe YAML; paths inside it become absolute."""
    try:
        raw = yaml.load(path.read_text(), Loader=_YamlLoader)  # a SafeLoader
    except FileNotFoundError as exc:
        raise RecipeError(f"{path}: no such recipe file") from exc
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping")
    try:
        return Recipe.model_validate(raw).resolve_paths(path.parent).gated_on_own_eval()
    except ValidationError as exc:
        raise RecipeError(f"{path}: {describe_validation_error(exc)}") from exc
