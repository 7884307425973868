"""The pre-flight report: the pre-flight stage writes it, the orchestrator stores and serves it.

Its text shows rendered training examples, so it is the tenant's data: it is stored with the
job and served only to the job's tenant. Reasons in it name lines and rules, never contents.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from events.recipe import Recipe
from events.recipe_data import DataSection, PiiPolicy

PREFLIGHT = "preflight.json"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RenderedExample(_Frozen):
    where: str
    text: str  # the decoded input ids; tokens without loss inside NO_LOSS markers
    truncated: bool


class SplitReport(_Frozen):
    source: str
    rows_read: int
    rows_usable: int
    bad_rows: int
    bad_row_reasons: list[str]
    tokens: int  # of the whole rendered examples, before truncation
    mean_tokens: float
    max_tokens: int
    trained_tokens: int  # carrying loss, after truncation
    truncated: int
    examples: list[RenderedExample]
    duplicates: int
    duplicate_rows: list[str]
    eval_overlap: int
    eval_overlap_rows: list[str]


class PiiKind(_Frozen):
    """One kind of personal data found: how often and where, never what."""

    kind: str = Field(description="email, phone, iban, card or vat (finetune.pii.DETECTORS).")
    matches: int
    rows: int
    where: list[str] = Field(description="The first rows holding it, e.g. 'line 7'.")


class RedactedCopy(_Frozen):
    """A source rewritten with placeholders in the job directory; training reads `path`."""

    role: Literal["train", "validation"]
    source: str
    source_sha256: str | None = Field(description="Of the original file; None for hub data.")
    path: str = Field(description="The redacted JSONL copy in the job directory.")


class PiiReport(_Frozen):
    policy: PiiPolicy = Field(description="The policy applied: the stricter of site and recipe.")
    looked_for: list[str] = Field(description="Every kind the scan looks for.")
    kinds: list[PiiKind] = Field(description="Only kinds found, in detector order.")
    redacted: list[RedactedCopy] = Field(default_factory=list)

    def describe(self) -> str:
        """'2 email in 2 rows, 1 iban in 1 row', or 'none found'."""
        return ", ".join(f"{k.matches} {k.kind} in {k.rows} row{'s' * (k.rows != 1)}"
                         for k in self.kinds) or "none found"

    def applied_to(self, data: DataSection) -> DataSection:
        """The data section with each redacted source replaced by its copy (a local train
        file wins over a hub dataset, so hub data is replaced too)."""
        files = {f"{c.role}_file": c.path for c in self.redacted}
        return data.model_copy(update=files) if files else data


class Estimate(_Frozen):
    """What training will process and cost, counted as `finetune.train` runs (see
    `finetune.estimate`); FLOPs by `stagefiles.compute.training_flops`. Duration and
    device-hours rest on a throughput figure and are rough."""

    steps: int
    examples: int  # micro-batch rows trained on, repeats across epochs included
    tokens: int  # real (non-padding) tokens through the model, prompts included
    parameters: int  # of the base model
    flops: float
    data_bytes: int | None  # of the local training and validation files; None for hub data
    launcher: str
    device: str  # "cpu" or "cuda"
    devices: int
    tokens_per_s: float  # all devices together
    throughput_from: str  # where tokens_per_s came from
    duration_s: float
    device_hours: float

    def clause(self) -> str:
        """The estimate in a few words, for the report's summary."""
        return (f"estimate: {self.tokens:,} tokens in {self.steps} steps, {self.flops:.2g} "
                f"FLOPs, ~{_duration(self.duration_s)}, {self.device_hours:.2g} device-h on "
                f"{self.launcher} ({self.devices} {self.device}, {self.throughput_from})")


