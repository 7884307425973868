"""The EU AI Act / GDPR documentation pack written beside every handed-off adapter.

Its sections follow the European Commission's "Template for the public summary of training
content" for general-purpose AI models (July 2025) — general information, data sources,
data processing — adapted honestly to a LoRA fine-tune: the sources are the files this job
trained on, named by sha256 and size. Added: personal-data handling (the pre-flight scan),
the training compute set against the base model's (`stagefiles.compute`), lineage, evaluation
and the gate. The training stage records what only it can see (`TrainingProvenance`); the
orchestrator assembles the rest at hand-off (`aif.orchestrator.ai_act_pack`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field

from events.messages import GateDecision, MetricScore
from stagefiles.compute import GPAI_MODIFICATION_SHARE
from stagefiles.preflight_report import PiiKind

AI_ACT_PACK = "ai_act_pack.json"
PROVENANCE = "provenance.json"
LAWFUL_BASIS_TODO = ("to be stated by the tenant as controller (GDPR Art. 6, and Art. 9 for "
                     "special categories); the service cannot know it")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2))

    @classmethod
    def read(cls, path: Path) -> Self:
        return cls.model_validate_json(path.read_text())


class DataFile(_Frozen):
    """One file (or hub split) a training run read."""

    role: Literal["train", "validation"]
    name: str = Field(description="File name without its directory, or the hub dataset id.")
    sha256: str | None = Field(description="None for a hub dataset (read by id and split).")
    bytes: int | None


class TrainingProvenance(_Frozen):
    """Written by the training stage beside the adapter (`PROVENANCE`): the node it ran on is
    the only place that knows the files it hashed and the library versions it imported."""

    data_files: list[DataFile]
    base_model: str
    base_model_sha256: dict[str, str] = Field(description="Weight and config files -> sha256.")
    libraries: dict[str, str] = Field(description="Distribution -> version, where training ran.")


class GeneralInformation(_Frozen):
    provider: str = Field(description="The tenant that commissioned the fine-tune.")
    model: str = Field(description="The adapter: recipe name and job id.")
    job_id: str
    base_model: str
    modalities: list[str] = Field(description="Input and output modalities.")
    sector: str
    language: str
    description: str
    intended_use: str


class DataSource(_Frozen):
    """One training source, in the template's categories."""

    role: Literal["train", "validation"]
    category: Literal["tenant_provided", "recipe_shipped_synthetic", "publicly_available"] = Field(
        description="tenant_provided: private data the tenant supplied (an upload or a path it "
        "named); recipe_shipped_synthetic: the recipe's generated data; publicly_available: a "
        "hub dataset.")
    name: str
    sha256: str | None
    bytes: int | None
    redacted_copy_of_sha256: str | None = Field(
        None, description="The original's sha256 when training read a redacted copy.")
    rows_read: int
    rows_used: int
    tokens: int


class Processing(_Frozen):
    data_format: str
    template_rendering: str
    max_seq_len: int
    truncated_rows: int
    bad_rows_skipped: int
    duplicates_found: int = Field(description="Reported, not removed.")
    eval_overlap_rows: int = Field(description="Training rows sharing long strings with the "
                                   "evaluation data; reported, not removed.")
    rights_reservation: str = Field(description="Text-and-data-mining opt-outs (template 3.1).")
    illegal_content: str = Field(description="Measures against illegal content (template 3.2).")


class PersonalData(_Frozen):
    policy: str = Field(description="off, report, redact or reject (stricter of site, recipe).")
    kinds: list[PiiKind] = Field(description="Counts and rows only, never values.")
    redacted: bool
    detected_kinds: list[str] = Field(description="What the scan looks for.")
    not_detected: str = Field(description="What it cannot find.")
    lawful_basis: str


class Compute(_Frozen):
    trained_tokens: int = Field(description="Every token through the model, prompts included.")
    parameters: int | None = Field(description="The base model's published parameter count.")
    training_flops: float | None = Field(description="6 x parameters x trained tokens.")
    base_training_tokens: int | None
    base_training_flops: float | None
    share_of_base: float | None
    gpai_modification_share: float = GPAI_MODIFICATION_SHARE
    below_gpai_modification_share: bool | None
    figures_source: str | None
    statement: str


class Lineage(_Frozen):
    recipe: str = Field(description="name@schema version.")
    recipe_sha256: str = Field(description="Of the frozen effective recipe (canonical JSON).")
    base_model: str
    base_model_sha256: dict[str, str]
    libraries: dict[str, str] = Field(description="Training's, plus lm_eval's of evaluation.")


class Evaluation(_Frozen):
    scores: list[MetricScore]
    gate: GateDecision


class AiActPack(_Frozen):
    pack_version: Literal[1] = 1
    general: GeneralInformation
    data_sources: list[DataSource]
    processing: Processing
    personal_data: PersonalData
    compute: Compute
    lineage: Lineage
    evaluation: Evaluation

    def to_markdown(self) -> str:
        """The model card's section: the same facts for people."""
        c, p, d = self.compute, self.personal_data, self.processing
        sources = "\n".join(
            f"| {s.role} | {s.category} | `{s.name}` | {s.sha256 or '-'} | {s.bytes or '-'} | "
            f"{s.rows_used}/{s.rows_read} | {s.tokens} |" for s in self.data_sources)
        found = ", ".join(f"{k.matches} {k.kind} in {k.rows} rows" for k in p.kinds) or "none"
        scores = "; ".join(f"{s.task} {s.metric} {s.base:.3f} -> {s.tuned:.3f}"
                           for s in self.evaluation.scores)
        return f"""## EU AI Act / GDPR documentation

Machine-readable in `{AI_ACT_PACK}`; sections after the Commission's template for the
public summary of training content.

- Provider: tenant `{self.general.provider}`; modalities {", ".join(self.general.modalities)}
- Intended use: {self.general.intended_use or "not stated"}

| role | category | source | sha256 | bytes | rows used/read | tokens |
|---|---|---|---|---|---|---|
{sources}

- Processing: {d.data_format} rendered by {d.template_rendering}; max_seq_len
  {d.max_seq_len}, {d.truncated_rows} rows truncated, {d.bad_rows_skipped} bad rows skipped,
  {d.duplicates_found} duplicates and {d.eval_overlap_rows} evaluation overlaps reported.
- Rights reservations: {d.rights_reservation}
- Illegal content: {d.illegal_content}
- Personal data: policy `{p.policy}`; found {found}{" (redacted)" if p.redacted else ""};
  looked for {", ".join(p.detected_kinds)}; not detected: {p.not_detected}.
  Lawful basis: {p.lawful_basis}.
- Compute: {c.statement}
- Lineage: recipe `{self.lineage.recipe}` (sha256 `{self.lineage.recipe_sha256}`),
  libraries {", ".join(f"{k} {v}" for k, v in self.lineage.libraries.items())}
- Evaluation: {scores}; gate {"passed" if self.evaluation.gate.passed else "failed"}:
  {self.evaluation.gate.reason}
"""
