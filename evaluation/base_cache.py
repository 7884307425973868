"""Base-model scores kept across jobs: the same base on the same task with the same
settings gives the same numbers, so each job need only score its tuned model.

An entry is one task's slice of lm-eval's results (values, counts, configs, samples),
filed under a key that hashes everything that can change a number: the base model's
content (not its path), the task's content (its YAML as lm-eval reads it and each data
file's bytes), the lm-eval, transformers and torch versions, and the settings (few-shot,
chat template, limit, seed, batch size, dtype, device, processes). A changed file or
setting is a different key, so it misses. Which folder a task's entry goes to is the
orchestrator's choice (`BaseScoreCache`): public tasks in a shared one, a tenant's own
tasks only in that tenant's.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from evaluation.harness import device, keep_results, model_args, score
from evaluation.tasks import MaterialisedTasks
from stagefiles.content_hash import remembered_sha256, tree_sha256
from stagefiles.jobspec import BaseScoreCache, EvaluationSpec, TaskMetric
from stagefiles.tasks import local_data_files

_PER_TASK = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot",
             "higher_is_better", "n-samples", "samples")
"""The keys of lm-eval's results that are dicts by task name."""


def settings_key(spec: EvaluationSpec, memo_dir: Path | None) -> dict[str, Any]:
    """What, besides the task, decides the base model's numbers."""
    settings = spec.recipe.eval
    args = model_args(spec.base_model_dir, None).split(",", 1)[1]  # without the path
    return {
        "base_model_sha256": tree_sha256(Path(spec.base_model_dir), memo_dir),
        "model_args": args,
        "device": device(),
        "num_fewshot": settings.num_fewshot,
        "apply_chat_template": settings.apply_chat_template,
        "limit": settings.limit,
        "seed": settings.seed,
        "batch_size": settings.batch_size,
        "num_processes": settings.num_processes,
        **{f"{lib}_version": importlib.metadata.version(lib)
           for lib in ("lm_eval", "transformers", "torch")},
    }


def task_key(spec: EvaluationSpec, tasks: MaterialisedTasks, name: str,
             memo_dir: Path | None) -> dict[str, Any]:
    """What of the task decides its numbers: its YAML's and data files' content."""
    task = next(t for t in spec.recipe.eval.tasks if t.name == name)
    if task.yaml is None:  # lm-eval's own task: its version pins it
        return {"task": name, "builtin": True}
    files = local_data_files(Path(task.yaml), name, task.data_file)
    return {"task": name, "yaml_sha256": tasks.sha256[name],
            "data_sha256": sorted(remembered_sha256(f, memo_dir) for f in files)}


def _folder(cache: BaseScoreCache, name: str) -> Path | None:
    if name in cache.shared_tasks:
        return Path(cache.shared_dir)
    return Path(cache.tenant_dir) if cache.tenant_dir else None


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _slice(raw: dict[str, Any], name: str) -> dict[str, Any]:
    """The task's (and its subtasks') share of lm-eval's results."""
    names = {name, *raw.get("group_subtasks", {}).get(name, [])}
    return {k: {t: v for t, v in raw[k].items() if t in names} for k in _PER_TASK if k in raw}


def _merge(fresh: dict[str, Any], parts: list[dict[str, Any]]) -> dict[str, Any]:
    """lm-eval's results of the scored tasks (config, versions, ...) with the cached tasks'
    slices added in."""
    merged = dict(fresh)
    for part in parts:
        for k, v in part.items():
            merged[k] = {**merged.get(k, {}), **v}
    return merged


def evaluate_base(spec: EvaluationSpec, cache: BaseScoreCache,
                  tasks: MaterialisedTasks) -> tuple[list[TaskMetric], list[str]]:
    """The base model's metrics on every task, read from the cache where stored; the missed
    tasks are scored together and stored. Returns (metrics, tasks read from the cache),
    written down as `evaluate_model` does; nothing on non-main ranks."""
    # The base model may be a tenant's own: its paths are remembered in the tenant's folder.
    memo = Path(cache.tenant_dir or cache.shared_dir)
    common = settings_key(spec, memo)
    keys: dict[str, dict[str, Any]] = {}
    entries: dict[str, Path] = {}
    for name in tasks.names:
        folder = _folder(cache, name)
        if folder is not None:  # a tenant's data files are remembered in its own folder
            keys[name] = {**common, **task_key(spec, tasks, name, folder)}
            entries[name] = folder / f"{_digest(keys[name])}.json"
    hits = {} if cache.refresh else {n: _read(p) for n, p in entries.items() if p.is_file()}
    hits = {n: e for n, e in hits.items() if e is not None}
    missed = [n for n in tasks.names if n not in hits]
    parts = [e["results"] for e in hits.values()]
    raw: dict[str, Any] = {}
    if missed:
        subset = replace(tasks, names=missed,
                         sha256={n: h for n, h in tasks.sha256.items() if n in missed})
        scored = score(spec, model_args(spec.base_model_dir, None), subset)
        if scored is None:
            return [], []
        raw = scored
        for name in missed:
            if name in entries:
                _write(entries[name], {"key": keys[name], "results": _slice(raw, name)})
    order = {n: i for i, n in enumerate(tasks.names)}
    merged = _merge(raw, parts)
    merged["results"] = dict(sorted(merged["results"].items(),
                                    key=lambda kv: order.get(kv[0], len(order))))
    return keep_results(Path(spec.output_dir), "base", merged,
                        spec.recipe.eval.log_samples), sorted(hits)


def _read(path: Path) -> dict[str, Any] | None:
    """A stored entry, or None for one that cannot be read (it is then scored again)."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and isinstance(entry.get("results"), dict) else None


def _write(path: Path, entry: dict[str, Any]) -> None:
    """Atomically, so a concurrent job reads a whole entry or none."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(entry))
    tmp.replace(path)
