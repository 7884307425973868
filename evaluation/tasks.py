"""Hand a recipe's lm-eval task YAMLs to lm-eval so that they work from any directory.

Each YAML is copied into the job's output folder as `stagefiles.tasks.materialise_one` rewrites
it (absolute data paths), and the sha256 of what lm-eval actually read is recorded, so a
stored score names its exact task.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from events.recipe_eval import EvalSection
from stagefiles.tasks import materialise_one


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
        text = materialise_one(Path(task.yaml), task.name, task.data_file)
        include_dir.mkdir(parents=True, exist_ok=True)
        (include_dir / f"{task.name}.yaml").write_text(text)
        sha256[task.name] = hashlib.sha256(text.encode()).hexdigest()
    return MaterialisedTasks(
        names=[t.name for t in eval_section.tasks],
        include_dir=include_dir if sha256 else None,
        sha256=sha256,
    )