class HeldOut(_Frozen):
    """`data.eval_split` applied: the training source cut in two copies in the job directory
    (`finetune.held_out`); training reads the one, the gate scores the other."""

    source: str
    train_file: str
    eval_file: str
    train_rows: int
    eval_rows: int

    def applied_to(self, recipe: Recipe) -> Recipe:
        data = recipe.data.model_copy(update={"train_file": self.train_file,
                                              "eval_file": self.eval_file, "eval_split": 0.0})
        return recipe.model_copy(update={"data": data}).gated_on_own_eval()


class EvalPairs(_Frozen):
    """Preference evaluation pairs in a form the gate task does not read (a chat `messages`
    list, mapped columns) written again in its columns (`finetune.eval_pairs`); the tasks
    over data.eval_file read the copy."""

    source: str
    eval_file: str
    rows: int

    def applied_to(self, recipe: Recipe) -> Recipe:
        given = recipe.data.eval_file
        tasks = [t.model_copy(update={"data_file": self.eval_file}) if t.data_file == given
                 else t for t in recipe.eval.tasks]
        return recipe.model_copy(update={
            "data": recipe.data.model_copy(update={"eval_file": self.eval_file}),
            "eval": recipe.eval.model_copy(update={"tasks": tasks})})


class Picked(_Frozen):
    """The training values the pre-flight picked for what the recipe left `auto` or gave as
    epochs (`finetune.hyperparameters`); the job is frozen with them, so its record says what
    was picked and training reads numbers only."""

    auto: list[str] = Field(description="The values that were `auto`.")
    rows: int = Field(description="Usable training rows the pick is based on.")
    epochs: float | None = Field(description="Passes over the rows; None: max_steps given.")
    batch_size: int
    learning_rate: float
    max_steps: int

    def applied_to(self, recipe: Recipe) -> Recipe:
        train = recipe.train.model_copy(update={
            "epochs": None, "batch_size": self.batch_size,
            "learning_rate": self.learning_rate, "max_steps": self.max_steps})
        return recipe.model_copy(update={"train": train})

    def sentence(self) -> str:
        auto = f" ({', '.join(self.auto)} auto)" if self.auto else ""
        passes = f"{self.epochs:g} epochs of {self.rows} rows = " if self.epochs else ""
        return (f"picked{auto}: {passes}{self.max_steps} steps of batch {self.batch_size}, "
                f"learning rate {self.learning_rate:.2g}")


class GateNoise(_Frozen):
    """Whether the gate task's documents are enough for the gate to tell a gain from noise
    (`finetune.gate_noise`)."""

    documents: int = Field(description="Documents the gate task will score (after eval.limit).")
    min_detectable_lead: float | None = Field(
        None, description="k / documents, k the fewest documents only the tuned model gets "
        "right (none the other way) that pass the paired test at gate.alpha: the smallest "
        "lead the gate can call beyond noise; above 1 where the documents are fewer than k. "
        "None in reports from before the paired gate.")
    majority_share: float | None = Field(
        None, description="Of the documents, the share of the commonest gold answer; None "
        "where the gold label cannot be read.")
    combined_stderr: float | None = Field(
        None, description="Reports from before the paired gate only: of tuned minus base at "
        "accuracy 0.5, the worst case the unpaired rule needed a gain beyond.")
    needed_gain: float = Field(description="max(majority_margin, min_detectable_lead) over "
                               "the majority answer, or max(min_gain, min_detectable_lead) "
                               "over the base, whichever leaves less room.")
    possible_gain: float = Field(description="What a perfect model gains in that comparison: "
                                 "1 - majority_share, or 1 - chance over a guessing base.")
    verdict: Literal["ok", "warn", "refuse"]
    sentence: str


