"""Hand a recipe's lm-eval task YAMLs to lm-eval so that they work from any directory.

lm-eval resolves a task's `data_files` against the process's working directory, not the
YAML's, so a recipe's task that says `../data/test.jsonl` would break depending on where the
worker starts. We copy each YAML into the job's output folder with absolute data paths and
record the sha256 of what lm-eval actually read, so a stored score names its exact task.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from events.recipe import EvalSection


class TaskConfigError(ValueError):
    """A recipe's task YAML cannot be used; the message names the YAML file."""


@dataclass(frozen=True)
class MaterialisedTasks:
    names: list[str]
    include_dir: Path | None
    sha256: dict[str, str]


def materialise_tasks(eval_section: EvalSection, output_dir: Path) -> MaterialisedTasks:
    """Write the recipe's own tasks under `output_dir/tasks/`; built-in tasks pass through."""
    include_dir = output_dir / "tasks"
    shutil.rmtree(include_dir, ignore_errors=True)
    sha256: dict[str, str] = {}
    for task in eval_section.tasks:
        if task.yaml is None:
            continue
        text = _materialise_one(Path(task.yaml), task.name)
        include_dir.mkdir(parents=True, exist_ok=True)
        (include_dir / f"{task.name}.yaml").write_text(text)
        sha256[task.name] = hashlib.sha256(text.encode()).hexdigest()
    return MaterialisedTasks(
        names=[t.name for t in eval_section.tasks],
        include_dir=include_dir if sha256 else None,
        sha256=sha256,
    )


def local_data_files(path: Path, name: str) -> list[Path]:
    """The local files a recipe's task YAML reads its documents from (URLs left out)."""
    kwargs = yaml.safe_load(_materialise_one(path, name)).get("dataset_kwargs") or {}
    files = kwargs.get("data_files") or []
    groups = files.values() if isinstance(files, dict) else [files]
    flat = [f for group in groups for f in ([group] if isinstance(group, str) else group)]
    return [Path(f) for f in flat if "://" not in f]


def _materialise_one(path: Path, name: str) -> str:
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise TaskConfigError(f"{path}: no such task YAML (task {name!r})") from exc
    except yaml.YAMLError as exc:
        raise TaskConfigError(f"{path}: not valid YAML (no '!function' tags): {exc}") from exc
    if not isinstance(config, dict) or "task" not in config:
        raise TaskConfigError(f"{path}: not an lm-eval task (needs a mapping with a 'task' key)")
    if config["task"] != name:
        raise TaskConfigError(
            f"{path}: defines task {config['task']!r} but the recipe names it {name!r}"
        )
    if "include" in config:
        raise TaskConfigError(f"{path}: 'include' is not supported; inline the base config")
    kwargs = config.get("dataset_kwargs") or {}
    if "data_files" in kwargs:
        kwargs["data_files"] = _absolute(kwargs["data_files"], path)
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def _absolute(data_files: object, yaml_path: Path) -> object:
    """Rewrite str, list or split->str|list data_files; URLs are left alone."""
    if isinstance(data_files, dict):
        return {split: _absolute(files, yaml_path) for split, files in data_files.items()}
    if isinstance(data_files, list):
        return [_absolute(f, yaml_path) for f in data_files]
    if not isinstance(data_files, str):
        raise TaskConfigError(f"{yaml_path}: data_files must be a path, a list or a mapping")
    if "://" in data_files:
        return data_files
    resolved = (yaml_path.parent / data_files).resolve()
    if not resolved.is_file():
        raise TaskConfigError(f"{yaml_path}: data file {data_files!r} not found at {resolved}")
    return str(resolved)
