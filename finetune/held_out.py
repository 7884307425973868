"""`data.eval_split`: a seeded share of the tenant's training rows held out as its own
evaluation rows, so a partner without a separate evaluation file is still gated on its data.

The pre-flight stage writes both parts as JSONL copies in the job directory; the report names
them and the orchestrator freezes the recipe onto them, so training never reads a held-out
row and the gate's primary task scores exactly those rows.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from events.recipe import Recipe
from finetune.data import sources
from finetune.rows import DataValidationError, RowError, checked_rows
from stagefiles.preflight_report import HeldOut

FOLDER = "held_out"


def hold_out(recipe: Recipe, work_dir: Path) -> HeldOut:
    """Split the training source by `data.eval_split` (seeded by `train.seed`)."""
    source, _ = sources(recipe.data)
    rows, problems = [], []
    for where, row in checked_rows(source):
        if isinstance(row, RowError):
            problems.append(f"{where}: {row}")
        else:
            rows.append(row)
    count = round(recipe.data.eval_split * len(rows))
    if problems or not 0 < count < len(rows):
        problems = problems or [f"data.eval_split {recipe.data.eval_split:g} of {len(rows)} "
                                "row(s) holds out none or leaves none to train on"]
        raise DataValidationError(source, problems, len(rows) + len(problems))
    held = set(random.Random(recipe.train.seed).sample(range(len(rows)), count))
    folder = work_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    train, evaluation = folder / "train.jsonl", folder / "eval.jsonl"
    with train.open("w", encoding="utf-8") as t, evaluation.open("w", encoding="utf-8") as e:
        for i, row in enumerate(rows):
            (e if i in held else t).write(json.dumps(row, ensure_ascii=False, default=str)
                                          + "\n")
    return HeldOut(source=str(source), train_file=str(train), eval_file=str(evaluation),
                   train_rows=len(rows) - count, eval_rows=count)
