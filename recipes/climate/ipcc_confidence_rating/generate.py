"""Generate the synthetic statements for the ipcc-confidence-rating recipe.

    python -m recipes.climate.ipcc_confidence_rating.generate

Rows carry the columns of the hub data set rlacombe/ClimateX (statement_idx, report, page_num,
sent_num, statement, confidence, score, split), so the recipe's templates work on both. The
confidence follows one fictional assessment's calibration rules: the kind and amount of
evidence a statement cites decides the level, which a base model cannot know exactly.
Deterministic (fixed seed), so the committed files can be checked against a fresh run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from recipes.synthetic import TicketGenerator

HERE = Path(__file__).parent
SEED = 20261128
LEVELS = ["low", "medium", "high", "very high"]  # score = index, as in the hub data set
REPORTS = ["AR6_WGI", "AR6_WGII", "AR6_WGIII"]

FINDINGS = ["heavy rainfall has intensified", "glacier mass has declined",
            "marine heatwaves have become more frequent", "the growing season has lengthened",
            "agricultural droughts have become more frequent", "permafrost has warmed",
            "spring snow cover has decreased", "coastal flooding has increased",
            "wildfire seasons have lengthened", "crop yields have declined",
            "coral bleaching events have become more frequent", "river flows have shifted"]
REGIONS = ["the Mediterranean", "East Africa", "the Arctic", "South Asia",
           "western North America", "the Sahel", "Northern Europe", "the Amazon basin",
           "small island states", "Australia", "Central Asia", "the Andes"]

# Level -> statement templates. Evidence words ("observations", "models", "studies",
# "evidence", "records") occur under every level on purpose: what counts is how much evidence
# there is and whether it agrees, not which words appear.
TEMPLATES: dict[str, list[str]] = {
    "very high": [
        "Multiple independent lines of evidence, from instrumental records to paleoclimate "
        "archives, show that {finding} in {region}",
        "Long-term observations, physical understanding and all model ensembles agree that "
        "{finding} in {region}",
        "{finding} in {region}, as every observational record and every model shows",
        "Several independent observational datasets and basic physics establish that "
        "{finding} in {region}",
        "{finding} in {region}, according to robust evidence from observations and models "
        "in full agreement",
    ],
    "high": [
        "Multiple observational datasets indicate that {finding} in {region}, although models "
        "differ on the size of the change",
        "Observations since the 1950s and most model studies show that {finding} in {region}",
        "{finding} in {region}, according to several studies that agree on the direction of "
        "change",
        "A large body of regional studies supports that {finding} in {region}",
        "{finding} in {region}, as most observational records and models show",
    ],
    "medium": [
        "A few regional studies and some model evidence suggest that {finding} in {region}",
        "Observational records are short, but models and several studies suggest that "
        "{finding} in {region}",
        "{finding} in {region}, according to a moderate number of studies with partly "
        "differing results",
        "Evidence from models and a small number of observational records indicates that "
        "{finding} in {region}",
        "{finding} in {region}, as some observations and models show, with medium agreement",
    ],
    "low": [
        "Limited studies suggest that {finding} in {region}",
        "Model projections alone, without observational evidence, suggest that {finding} in "
        "{region}",
        "{finding} in {region}, according to a single modelling study",
        "Sparse observations and conflicting model results hint that {finding} in {region}",
        "{finding} in {region}, as one short observational record shows, with little "
        "agreement among models",
    ],
}

GENERATOR = TicketGenerator(TEMPLATES, {"finding": FINDINGS, "region": REGIONS}, [""], SEED)


def hub_row(
    rng: random.Random, index: int, row: dict[str, str], split: str
) -> dict[str, Any]:
    """One statement in the hub data set's layout; report and page are noise, not signal."""
    return {"statement_idx": index, "report": rng.choice(REPORTS),
            "page_num": rng.randint(10, 2400), "sent_num": rng.randint(1, 40),
            "statement": row["text"], "confidence": row["label"],
            "score": LEVELS.index(row["label"]), "split": split}


def generate(out_dir: Path, n_train: int = 800, n_test: int = 200) -> None:
    """Write balanced train.jsonl and test.jsonl that share no statement."""
    rng = random.Random(SEED)
    test = GENERATOR.balanced(rng, n_test, set())
    train = GENERATOR.balanced(rng, n_train, {r["text"] for r in test})
    out_dir.mkdir(parents=True, exist_ok=True)
    index = 0
    for split, rows in (("train", train), ("test", test)):
        with (out_dir / f"{split}.jsonl").open("w") as f:
            for row in rows:
                f.write(json.dumps(hub_row(rng, index, row, split)) + "\n")
                index += 1


if __name__ == "__main__":
    generate(HERE / "data")