class PreflightReport(_Frozen):
    recipe: str
    base_model: str
    max_seq_len: int
    max_bad_fraction: float
    train: SplitReport
    validation: SplitReport | None
    usable: bool
    reason: str = ""
    pii: PiiReport | None = Field(None, description="Personal-data scan; None when off.")
    estimate: Estimate | None = None
    held_out: HeldOut | None = Field(None, description="With data.eval_split: the copies.")
    eval_pairs: EvalPairs | None = Field(None, description="Preference evaluation pairs "
                                         "copied into the gate task's columns.")
    picked: Picked | None = Field(None, description="Epochs, batch size, learning rate and "
                                  "steps picked from the rows; None: the recipe gave them.")
    gate_noise: GateNoise | None = None
    warnings: list[str] = Field(default_factory=list, description="What may make the job "
                                "worthless without making it unusable, one sentence each.")

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2))

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls.model_validate_json(path.read_text())

    def summary(self) -> str:
        """One line for status events and `aif submit --wait`."""
        t = self.train
        line = (f"pre-flight: {t.rows_usable}/{t.rows_read} training rows usable, {t.tokens} "
                f"tokens, {t.truncated} truncated, {t.duplicates} duplicates, "
                f"{t.eval_overlap} overlapping evaluation data")
        if self.validation is not None:
            line += f"; {self.validation.rows_usable} validation rows"
        if self.pii is not None:
            line += f"; personal data ({self.pii.policy.value}): {self.pii.describe()}"
        if self.picked is not None:
            line += f"; {self.picked.sentence()}"
        if self.estimate is not None:
            line += f"; {self.estimate.clause()}"
        if self.warnings:
            line += f"; {len(self.warnings)} warning{'s' * (len(self.warnings) != 1)}"
        return line

    def to_text(self) -> str:
        """The whole report for people, in plain lines."""
        lines = [f"Pre-flight report for recipe {self.recipe} (base model {self.base_model}, "
                 f"max_seq_len {self.max_seq_len}, max_bad_fraction {self.max_bad_fraction:g})"]
        for name, split in (("train", self.train), ("validation", self.validation)):
            if split is not None:
                lines += _split_lines(name, split)
        if self.pii is not None:
            lines.append(f"personal data (policy {self.pii.policy.value}): {self.pii.describe()}")
            lines += [f"  {k.kind}:{_listed(k.where, k.rows)}" for k in self.pii.kinds]
            lines += [f"  {c.role} data redacted into {c.path}" for c in self.pii.redacted]
        if self.picked is not None:
            lines.append(self.picked.sentence())
        if self.estimate is not None:
            lines.append(self.estimate.clause())
        if self.held_out is not None:
            h = self.held_out
            lines.append(f"held out for evaluation: {h.eval_rows} of {h.source}'s rows "
                         f"({h.eval_file}); {h.train_rows} train")
        if self.gate_noise is not None:
            lines.append(f"gate noise: {self.gate_noise.sentence}")
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append("verdict: usable" if self.usable else f"verdict: REJECTED\n{self.reason}")
        return "\n".join(lines)


def _split_lines(name: str, s: SplitReport) -> list[str]:
    lines = [
        f"{name}: {s.source}",
        f"  rows: {s.rows_read} read, {s.rows_usable} usable, {s.bad_rows} bad",
        f"  tokens: {s.tokens} total, {s.mean_tokens:.1f} mean, {s.max_tokens} max, "
        f"{s.trained_tokens} trained on; {s.truncated} truncated at max_seq_len",
        f"  duplicates: {s.duplicates}" + _listed(s.duplicate_rows, s.duplicates),
        f"  overlap with evaluation data: {s.eval_overlap}"
        + _listed(s.eval_overlap_rows, s.eval_overlap),
    ]
    lines += [f"  bad {reason}" for reason in s.bad_row_reasons]
    if s.bad_rows > len(s.bad_row_reasons):
        lines.append(f"  ... and {s.bad_rows - len(s.bad_row_reasons)} more bad rows")
    for example in s.examples:
        cut = ", truncated" if example.truncated else ""
        lines.append(f"  example ({example.where}{cut}):")
        lines += [f"    | {line}" for line in example.text.split("\n")]
    return lines


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _listed(shown: list[str], count: int) -> str:
    if not shown:
        return ""
    more = f", ... {count - len(shown)} more" if count > len(shown) else ""
    return f" ({', '.join(shown)}{more})"
