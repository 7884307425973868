"""Whether the gate can tell a gain from noise on the documents it will score.

The gate's noise check is paired (`aif.orchestrator.gate`): of the documents only one model
gets right, enough must favour the tuned model for the one-sided exact McNemar test to fall
below `gate.alpha`. The best case for the test is every such document favouring tuned and
none the other way; then k of them suffice, the smallest k with 0.5**k < alpha (5 at 0.05),
and k/documents is the smallest lead the gate can ever call beyond noise. A real model that
also loses documents needs more, and the sentence says how much more for one lost document.
So a perfect model must lead the constant majority answer by max(majority_margin, k/documents)
of the 1 - majority share it can gain, and a guessing base by max(min_gain, k/documents) of
1 - the mean chance; the comparison with less room is reported. Measured before training,
from the gate task's own data files (the first `eval.limit` rows, as lm-eval takes them):
refused where no model could pass (fewer documents than k among them), warned (or refused,
per `gate.noise`) where the needed lead is above `gate.max_needed_gain`. Where a row's gold
label cannot be read, the majority share is unknown and only the base comparison counts.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from pathlib import Path
from typing import Any

from events.recipe import Recipe
from finetune.labels import task_labels
from finetune.rows import DataValidationError, RowError, checked_rows
from stagefiles.preflight_report import GateNoise
from stagefiles.sign_test import sign_test
from stagefiles.tasks import local_data_files

_ADVICE = "raise eval.limit or give more evaluation rows"


def fewest_wins(alpha: float, losses: int = 0) -> int:
    """The fewest documents only the tuned model gets right that, against `losses` only the
    other gets right, pass the one-sided exact McNemar test at `alpha`; 0 where alpha 1
    switches the test off."""
    if alpha >= 1:
        return 0
    return next(wins for wins in itertools.count(1) if sign_test(wins, losses) < alpha)


def _rows(path: Path) -> list[dict[str, Any]]:
    """The gate task's rows of one file; DataValidationError naming each bad row by line, as
    for training data: lm-eval would stop on any of them, after the training was paid for."""
    rows, problems, read = [], [], 0
    for where, row in checked_rows(path):
        read += 1
        if isinstance(row, RowError):
            problems.append(f"{where}: {row}")
        else:
            rows.append(row)
    if problems:
        raise DataValidationError(path, problems, read)
    return rows


def gate_noise(recipe: Recipe) -> GateNoise | None:
    """None for a built-in gate task, whose documents live on the hub."""
    gate = recipe.gate
    task = next(t for t in recipe.eval.tasks if t.name == gate.task)
    if task.yaml is None:
        return None
    labels = task_labels(recipe)
    rows = [row for path in local_data_files(Path(task.yaml), task.name, task.data_file)
            for row in _rows(path)]
    documents = min(len(rows), recipe.eval.limit or len(rows))
    scored = rows[:documents]
    answers = [labels.answer(row) for row in scored] if labels is not None else []
    share = (max(Counter(answers).values()) / documents
             if answers and None not in answers else None)
    chance = (math.fsum(1 / max(1, len(labels.choices(row))) for row in scored) / documents
              if labels is not None and documents else 0.0)
    wins = fewest_wins(gate.alpha)
    floor = wins / max(documents, 1)
    leads = [("a guessing base" if labels is not None else "the base", "min_gain",
              gate.min_gain, 1 - chance)]
    if share is not None:
        leads.insert(0, ("the majority answer", "majority_margin", gate.majority_margin,
                         1 - share))
    against, knob, least, possible = min(leads, key=lambda lead: lead[3] - max(lead[2], floor))
    needed = max(least, floor)
    balance = f" (the commonest answer {share:.1%} of them)" if share is not None else ""
    if wins > documents:
        sentence = (f"{documents} documents of {gate.task} cannot pass the paired test at "
                    f"alpha {gate.alpha}: even with the tuned model alone right on all of them "
                    f"p is {0.5 ** documents:.4g}")
    else:
        if wins:
            more = fewest_wins(gate.alpha, 1)
            test = (f"the paired test at alpha {gate.alpha} needs at least {wins} documents "
                    f"only the tuned model gets right, a lead of {floor:.3f}, if none go the "
                    f"other way (a model that also loses one needs {more}, a lead of "
                    f"{(more - 1) / max(documents, 1):.3f})")
        else:
            test = f"alpha {gate.alpha} switches the paired test off"
        sentence = (f"{documents} documents of {gate.task}{balance}: {test}, so the gate needs "
                    f"a lead of {needed:.3f} over {against} (at least {knob} {least:.3f}) "
                    f"where a perfect model leads by {possible:.3f}")
    if needed >= possible:
        verdict = "refuse"
        sentence += f"; no model can pass: {_ADVICE}"
    elif needed > gate.max_needed_gain:
        verdict = gate.noise
        sentence += f", above gate.max_needed_gain {gate.max_needed_gain:.3f}: {_ADVICE}"
    else:
        verdict = "ok"
    return GateNoise(documents=documents, min_detectable_lead=floor, majority_share=share,
                     needed_gain=needed, possible_gain=possible, verdict=verdict,
                     sentence=sentence + ".")
