"""Recipe schema: what to tune, on which data, how, and how to judge the result.

A recipe arrives by name (a YAML file under `recipes/`) or inline in a request. Unknown keys
are errors, never silently ignored: a typo such as `learning_rte` would otherwise train with
the default and nobody would notice. The sections live beside it: `recipe_data`,
`recipe_train` (lora and train), `recipe_eval` (eval and gate); field types in `fields`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import ConfigDict, Field, Tag, ValidationError, model_validator

from events.envelope import describe_validation_error
from events.fields import NUMBER, Bool, Closed, Float, Int, given
from events.recipe_data import DataFormat, DataSection, PiiPolicy
from events.recipe_eval import OWN_EVAL_SUFFIX, EvalSection, EvalTask, GateSection
from events.recipe_train import Auto, Beta, LoraSection, TrainMethod, TrainSection


class RecipeError(ValueError):
    """A recipe file or inline recipe is invalid; the message names file and field."""


class PublishedFigures(Closed):
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


class ModelSection(Closed):
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


class OutputSection(Closed):
    """What of a job's scratch space outlives the job (the adapter and reports always do)."""

    keep_checkpoints: Bool = Field(
        False, description="Keep the resumable training checkpoints once the job has ended; "
        "by default they are deleted with the rest of the scratch space.",
    )


class Resources(Closed):
    gpu_hours: Annotated[float, Field(ge=0.0), NUMBER, Tag("float")] | None = Field(
        None, description="Estimate on one GPU, hub data.")


class Recipe(Closed):
    """A fine-tuning recipe. Rules between its sections, which its JSON Schema cannot say
    (each refused by name): `gate.task` and every `gate.guards[].task` name one of
    `eval.tasks`; `train.method` dpo or orpo exactly when `data.format` is preference."""

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
    def check_selection(self) -> Recipe:
        """Accuracy in training is lm-eval's zero-shot accuracy without a chat template, so
        it picks a step by what the gate measures only where the gate measures that."""
        if self.train.early_stopping_metric != "accuracy":
            return self
        if self.gate.metric not in ("acc", "acc_norm"):
            raise ValueError(f"train.early_stopping_metric accuracy: the gate's metric is "
                             f"{self.gate.metric!r}, not acc or acc_norm; use loss")
        if self.eval.num_fewshot or self.eval.apply_chat_template:
            raise ValueError("train.early_stopping_metric accuracy: scores the gate task "
                             "zero-shot without a chat template, so it needs eval.num_fewshot "
                             "0 and eval.apply_chat_template false; use loss")
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


class HyperparameterOverrides(Closed):
    """What a request may change in a recipe; bounded so one request cannot book a cluster.
    `max_steps` or `epochs`, not both."""

    model_config = ConfigDict(extra="forbid", frozen=True,
                              json_schema_extra={"not": given("max_steps", "epochs")})
    max_steps: Annotated[int, Field(ge=1, le=100_000), NUMBER, Tag("int")] | None = None
    epochs: Float | Auto | None = Field(None, description="Passes over the rows, or auto; "
                                        "replaces the recipe's max_steps.")
    learning_rate: Float | Auto | None = None
    batch_size: Annotated[int, Field(ge=1, le=256), NUMBER, Tag("int")] | Auto | None = None
    lora_r: Annotated[int, Field(ge=1, le=256), NUMBER, Tag("int")] | None = None
    eval_limit: Annotated[int, Field(ge=1, le=100_000), NUMBER, Tag("int")] | None = None
    num_processes: Annotated[int, Field(ge=1, le=64), NUMBER, Tag("int")] | None = None
    method: TrainMethod | None = Field(
        None, description="sft, dpo or orpo; dpo and orpo need the data in the preference "
        "format (a recipe of pairs, or train_file/dataset of pairs with such a recipe).",
    )
    beta: Beta | None = Field(None, description="dpo's beta (see the recipe's train.beta).")
    init_from: str | None = Field(
        None, min_length=1, max_length=300, description="A registered model version of the "
        "tenant to train on from (see the recipe's train.init_from).")
    early_stopping_metric: Literal["loss", "accuracy"] | None = Field(
        None, description="What picks the kept step (see the recipe's "
        "train.early_stopping_metric).")

    @model_validator(mode="after")
    def check_bounds(self) -> HyperparameterOverrides:
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
                "init_from": self.init_from,
                "early_stopping_metric": self.early_stopping_metric,
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
