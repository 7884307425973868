from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from evaluation.tasks import materialise_tasks
from events.recipe_eval import EvalSection, EvalTask
from stagefiles.tasks import TaskConfigError


def _section(*tasks: EvalTask) -> EvalSection:
    return EvalSection(tasks=list(tasks))


def _task_yaml(folder: Path, data_files: object, name: str = "t", **extra: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    config = {"task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": data_files}}
    path.write_text(yaml.safe_dump(config | extra))
    return path


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    for name in ("test.jsonl", "extra.jsonl"):
        (tmp_path / "data" / name).write_text('{"text": "x", "label": "y"}\n')
    return tmp_path / "data"


def test_relative_data_files_become_absolute(tmp_path: Path, data: Path) -> None:
    files = {"test": "../data/test.jsonl", "extra": ["../data/extra.jsonl", "https://x/y.json"]}
    path = _task_yaml(tmp_path / "tasks", files)
    out = tmp_path / "out"

    tasks = materialise_tasks(_section(EvalTask(name="t", yaml=str(path))), out)

    assert tasks.include_dir == out / "tasks"
    written = (out / "tasks" / "t.yaml").read_text()
    config = yaml.safe_load(written)
    assert config["dataset_kwargs"]["data_files"] == {
        "test": str(data / "test.jsonl"),
        "extra": [str(data / "extra.jsonl"), "https://x/y.json"],
    }
    assert tasks.sha256 == {"t": hashlib.sha256(written.encode()).hexdigest()}


def test_single_string_and_absolute_paths(tmp_path: Path, data: Path) -> None:
    path = _task_yaml(tmp_path, str(data / "test.jsonl"))
    tasks = materialise_tasks(_section(EvalTask(name="t", yaml=str(path))), tmp_path / "out")
    config = yaml.safe_load((tasks.include_dir / "t.yaml").read_text())
    assert config["dataset_kwargs"]["data_files"] == str(data / "test.jsonl")


def test_builtin_tasks_pass_through(tmp_path: Path) -> None:
    tasks = materialise_tasks(_section(EvalTask(name="hellaswag")), tmp_path)
    assert (tasks.names, tasks.include_dir, tasks.sha256) == (["hellaswag"], None, {})


def test_stale_task_files_are_removed(tmp_path: Path, data: Path) -> None:
    (tmp_path / "out" / "tasks").mkdir(parents=True)
    (tmp_path / "out" / "tasks" / "old.yaml").write_text("task: old\n")
    path = _task_yaml(tmp_path, "data/test.jsonl")
    materialise_tasks(_section(EvalTask(name="t", yaml=str(path))), tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "tasks").iterdir()) == ["t.yaml"]


def test_real_recipe_task_materialises(recipe, tmp_path: Path) -> None:
    tasks = materialise_tasks(recipe.eval, tmp_path)
    config = yaml.safe_load((tasks.include_dir / "grid_ticket_routing.yaml").read_text())
    assert Path(config["dataset_kwargs"]["data_files"]["test"]).is_file()


@pytest.mark.parametrize(
    ("files", "content", "message"),
    [
        ({"test": "../data/missing.jsonl"}, None, "data file '../data/missing.jsonl' not found"),
        (["nope.jsonl"], None, "data file 'nope.jsonl' not found"),
        (42, None, "data_files must be a path, a list or a mapping"),
        (None, "- just\n- a list\n", "not an lm-eval task"),
        (None, "dataset_path: json\n", "not an lm-eval task"),
        (None, "task: other\n", "defines task 'other' but the recipe names it 't'"),
        (None, "task: t\ninclude: base.yaml\n", "'include' is not supported"),
        (None, "task: t\ndoc_to_text: !function utils.f\n", "not valid YAML"),
    ],
)
def test_bad_task_yaml_names_the_file(
    tmp_path: Path, data: Path, files: object, content: str | None, message: str
) -> None:
    if content is None:
        path = _task_yaml(tmp_path / "tasks", files)
    else:
        path = tmp_path / "t.yaml"
        path.write_text(content)
    with pytest.raises(TaskConfigError, match=message) as info:
        materialise_tasks(_section(EvalTask(name="t", yaml=str(path))), tmp_path / "out")
    assert str(info.value).startswith(f"task YAML {path.name}: ")
    assert str(tmp_path) not in str(info.value)  # a reason a tenant reads: no server path


def test_missing_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(TaskConfigError, match=r"^task YAML absent\.yaml: no such file"):
        materialise_tasks(_section(EvalTask(name="t", yaml=str(path))), tmp_path / "out")
