"""A recipe's lm-eval task YAMLs, read the same way by every party that needs them.

The orchestrator checks them and the pre-flight stage finds their local data files (to
report overlap with the training rows); the evaluation stage hands them to lm-eval. lm-eval
resolves `data_files` against the process's working directory, not the YAML's, so each
YAML is rewritten with absolute data paths.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from events.recipe_eval import OWN_EVAL_SUFFIX, EvalSection, EvalTask


class TaskConfigError(ValueError):
    """A recipe's task YAML cannot be used; the message names the YAML file by its name, not
    its path: it reaches a tenant's job reason, and where the site keeps files is not theirs."""


def _named(path: Path) -> str:
    return f"task YAML {path.name}"


LOADERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
"""lm-eval (datasets) loader by file suffix, for a tenant's own evaluation file."""


def local_data_files(path: Path, name: str, data_file: str | None = None) -> list[Path]:
    """The local files a recipe's task YAML reads its documents from (URLs left out)."""
    files = data_file_names(yaml.safe_load(materialise_one(path, name, data_file)))
    return [Path(f) for f in files if "://" not in f]


def data_file_names(config: dict[str, Any]) -> list[object]:
    """Every `dataset_kwargs.data_files` entry of a task config as written: paths and URLs
    (anything else, for the caller to refuse)."""
    files = (config.get("dataset_kwargs") or {}).get("data_files") or []
    groups = files.values() if isinstance(files, dict) else [files]
    return [f for group in groups
            for f in (group if isinstance(group, list) else [group])]


def task_config(path: Path, name: str) -> dict[str, Any]:
    """The task YAML parsed and checked: a mapping that defines task `name`, no include."""
    try:
        config = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise TaskConfigError(f"{_named(path)}: no such file (task {name!r})") from exc
    except yaml.YAMLError as exc:  # its message would quote the file; give the line only
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise TaskConfigError(f"{_named(path)}: not valid YAML{where} (plain YAML only, "
                              "no '!function' tags)") from exc
    if not isinstance(config, dict) or "task" not in config:
        raise TaskConfigError(
            f"{_named(path)}: not an lm-eval task (needs a mapping with a 'task' key)")
    if config["task"] != name:
        raise TaskConfigError(
            f"{_named(path)}: defines task {config['task']!r} but the recipe names it {name!r}"
        )
    if "include" in config:
        raise TaskConfigError(f"{_named(path)}: 'include' is not supported; inline the base config")
    if not isinstance(config.get("dataset_kwargs") or {}, dict):
        raise TaskConfigError(f"{_named(path)}: dataset_kwargs must be a mapping")
    return config


def yaml_task_name(task: EvalTask) -> str:
    """The name the task's YAML defines: a task over own rows borrows another's YAML."""
    return task.name.removesuffix(OWN_EVAL_SUFFIX) if task.data_file else task.name


def materialise_one(path: Path, name: str, data_file: str | None = None) -> str:
    """The task YAML as lm-eval should read it: checked, with absolute data paths; with
    `data_file`, the same templates renamed `name` over that file's rows as the test split."""
    config = task_config(path, name.removesuffix(OWN_EVAL_SUFFIX) if data_file else name)
    kwargs = config.get("dataset_kwargs") or {}
    if data_file is not None:
        own = Path(data_file).resolve()
        if own.suffix not in LOADERS or not own.is_file():
            raise TaskConfigError(f"data.eval_file: not a {'/'.join(LOADERS)} file")
        for split in ("training_split", "validation_split", "fewshot_split"):
            config.pop(split, None)  # they name the recipe's own data
        config |= {"task": name, "test_split": "test", "dataset_path": LOADERS[own.suffix],
                   "dataset_kwargs": {**kwargs, "data_files": {"test": str(own)}}}
    elif "data_files" in kwargs:
        kwargs["data_files"] = _absolute(kwargs["data_files"], path)
    return yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def _absolute(data_files: object, yaml_path: Path) -> object:
    """Rewrite str, list or split->str|list data_files; URLs are left alone."""
    if isinstance(data_files, dict):
        return {split: _absolute(files, yaml_path) for split, files in data_files.items()}
    if isinstance(data_files, list):
        return [_absolute(f, yaml_path) for f in data_files]
    if not isinstance(data_files, str):
        raise TaskConfigError(
            f"{_named(yaml_path)}: data_files must be a path, a list or a mapping")
    if "://" in data_files:
        return data_files
    resolved = (yaml_path.parent / data_files).resolve()
    if not resolved.is_file():
        raise TaskConfigError(f"{_named(yaml_path)}: data file {data_files!r} not found beside it")
    return str(resolved)


def eval_data_files(section: EvalSection) -> list[Path]:
    """Every local data file of the section's own tasks (built-in tasks live on the hub)."""
    return [path for task in section.tasks if task.yaml is not None
            for path in local_data_files(Path(task.yaml), task.name, task.data_file)]
