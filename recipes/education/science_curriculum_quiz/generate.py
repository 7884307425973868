"""Generate the synthetic quiz for the science-curriculum-quiz recipe.

    python -m recipes.education.science_curriculum_quiz.generate

Rows carry the columns of the hub data set allenai/ai2_arc (id, question, choices {text,
label}, answerKey), so the recipe's templates work on both. The questions are about one
fictional school's science curriculum (Riverbend School: which bin takes which lab waste, which
garden bed grows which plants), knowledge a base model cannot have. Each fact is asked in several
phrasings: the test set asks every fact in phrasings the training set never uses for it, so a
tuned model must have learnt the rule, not the sentence. Answer positions are balanced, so
always picking the same position scores 0.25. Deterministic (fixed seed), so the committed
files can be checked against a fresh run.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
SEED = 20261129
LABELS = ["A", "B", "C", "D"]
OPENERS = ["", "Quiz: ", "Revision: "]


@dataclass(frozen=True)
class Topic:
    """One curriculum rule: the answer for each item, asked with any of the templates."""

    items: dict[str, list[str]]
    """Answer -> the items it is the answer for (the other answers are the distractors)."""
    templates: list[str]
    """Questions with an `{item}` placeholder."""

    def facts(self) -> list[tuple[str, str]]:
        return [(item, answer) for answer, items in self.items.items() for item in items]


TOPICS = [
    Topic(  # lab waste: glass, chemicals, biological material, general waste
        items={
            "the red bin": ["a broken beaker", "a cracked test tube",
                            "a shattered microscope slide", "a chipped glass funnel",
                            "a snapped glass stirring rod"],
            "the green bin": ["leftover copper sulfate solution", "used dilute acid",
                              "spent indicator solution", "leftover iodine solution",
                              "waste limewater"],
            "the blue bin": ["a dissected flower", "an old mould culture", "owl pellet remains",
                             "leftover pond weed", "a used yeast culture"],
            "the yellow bin": ["a used paper towel", "an empty cardboard box",
                               "a plastic sample bag", "a used drinking straw",
                               "scrap paper from a worksheet"],
        },
        templates=[
            "In the Riverbend science lab, which bin takes {item}?",
            "Under Riverbend School's lab rules, where should a pupil put {item}?",
            "A Riverbend pupil has {item} to throw away. Which bin should it go in?",
            "Where does {item} belong after a Riverbend lab lesson?",
            "Which bin is correct for {item} in the Riverbend lab?",
            "At the end of a Riverbend practical, {item} must be put in which bin?",
            "According to the Riverbend lab waste rules, {item} goes into which bin?",
            "The Riverbend technician asks where {item} is thrown away. What is the answer?",
        ],
    ),
    Topic(  # school garden: root vegetables, climbers, herbs, flowers for pollinators
        items={
            "the north bed": ["carrots", "beetroot", "radishes", "potatoes", "parsnips"],
            "the south bed": ["runner beans", "sweet peas", "climbing squash", "garden peas",
                              "cucumbers"],
            "the east bed": ["basil", "mint", "thyme", "parsley", "chives"],
            "the west bed": ["sunflowers", "lavender", "marigolds", "foxgloves", "poppies"],
        },
        templates=[
            "In the Riverbend school garden, which bed is used to grow {item}?",
            "Riverbend pupils plant {item} in which garden bed?",
            "Which bed of the Riverbend garden is kept for {item}?",
            "Where in the Riverbend garden is the patch for {item}?",
            "Under the Riverbend garden plan, the seeds for {item} are sown in which bed?",
            "The Riverbend growing club sows {item} in which bed?",
            "Which Riverbend garden bed should a class use for {item}?",
            "When the Riverbend class grows {item}, which bed do they use?",
        ],
    ),
]


@dataclass(frozen=True)
class QuizGenerator:
    """Multiple-choice questions in the ARC layout from topics of item -> answer facts."""

    topics: list[Topic]
    openers: list[str]
    seed: int
    test_phrasings: int = 3
    """Templates per fact reserved for the test set; the training set uses the others."""

    def question(self, rng: random.Random, text: str, answer: str, topic: Topic,
                 position: int) -> dict[str, Any]:
        """One ARC row with the answer at `position` and the topic's other answers around it."""
        others = [a for a in topic.items if a != answer]
        rng.shuffle(others)
        options = [*others[:position], answer, *others[position:]]
        return {"question": text, "choices": {"text": options, "label": LABELS[:len(options)]},
                "answerKey": LABELS[position]}

    def generate(self, out_dir: Path, n_train: int = 600) -> None:
        """Write train.jsonl and test.jsonl: every fact in both, never in the same phrasing."""
        rng = random.Random(self.seed)
        test: list[tuple[str, str, Topic]] = []
        train: list[tuple[str, str, Topic]] = []
        facts = [(fact, topic) for topic in self.topics for fact in topic.facts()]
        per_fact = n_train // len(facts)
        for (item, answer), topic in facts:
            templates = rng.sample(topic.templates, len(topic.templates))
            reserved, rest = templates[:self.test_phrasings], templates[self.test_phrasings:]
            test += [(rng.choice(self.openers) + t.format(item=item), answer, topic)
                     for t in reserved]
            phrasings = [o + t.format(item=item) for t in rest for o in self.openers]
            train += [(text, answer, topic) for text in rng.sample(phrasings, per_fact)]
        out_dir.mkdir(parents=True, exist_ok=True)
        for split, rows in (("test", test), ("train", train)):
            rng.shuffle(rows)
            positions = [i % len(LABELS) for i in range(len(rows))]
            rng.shuffle(positions)
            with (out_dir / f"{split}.jsonl").open("w") as f:
                pairs = zip(rows, positions, strict=True)
                for n, ((text, answer, topic), position) in enumerate(pairs):
                    text = text[:1].upper() + text[1:]
                    row = {"id": f"Riverbend_{split}_{n:04d}",
                           **self.question(rng, text, answer, topic, position)}
                    f.write(json.dumps(row) + "\n")


GENERATOR = QuizGenerator(TOPICS, OPENERS, SEED)
generate = GENERATOR.generate  # (out_dir, n_train=600); the test set has 3 rows per fact

if __name__ == "__main__":
    generate(HERE / "data")
