"""What the stages wrote into a job's directory that the pages show: the training result,
the provenance (data and base-model checksums), lm-eval's own run settings, the equivalent
command lines, the model card and the per-document samples.

The service shell never imports the stages, so it reads their files, through their shared
schemas where they have one. Links are not followed and files are size-capped: a job
directory is written by processes that handled a tenant's data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from aif.db.models import Job
from stagefiles.ai_act import PROVENANCE, TrainingProvenance
from stagefiles.jobspec import EVAL_COMMANDS, TRAINING_RESULT, TrainingResult

MAX_BYTES = 8 * 1024 * 1024
EVALUATION = "evaluation"
RECIPES = Path(__file__).resolve().parents[3] / "recipes"
"""Where the shipped recipes' own files are (their task YAMLs and data)."""


def _file(job: Job, *parts: str) -> Path | None:
    """The regular file at `parts` under the job directory, never through a link."""
    if not job.work_dir:
        return None
    path = Path(job.work_dir)
    for part in parts:
        path = path / part
        if path.is_symlink():
            return None
    return path if path.is_file() and path.stat().st_size <= MAX_BYTES else None


def _json(job: Job, *parts: str) -> Any:
    path = _file(job, *parts)
    try:
        return json.loads(path.read_text()) if path else None
    except (OSError, ValueError):
        return None


def parse(model: type[BaseModel], data: Any) -> Any:
    """`data` as `model`, or None when absent or written by an incompatible version."""
    try:
        return model.model_validate(data) if data is not None else None
    except ValueError:
        return None


def training_result(job: Job) -> TrainingResult | None:
    return parse(TrainingResult, _json(job, TRAINING_RESULT))


def provenance(job: Job) -> TrainingProvenance | None:
    return parse(TrainingProvenance, _json(job, "adapter", PROVENANCE))


def model_card(job: Job) -> str | None:
    path = _file(job, "adapter", "README.md")
    return path.read_text(errors="replace") if path else None


def eval_commands(job: Job) -> dict[str, list[str]]:
    data = _json(job, EVALUATION, EVAL_COMMANDS)
    return data if isinstance(data, dict) else {}


def lm_eval_config(job: Job, model: str) -> dict[str, Any]:
    """lm-eval's record of how it ran (`config` of its results file): device, dtype, ..."""
    data = _json(job, EVALUATION, f"lm_eval_{model}.json")
    config = data.get("config") if isinstance(data, dict) else None
    return config if isinstance(config, dict) else {}


def dtype_of(config: dict[str, Any]) -> str | None:
    args = str(config.get("model_args", ""))
    return next((a.split("=", 1)[1] for a in args.split(",") if a.startswith("dtype=")), None)


def sample_outcomes(job: Job, model: str, task: str, metric: str) -> dict[str, bool] | None:
    """doc_id -> scored right, from `samples_<model>.jsonl` (None where none was logged)."""
    path = _file(job, EVALUATION, f"samples_{model}.jsonl")
    if path is None:
        return None
    outcomes = {}
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("task") == task and metric in row:
            outcomes[str(row.get("doc_id"))] = bool(row[metric])
    return outcomes


def as_named(recipe: Any, tenant_root: Path, job: Job) -> Any:
    """The frozen recipe with each absolute path as the tenant knows it: relative to its data
    root as the request named it, `job/...` inside the job's folder, `recipes/...` for a
    shipped recipe's file, else the file name alone. The stages need the server's paths; a
    page shows none of them (where the service keeps data is not the tenant's business)."""
    if isinstance(recipe, dict):
        return {k: as_named(v, tenant_root, job) for k, v in recipe.items()}
    if isinstance(recipe, list):
        return [as_named(v, tenant_root, job) for v in recipe]
    if not isinstance(recipe, str) or not recipe.startswith("/"):
        return recipe
    path = Path(recipe)
    for root, prefix in ((tenant_root, ""), (Path(job.work_dir or "/nonexistent"), "job/"),
                         (RECIPES, "recipes/")):
        if path.is_relative_to(root):
            return prefix + str(path.relative_to(root))
    return path.name
