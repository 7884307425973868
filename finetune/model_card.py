"""What ships beside the adapter, so that it can be audited without the job database: the
frozen spec, the loss curve, a model card and a sha256 manifest of every file."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

from events.recipe_data import DataSection
from finetune.data import sources
from stagefiles.ai_act import AI_ACT_PACK, PROVENANCE, DataFile, TrainingProvenance
from stagefiles.checksums import MANIFEST, sha256_file, write_manifest
from stagefiles.jobspec import PROGRESS_LOG, ProgressLine, TrainingSpec

LIBRARIES = ("aif-tuning", "torch", "transformers", "peft", "accelerate", "datasets")
BASE_MODEL_FILES = ("*.safetensors", "config.json")


CURVE_FIGURES = ("loss", "reward_margin", "reward_accuracy")


def loss_curve(work_dir: Path) -> list[dict[str, float]]:
    """(step, loss, and for dpo/orpo the reward figures) from the progress log; a step redone
    after a resume keeps its last values."""
    path = work_dir / PROGRESS_LOG
    lines = path.read_text().split() if path.exists() else []
    by_step: dict[int, dict[str, float]] = {}
    for line in map(ProgressLine.model_validate_json, lines):
        if line.stage == "training" and line.loss is not None:
            figures = {name: getattr(line, name) for name in CURVE_FIGURES}
            by_step[line.step] = {k: v for k, v in figures.items() if v is not None}
    return [{"step": step, **by_step[step]} for step in sorted(by_step)]


def write_extras(adapter_dir: Path, spec: TrainingSpec, base_model_dir: Path, steps: int,
                 final_loss: float, train_tokens: int,
                 validation_loss: float | None = None) -> dict[str, str]:
    """Spec, loss curve, provenance, model card, then the manifest; return name -> sha256."""
    spec.write(adapter_dir / "training_spec.json")
    provenance(spec, base_model_dir).write(adapter_dir / PROVENANCE)
    curve = loss_curve(Path(spec.work_dir))
    (adapter_dir / "loss_curve.json").write_text(json.dumps(curve, indent=1))
    (adapter_dir / "README.md").write_text(_card(spec, steps, final_loss, train_tokens,
                                                   validation_loss))
    return write_manifest(adapter_dir)


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def provenance(spec: TrainingSpec, base_model_dir: Path) -> TrainingProvenance:
    """The files this run read, by sha256 and size, and the libraries it ran with."""
    files = []
    for role, source in zip(("train", "validation"), sources(spec.recipe.data), strict=True):
        if isinstance(source, Path):
            files.append(DataFile(role=role, name=source.name, sha256=sha256_file(source),
                                  bytes=source.stat().st_size))
        elif source is not None:
            files.append(DataFile(role=role, name=str(source), sha256=None, bytes=None))
    weights = sorted({p for pattern in BASE_MODEL_FILES for p in base_model_dir.glob(pattern)})
    return TrainingProvenance(
        data_files=files, base_model=spec.recipe.model.base,
        base_model_sha256={p.name: sha256_file(p) for p in weights},
        libraries=library_versions())


def _data_line(data: DataSection) -> str:
    """The local file with its sha256, or the hub dataset it was read from."""
    if data.train_file is None:
        config = f", config `{data.dataset_config}`" if data.dataset_config else ""
        split = f"split `{data.dataset_split}`"
        return f"hub dataset `{data.dataset}`{config}, {split} ({data.format.value})"
    path = Path(data.train_file)
    hub = f"\n  (hub data set `{data.dataset}` for the same columns)" if data.dataset else ""
    return f"`{path.name}` ({data.format.value}), sha256 `{sha256_file(path)}`{hub}"


def _card(spec: TrainingSpec, steps: int, final_loss: float, train_tokens: int,
          validation_loss: float | None) -> str:
    recipe = spec.recipe
    versions = [f"{name} {version}" for name, version in library_versions().items()]
    hyper = {**recipe.lora.model_dump(mode="json"), **recipe.train.model_dump(mode="json")}
    rows = "\n".join(f"| {k} | {v} |" for k, v in hyper.items())
    validation = "" if validation_loss is None else f", validation loss {validation_loss:.4f}"
    start = "" if recipe.train.init_from is None else (
        f"- Trained on from: registered model `{recipe.train.init_from}` (its adapter, in its "
        "own LoRA shape, which `adapter_config.json` states; the lora rows below do not "
        "apply)\n")
    return f"""---
library_name: peft
base_model: {recipe.model.base}
tags: [lora, aif-tuning, {recipe.sector}]
language: [{recipe.language}]
---
# {recipe.name} (LoRA adapter)

{recipe.description}

Intended use: {recipe.intended_use or "not stated"}

- Base model: `{recipe.model.base}`
- Job: `{spec.job_id}` for tenant `{spec.tenant}`
{start}- Training data: {_data_line(recipe.data)}
- Trained {steps} optimizer steps on {train_tokens} tokens; final loss {final_loss:.4f}{validation}
  (curve in `loss_curve.json`, full spec in `training_spec.json`)
- Evaluation: tasks {", ".join(t.name for t in recipe.eval.tasks)}; the gate is
  {recipe.gate.metric} on {recipe.gate.task}, at least {recipe.gate.min_gain:+.3f} over base.
  Scores are published with the model-ready event and on the leaderboard.
- Libraries: {", ".join(versions)}

| hyperparameter | value |
|---|---|
{rows}

Files and their sha256 are listed in `{MANIFEST}` (`sha256sum -c {MANIFEST}`). The EU AI Act
/ GDPR documentation (`{AI_ACT_PACK}`, and a section below) is added when the model passes
its gate and is handed off; `{PROVENANCE}` holds the data and base model hashes it cites.
"""
