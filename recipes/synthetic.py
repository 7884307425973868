"""Synthetic, balanced classification data for recipes: templates per label, slot values.

Deterministic for a seed, so a test can compare a recipe's committed files with a fresh run.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TicketGenerator:
    templates: dict[str, list[str]]
    """Label -> texts with `{slot}` placeholders."""
    slots: dict[str, list[str]]
    openers: list[str]
    seed: int
    to_row: Callable[[dict[str, str]], dict[str, object]] = dict
    """A generated {"text", "label"} row -> the row written, e.g. in a hub data set's columns
    and types (an int label id), so that recipe templates read the file and the hub alike."""

    def ticket(self, rng: random.Random, label: str) -> dict[str, str]:
        template = rng.choice(self.templates[label])
        body = template.format(**{name: rng.choice(values) for name, values in self.slots.items()})
        text = rng.choice(self.openers) + body
        return {"text": text[:1].upper() + text[1:], "label": label}

    def balanced(self, rng: random.Random, n: int, exclude: set[str]) -> list[dict[str, str]]:
        """n unique texts, the same number per label, none of them in `exclude`."""
        rows: list[dict[str, str]] = []
        for label in self.templates:
            texts: set[str] = set()
            while len(texts) < n // len(self.templates):
                row = self.ticket(rng, label)
                if row["text"] not in exclude and row["text"] not in texts:
                    texts.add(row["text"])
                    rows.append(row)
        rng.shuffle(rows)
        return rows

    def generate(self, out_dir: Path, n_train: int = 800, n_test: int = 200) -> None:
        """Write balanced train.jsonl and test.jsonl that share no text."""
        rng = random.Random(self.seed)
        test = self.balanced(rng, n_test, set())
        train = self.balanced(rng, n_train, {r["text"] for r in test})
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, rows in (("train", train), ("test", test)):
            with (out_dir / f"{name}.jsonl").open("w") as f:
                f.writelines(json.dumps(self.to_row(r)) + "\n" for r in rows)
