"""Whether the gate can tell a gain from noise on the documents it will score.

The gate wants the gain above `stderr_factor` combined standard errors. On 20 documents that
stderr is up to 0.16, so only a gain of about a third could pass: a job run with such an
`eval.limit` trains for nothing. Measured before training, from the gate task's own data files
and the worst case (accuracy 0.5 for both models), this says so with the numbers: refused
where no model could pass, warned (or refused, per `gate.noise`) where the needed gain is
above `gate.max_needed_gain`.
"""

from __future__ import annotations

import math
from pathlib import Path

from events.preflight_report import GateNoise
from events.recipe import Recipe
from events.tasks import local_data_files
from finetune.labels import task_labels
from finetune.rows import read_rows, record


def gate_noise(recipe: Recipe) -> GateNoise | None:
    """None for a built-in gate task, whose documents live on the hub."""
    gate = recipe.gate
    task = next(t for t in recipe.eval.tasks if t.name == gate.task)
    if task.yaml is None:
        return None
    labels = task_labels(recipe)
    rows, chance = 0, 0.0
    for path in local_data_files(Path(task.yaml), task.name, task.data_file):
        for _, raw in read_rows(path):
            rows += 1
            if labels is not None:
                chance += 1 / max(1, len(labels.choices(record(raw))))
    documents = min(rows, recipe.eval.limit or rows)
    stderr = math.sqrt(2 * 0.25 / (documents - 1)) if documents > 1 else 1.0
    needed = max(gate.min_gain, gate.stderr_factor * stderr)
    possible = 1 - (chance / rows if labels is not None and rows else 0.0)
    sentence = (f"{documents} documents of {gate.task} leave a combined stderr of up to "
                f"{stderr:.3f}, so the gate needs a gain of {needed:.3f} "
                f"({gate.stderr_factor} x stderr, at least min_gain {gate.min_gain:.3f}) "
                f"where a perfect model gains {possible:.3f} over a guessing base")
    if needed >= possible:
        verdict = "refuse"
        sentence += "; no model can pass: raise eval.limit or give more evaluation rows"
    elif needed > gate.max_needed_gain:
        verdict = gate.noise
        sentence += (f", above gate.max_needed_gain {gate.max_needed_gain:.3f}: raise "
                     "eval.limit or give more evaluation rows")
    else:
        verdict = "ok"
    return GateNoise(documents=documents, combined_stderr=stderr, needed_gain=needed,
                     possible_gain=possible, verdict=verdict, sentence=sentence + ".")
