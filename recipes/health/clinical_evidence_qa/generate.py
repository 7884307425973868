"""Generate the synthetic mini-abstracts for the clinical-evidence-qa recipe.

    python -m recipes.health.clinical_evidence_qa.generate

Deterministic (fixed seed), so the committed files can be checked against a fresh run. Rows
have the columns of PubMedQA's labelled subset (`pubid`, `question`, `context` with
`contexts`/`labels`/`meshes`, `long_answer`, `final_decision`). The answer follows one
fictional review group's evidence rule, which needs both sentences of the abstract: a
significant effect in a randomised trial is "yes", the same effect in an observational study
is "maybe", and a non-significant result is "no" whatever the design. Designs, outcomes and
the words "significantly" and "lower" appear under every answer.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from recipes.synthetic import TicketGenerator

HERE = Path(__file__).parent
SEED = 20261129

# Population phrase -> its MeSH heading (the hub rows list MeSH terms in context.meshes).
POPULATIONS = {
    "after hip fracture surgery": "Hip Fractures",
    "with heart failure": "Heart Failure",
    "with type 2 diabetes": "Diabetes Mellitus",
    "after stroke": "Stroke",
    "in intensive care": "Critical Care",
    "in nursing homes": "Nursing Homes",
    "with dementia": "Dementia",
}
# Interventions of the test set never occur in training: no sentence of a test abstract is in
# the training data, and the model must apply the rule to studies it has not seen.
TRAIN_INTERVENTIONS = ["vitamin D", "early mobilisation", "probiotics", "nurse-led follow-up",
                       "chlorhexidine bathing", "low-dose aspirin"]
TEST_INTERVENTIONS = ["melatonin", "telemonitoring"]
OUTCOMES = ["readmission", "delirium", "wound infection", "falls", "atrial fibrillation",
            "pressure ulcers", "pneumonia"]
SLOTS = {"population": list(POPULATIONS), "drug": TRAIN_INTERVENTIONS, "outcome": OUTCOMES,
         "n": ["48", "86", "120", "212", "340", "515"], "low": ["4", "6", "7", "9"],
         "high": ["12", "15", "18", "24"], "p": ["0.21", "0.38", "0.47", "0.62"],
         "p_sig": ["<0.001", "=0.003", "=0.01", "=0.02"]}

# One item is "question|methods|results|conclusion"; the rows split it into the hub columns.
QUESTION = "Does {drug} reduce {outcome} in patients {population}?"
RANDOMISED = ["{n} patients {population} were randomly assigned to {drug} or standard care.",
              "In a randomised trial, {n} patients {population} received {drug} or usual care."]
OBSERVATIONAL = ["A retrospective chart review compared {n} patients {population} with and "
                 "without {drug}.",
                 "In a registry of {n} patients {population}, those given {drug} were compared "
                 "with those who were not."]
SIGNIFICANT = ["{outcome} was significantly lower with {drug} ({low}% vs {high}%, p{p_sig}).",
               "{outcome} fell from {high}% to {low}% with {drug} (p{p_sig})."]
NOT_SIGNIFICANT = ["{outcome} was not significantly lower with {drug} ({low}% vs {high}%, "
                   "p={p}).",
                   "{outcome} fell from {high}% to {low}% with {drug}, but not significantly "
                   "(p={p})."]
CONCLUSIONS = {
    "yes": "{drug} reduces {outcome} in patients {population}.",
    "no": "{drug} does not reduce {outcome} in patients {population}.",
    "maybe": "{drug} may reduce {outcome} in patients {population}; a randomised trial "
             "should confirm it.",
}
TEMPLATES: dict[str, list[str]] = {
    decision: [f"{QUESTION}|{methods}|{results}|{CONCLUSIONS[decision]}"
               for methods in designs for results in findings]
    for decision, designs, findings in (
        ("yes", RANDOMISED, SIGNIFICANT),
        ("no", RANDOMISED + OBSERVATIONAL, NOT_SIGNIFICANT),
        ("maybe", OBSERVATIONAL, SIGNIFICANT),
    )
}
TRAIN_GENERATOR = TicketGenerator(TEMPLATES, SLOTS, [""], SEED)
TEST_GENERATOR = replace(TRAIN_GENERATOR, slots={**SLOTS, "drug": TEST_INTERVENTIONS})


def pubmedqa_row(item: dict[str, str]) -> dict[str, Any]:
    """One generated item in PubMedQA's columns; the id is a stable hash of the text."""
    question, methods, results, conclusion = (
        part[:1].upper() + part[1:] for part in item["text"].split("|")
    )
    meshes = [mesh for phrase, mesh in POPULATIONS.items() if phrase in question]
    return {
        "pubid": int(hashlib.sha256(item["text"].encode()).hexdigest()[:7], 16),
        "question": question,
        "context": {"contexts": [methods, results], "labels": ["METHODS", "RESULTS"],
                    "meshes": [*meshes, "Humans"]},
        "long_answer": conclusion,
        "final_decision": item["label"],
    }


def generate(out_dir: Path, n_train: int = 800, n_test: int = 200) -> None:
    """Write balanced train.jsonl and test.jsonl that share no sentence."""
    rng = random.Random(SEED)
    test = TEST_GENERATOR.balanced(rng, n_test, set())
    train = TRAIN_GENERATOR.balanced(rng, n_train, set())
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, items in (("train", train), ("test", test)):
        with (out_dir / f"{name}.jsonl").open("w") as f:
            f.writelines(json.dumps(pubmedqa_row(item)) + "\n" for item in items)


if __name__ == "__main__":
    generate(HERE / "data")
