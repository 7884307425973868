"""Generate the general-knowledge guard task: facts a small instruct model already knows.

    python -m recipes.guards.general_knowledge.generate

A fine-tune that makes these worse has damaged the base model beyond its own task. Four
choices per question (chance is 0.25); deterministic, so a test can compare the committed
file with a fresh run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SEED = 20261127

CAPITALS = {"France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
            "Japan": "Tokyo", "the United Kingdom": "London", "Russia": "Moscow",
            "Egypt": "Cairo", "Greece": "Athens", "Austria": "Vienna", "Portugal": "Lisbon",
            "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "China": "Beijing"}
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "up": "down", "day": "night",
             "old": "young", "happy": "sad", "open": "closed", "light": "dark", "wet": "dry",
             "early": "late", "full": "empty", "hard": "soft", "long": "short"}
ANIMAL_SOUNDS = {"dog": "barks", "cat": "meows", "cow": "moos", "duck": "quacks",
                 "lion": "roars", "sheep": "bleats", "horse": "neighs", "owl": "hoots"}
COLOURS = {"the sky on a clear day": "blue", "grass": "green", "snow": "white",
           "a ripe banana": "yellow", "coal": "black", "a ripe tomato": "red",
           "an orange": "orange"}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def _question(rng: random.Random, prompt: str, answer: str, pool: list[str]) -> dict:
    choices = [answer, *rng.sample(sorted(set(pool) - {answer}), 3)]
    rng.shuffle(choices)
    return {"question": prompt, "choices": choices, "answer": choices.index(answer)}


def questions(rng: random.Random) -> list[dict]:
    qs = [_question(rng, f"The capital of {country} is", city, list(CAPITALS.values()))
          for country, city in CAPITALS.items()]
    qs += [_question(rng, f"The opposite of {word} is", opposite, list(OPPOSITES.values()))
           for word, opposite in OPPOSITES.items()]
    qs += [_question(rng, f"A {animal}", sound, list(ANIMAL_SOUNDS.values()))
           for animal, sound in ANIMAL_SOUNDS.items()]
    qs += [_question(rng, f"The colour of {thing} is", colour, list(COLOURS.values()))
           for thing, colour in COLOURS.items()]
    qs += [_question(rng, f"The day after {day} is", DAYS[(i + 1) % 7], DAYS)
           for i, day in enumerate(DAYS)]
    for _ in range(15):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        pool = [str(n) for n in range(2, 19)]
        qs.append(_question(rng, f"{a} + {b} =", str(a + b), pool))
    rng.shuffle(qs)
    return qs


def generate(out_dir: Path = HERE / "data") -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "test.jsonl").open("w") as f:
        for q in questions(random.Random(SEED)):
            f.write(json.dumps(q) + "\n")


if __name__ == "__main__":
    generate()
