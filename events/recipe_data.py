"""A recipe's data section: where the rows come from, how a row reads, what is checked in them."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import Field, model_validator

from events.fields import Closed, Float, Int


class DataFormat(StrEnum):
    prompt_completion = "prompt_completion"
    chat = "chat"
    instruction = "instruction"
    text = "text"
    preference = "preference"  # pairs, for train.method dpo and orpo (finetune.preference_data)


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


class DataSection(Closed):
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
