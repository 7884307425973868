"""The AI-Act pack the orchestrator writes at hand-off, from what the stages reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from aif.db.models import Job
from aif.orchestrator.ai_act_pack import CARD_MARKER, RENDERING, write_pack
from events.messages import MetricScore
from events.recipe import PublishedFigures, Recipe
from events.recipe_data import DataFormat
from recipes import load_recipe
from stagefiles.ai_act import (
    AI_ACT_PACK,
    LAWFUL_BASIS_TODO,
    PROVENANCE,
    AiActPack,
    DataFile,
    TrainingProvenance,
)
from stagefiles.checksums import MANIFEST, sha256_file, write_manifest
from stagefiles.compute import GPAI_MODIFICATION_SHARE
from stagefiles.jobspec import TrainingResult
from stagefiles.preflight_report import (
    PiiKind,
    PiiReport,
    PreflightReport,
    RedactedCopy,
    SplitReport,
)

SCORES = [MetricScore(task="grid_ticket_routing", metric="acc", base=0.2, tuned=0.9)]


def _split(rows: int) -> SplitReport:
    return SplitReport(source="x", rows_read=rows, rows_usable=rows - 1, bad_rows=1,
                       bad_row_reasons=["line 3: missing column 'label'"], tokens=rows * 40,
                       mean_tokens=40.0, max_tokens=50, trained_tokens=rows * 3, truncated=2,
                       examples=[], duplicates=1, duplicate_rows=["line 4 = line 1"],
                       eval_overlap=0, eval_overlap_rows=[])


def _job(recipe: Recipe, request: dict, pii: PiiReport | None = None) -> Job:
    report = PreflightReport(recipe=recipe.name, base_model=recipe.model.base, max_seq_len=96,
                             max_bad_fraction=0.1, train=_split(800), validation=None,
                             usable=True, pii=pii)
    return Job(id="job-1", tenant="acme", request={"data": request},
               recipe=recipe.model_dump(mode="json"), preflight=report.model_dump(mode="json"),
               gate_passed=True, gate_reason="acc on grid_ticket_routing: 0.900 vs base 0.200")


def _adapter(tmp_path: Path, tokens: int = 150_000) -> TrainingResult:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "README.md").write_text("# card\n")
    TrainingProvenance(
        data_files=[DataFile(role="train", name="train.jsonl", sha256="a" * 64, bytes=1234)],
        base_model="smollm2-135m-instruct", base_model_sha256={"model.safetensors": "b" * 64},
        libraries={"torch": "2.13.0", "peft": "0.21.0"},
    ).write(adapter / PROVENANCE)
    sums = write_manifest(adapter)
    return TrainingResult(adapter_dir=str(adapter), base_model_dir=str(tmp_path), steps=60,
                          final_loss=0.1, train_tokens=tokens, wall_s=1.0, files_sha256=sums)


def test_the_pack_states_sources_compute_lineage_and_the_gate(tmp_path: Path) -> None:
    recipe = load_recipe("grid-ticket-routing")
    trained = _adapter(tmp_path)
    sums = write_pack(_job(recipe, {"recipe": recipe.name}), recipe, trained, SCORES, "0.4.13")
    adapter = Path(trained.adapter_dir)
    pack = AiActPack.read(adapter / AI_ACT_PACK)
    assert pack.general.provider == "acme" and pack.general.intended_use == recipe.intended_use
    (source,) = pack.data_sources
    assert (source.category, source.sha256, source.bytes) == (
        "recipe_shipped_synthetic", "a" * 64, 1234)
    assert (source.rows_read, source.rows_used, source.tokens) == (800, 799, 32_000)
    assert pack.processing.truncated_rows == 2 and pack.processing.duplicates_found == 1
    c = pack.compute
    assert c.parameters == 135_000_000 and c.base_training_tokens == 2 * 10**12
    assert c.training_flops == 6 * 135_000_000 * 150_000
    assert c.share_of_base == pytest.approx(150_000 / 2e12)
    assert c.below_gpai_modification_share and "below the 0.333 share" in c.statement
    assert pack.lineage.recipe == "grid-ticket-routing@1"
    assert pack.lineage.libraries == {"torch": "2.13.0", "peft": "0.21.0", "lm_eval": "0.4.13"}
    assert pack.lineage.base_model_sha256 == {"model.safetensors": "b" * 64}
    assert pack.evaluation.gate.passed and pack.evaluation.scores == SCORES
    assert pack.personal_data.policy == "off"
    assert pack.personal_data.lawful_basis == LAWFUL_BASIS_TODO
    assert sums[AI_ACT_PACK] == sha256_file(adapter / AI_ACT_PACK)
    assert f"  {AI_ACT_PACK}" in (adapter / MANIFEST).read_text()
    assert sums["README.md"] == sha256_file(adapter / "README.md")


def test_a_preference_jobs_pack_names_how_its_pairs_were_rendered(tmp_path: Path) -> None:
    """Every data format, pairs among them, has its rendering stated (a DPO job's hand-off
    once failed here)."""
    recipe = load_recipe("citizen-reply-de-dpo")
    trained = _adapter(tmp_path)
    write_pack(_job(recipe, {"recipe": recipe.name}), recipe, trained, SCORES, "0.4.13")
    processing = AiActPack.read(Path(trained.adapter_dir) / AI_ACT_PACK).processing
    assert processing.data_format == "preference"
    assert processing.template_rendering.startswith("pairs: ")
    assert set(RENDERING) == set(DataFormat)


def test_writing_it_again_gives_the_same_files(tmp_path: Path) -> None:
    recipe = load_recipe("grid-ticket-routing")
    trained = _adapter(tmp_path)
    job = _job(recipe, {"recipe": recipe.name})
    first = write_pack(job, recipe, trained, SCORES, "0.4.13")
    assert write_pack(job, recipe, trained, SCORES, "0.4.13") == first
    card = (Path(trained.adapter_dir) / "README.md").read_text()
    assert card.startswith("# card\n") and card.count(CARD_MARKER) == 1
    assert "## EU AI Act / GDPR documentation" in card and "tenant `acme`" in card


def test_tenant_data_redacted_is_named_with_the_original_and_the_counts(tmp_path: Path) -> None:
    recipe = load_recipe("grid-ticket-routing")
    pii = PiiReport(policy="redact", looked_for=["email", "phone"],
                    kinds=[PiiKind(kind="email", matches=3, rows=2, where=["line 1", "line 9"])],
                    redacted=[RedactedCopy(role="train", source="/t/upload.jsonl",
                                           source_sha256="c" * 64, path="/job/redacted/t")])
    trained = _adapter(tmp_path)
    write_pack(_job(recipe, {"recipe": recipe.name, "file_id": "f1"}, pii), recipe, trained,
               SCORES, "0.4.13")
    pack = AiActPack.read(Path(trained.adapter_dir) / AI_ACT_PACK)
    (source,) = pack.data_sources
    assert source.category == "tenant_provided" and source.redacted_copy_of_sha256 == "c" * 64
    p = pack.personal_data
    assert p.policy == "redact" and p.redacted and p.detected_kinds == ["email", "phone"]
    assert p.kinds[0].matches == 3 and "names" in p.not_detected
    card = (Path(trained.adapter_dir) / "README.md").read_text()
    assert "found 3 email in 2 rows (redacted)" in card


def test_a_fine_tune_above_the_share_says_so(tmp_path: Path) -> None:
    recipe = load_recipe("grid-ticket-routing")
    trained = _adapter(tmp_path, tokens=10**12)  # half the base model's 2 trillion tokens
    write_pack(_job(recipe, {"recipe": recipe.name}), recipe, trained, SCORES, "0.4.13")
    c = AiActPack.read(Path(trained.adapter_dir) / AI_ACT_PACK).compute
    assert c.share_of_base == pytest.approx(0.5) and GPAI_MODIFICATION_SHARE < 0.5
    assert c.below_gpai_modification_share is False and "NOT below" in c.statement


def test_an_unknown_base_model_gets_no_invented_figures(tmp_path: Path) -> None:
    recipe = load_recipe("grid-ticket-routing")
    recipe = recipe.model_copy(update={"model": recipe.model.model_copy(
        update={"base": "/models/own"})})
    trained = _adapter(tmp_path)
    write_pack(_job(recipe, {"recipe_inline": recipe.model_dump(mode="json")}), recipe, trained,
               SCORES, "0.4.13")
    pack = AiActPack.read(Path(trained.adapter_dir) / AI_ACT_PACK)
    assert pack.compute.share_of_base is None and pack.compute.training_flops is None
    assert "cannot be stated" in pack.compute.statement
    assert pack.data_sources[0].category == "tenant_provided"
    own = recipe.model.model_copy(update={"published": PublishedFigures(
        parameters=10**9, training_tokens=10**12, source="own card")})
    assert own.published_figures() == own.published
