"""The EU AI Act / GDPR documentation pack, assembled at hand-off beside the adapter.

Only then is everything known: the pre-flight report (rows, tokens, personal data), the
training provenance (file and base model hashes, library versions, written by the stage),
the scores and the gate. The pack goes into the adapter directory with a section in its
model card, and the manifest is rewritten so that `SHA256SUMS` and `model.ready` cover it.
Written again on a retried hand-off, with the same content.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from aif.db.models import Job
from events.messages import FineTuneRequested, GateDecision, MetricScore
from events.recipe import Recipe
from events.recipe_data import DataFormat
from stagefiles.ai_act import (
    AI_ACT_PACK,
    LAWFUL_BASIS_TODO,
    PROVENANCE,
    AiActPack,
    Compute,
    DataFile,
    DataSource,
    Evaluation,
    GeneralInformation,
    Lineage,
    PersonalData,
    Processing,
    TrainingProvenance,
)
from stagefiles.checksums import write_manifest
from stagefiles.compute import GPAI_MODIFICATION_SHARE, share_of_base, training_flops
from stagefiles.jobspec import TrainingResult
from stagefiles.preflight_report import PreflightReport, SplitReport

CARD = "README.md"
CARD_MARKER = "<!-- aif: EU AI Act / GDPR documentation -->"
NOT_DETECTED = ("names, postal addresses, dates of birth, national ids, free-text health or "
                "other special-category data (no language model is used)")
RENDERING = {
    DataFormat.prompt_completion: "the recipe's Jinja prompt and completion templates",
    DataFormat.chat: "the base model's chat template",
    DataFormat.instruction: "the base model's chat template (one user and one assistant turn)",
    DataFormat.text: "none (plain text)",
    DataFormat.preference: "pairs: the prompt as written (a `messages` prompt by the base "
    "model's chat template), then the chosen and the rejected answer, each a sequence",
}
RIGHTS = ("The service neither crawls nor scrapes. Tenant-provided data is supplied by the tenant, "
          "who is responsible for its rights, text-and-data-mining reservations included "
          "(Art. 4(3) Directive (EU) 2019/790); a hub dataset comes under its own licence.")
ILLEGAL = ("No content filtering beyond the pre-flight's row checks and the personal-data "
           "scan below.")


def write_pack(job: Job, recipe: Recipe, trained: TrainingResult,
               scores: list[MetricScore], lm_eval_version: str) -> dict[str, str]:
    """Write the pack and the model card section; return the adapter's new file checksums."""
    adapter = Path(trained.adapter_dir)
    provenance = TrainingProvenance.read(adapter / PROVENANCE)
    report = PreflightReport.model_validate(job.preflight)
    pack = AiActPack(
        general=GeneralInformation(
            provider=job.tenant, model=f"{recipe.name} LoRA adapter (job {job.id})",
            job_id=job.id, base_model=recipe.model.base, modalities=["text -> text"],
            sector=recipe.sector, language=recipe.language, description=recipe.description,
            intended_use=recipe.intended_use),
        data_sources=[_source(f, job, report) for f in provenance.data_files],
        processing=_processing(recipe, report),
        personal_data=_personal_data(report),
        compute=_compute(recipe, trained.train_tokens),
        lineage=Lineage(
            recipe=f"{recipe.name}@{recipe.version}",
            recipe_sha256=hashlib.sha256(
                json.dumps(job.recipe, sort_keys=True, separators=(",", ":")).encode()
            ).hexdigest(),
            base_model=provenance.base_model, base_model_sha256=provenance.base_model_sha256,
            libraries={**provenance.libraries, "lm_eval": lm_eval_version}),
        evaluation=Evaluation(scores=scores, gate=GateDecision(
            passed=bool(job.gate_passed), reason=job.gate_reason or "")),
    )
    pack.write(adapter / AI_ACT_PACK)
    card = adapter / CARD
    text = card.read_text().split(CARD_MARKER)[0].rstrip("\n")
    card.write_text(f"{text}\n\n{CARD_MARKER}\n{pack.to_markdown()}")
    return write_manifest(adapter)


def _source(file: DataFile, job: Job, report: PreflightReport) -> DataSource:
    request = FineTuneRequested.model_validate(job.request["data"])
    if file.sha256 is None:
        category = "publicly_available"
    elif request.recipe_inline is not None or (
            file.role == "train" and (request.file_id or request.train_file)):
        category = "tenant_provided"
    else:
        category = "recipe_shipped_synthetic"
    split = report.train if file.role == "train" else report.validation
    copies = {c.role: c for c in report.pii.redacted} if report.pii else {}
    original = copies.get(file.role)
    return DataSource(
        role=file.role, category=category, name=file.name, sha256=file.sha256,
        bytes=file.bytes, redacted_copy_of_sha256=original and original.source_sha256,
        rows_read=split.rows_read if split else 0, rows_used=split.rows_usable if split else 0,
        tokens=split.tokens if split else 0)


def _processing(recipe: Recipe, report: PreflightReport) -> Processing:
    splits: list[SplitReport] = [s for s in (report.train, report.validation) if s is not None]
    return Processing(
        data_format=recipe.data.format.value, template_rendering=RENDERING[recipe.data.format],
        max_seq_len=recipe.train.max_seq_len,
        truncated_rows=sum(s.truncated for s in splits),
        bad_rows_skipped=sum(s.bad_rows for s in splits),
        duplicates_found=sum(s.duplicates for s in splits),
        eval_overlap_rows=sum(s.eval_overlap for s in splits),
        rights_reservation=RIGHTS, illegal_content=ILLEGAL)


def _personal_data(report: PreflightReport) -> PersonalData:
    scan = report.pii
    return PersonalData(
        policy=scan.policy.value if scan else "off", kinds=scan.kinds if scan else [],
        redacted=bool(scan and scan.redacted), detected_kinds=scan.looked_for if scan else [],
        not_detected=NOT_DETECTED if scan else "everything: the scan was off",
        lawful_basis=LAWFUL_BASIS_TODO)


def _compute(recipe: Recipe, trained_tokens: int) -> Compute:
    figures = recipe.model.published_figures()
    if figures is None:
        return Compute(
            trained_tokens=trained_tokens, parameters=None, training_flops=None,
            base_training_tokens=None, base_training_flops=None, share_of_base=None,
            below_gpai_modification_share=None, figures_source=None,
            statement=f"no published training compute is known for base model "
                      f"{recipe.model.base!r} (give model.published in the recipe), so the "
                      f"share of its compute cannot be stated")
    flops = training_flops(figures.parameters, trained_tokens)
    base = training_flops(figures.parameters, figures.training_tokens)
    share = share_of_base(flops, base)
    below = share < GPAI_MODIFICATION_SHARE
    verdict = ("below" if below else "NOT below") + f" the {GPAI_MODIFICATION_SHARE:.3g} share " \
        "above which the modifier becomes the provider of a new general-purpose AI model"
    return Compute(
        trained_tokens=trained_tokens, parameters=figures.parameters, training_flops=flops,
        base_training_tokens=figures.training_tokens, base_training_flops=base,
        share_of_base=share, below_gpai_modification_share=below,
        figures_source=figures.source,
        statement=f"{flops:.3g} FLOPs (6 x {figures.parameters} parameters x {trained_tokens} "
                  f"tokens) against the base model's {base:.3g}: a share of {share:.3g}, "
                  f"{verdict}")
