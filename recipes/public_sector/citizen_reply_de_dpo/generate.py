"""Generate the synthetic preference pairs (German) of the citizen-reply-de recipes.

    python -m recipes.public_sector.citizen_reply_de_dpo.generate

Each pair answers one synthetic citizen request of the citizen-request-routing-de recipe (the
same fictional town's split of duties, the same generator and seed family): the chosen reply
forwards it to the office that handles it; the rejected one forwards it to another office
(four in five pairs) or turns the citizen away. Every reply carries the request's case number,
so no reply text repeats between the training and the test pairs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from recipes.public_sector.citizen_request_routing_de.generate import GENERATOR

HERE = Path(__file__).parent
SEED = 20261207
OFFICES = {"buergeramt": "Bürgeramt", "ordnungsamt": "Ordnungsamt", "bauamt": "Bauamt",
           "sozialamt": "Sozialamt", "tiefbauamt": "Tiefbauamt"}
INSTRUCTION = ("Antworte der Bürgerin oder dem Bürger und leite die Anfrage an das zuständige "
               "Amt weiter.")


def _reply(case: int, office: str) -> str:
    return (f" Vorgang {case}: Zuständig ist das {OFFICES[office]}. Wir haben Ihre Anfrage "
            "dorthin weitergeleitet.")


def _pair(rng: random.Random, case: int, ticket: dict[str, str]) -> dict[str, str]:
    label = ticket["label"]
    if rng.random() < 0.8:
        rejected = _reply(case, rng.choice([o for o in OFFICES if o != label]))
    else:
        rejected = f" Vorgang {case}: Dafür sind wir nicht zuständig."
    return {"prompt": f"{INSTRUCTION}\nVorgang {case}: {ticket['text']}\nAntwort:",
            "chosen": _reply(case, label), "rejected": rejected}


def generate(out_dir: Path, n_train: int = 600, n_test: int = 200) -> None:
    """Write train.jsonl and test.jsonl: pairs on requests that share no text, with case
    numbers that share no value."""
    rng = random.Random(SEED)
    test = GENERATOR.balanced(rng, n_test, set())
    train = GENERATOR.balanced(rng, n_train, {t["text"] for t in test})
    cases = rng.sample(range(10_000, 100_000), n_train + n_test)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, tickets, numbers in (("train", train, cases[:n_train]),
                                   ("test", test, cases[n_train:])):
        with (out_dir / f"{name}.jsonl").open("w") as f:
            f.writelines(json.dumps(_pair(rng, case, ticket)) + "\n"
                         for case, ticket in zip(numbers, tickets, strict=True))


if __name__ == "__main__":
    generate(HERE / "data")
