"""The personal-data scan: what it finds, what it must not, and the three policies."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from transformers import PreTrainedTokenizerBase
from typer.testing import CliRunner

from aif.cli import app
from events.recipe_data import PiiPolicy
from finetune import pii
from finetune.data import load_examples
from finetune.preflight import build_report

# Well-known test values: the IBAN of the ISO 13616 example, Visa's and Mastercard's test
# cards, a German VAT number with a valid check digit.
FOUND = [
    ("Mail jane.doe+tickets@example.co.uk today", "email"),
    ("Ruf an: +49 30 901820", "phone"),
    ("call 030 901820 please", "phone"),
    ("IBAN DE89 3704 0044 0532 0130 00 bitte", "iban"),
    ("IBAN GB82WEST12345698765432", "iban"),
    ("card 4111 1111 1111 1111 exp 12/29", "card"),
    ("card 5555-5555-5555-4444", "card"),
    ("USt-IdNr. DE136695976", "vat"),
]
NOT_FOUND = [
    "meter reading 12345 on line 7 at 10:45",
    "IBAN DE00 3704 0044 0532 0130 00",  # wrong mod-97 check digits
    "card 4111 1111 1111 1112",  # fails Luhn
    "order 1234567812345678",  # passes Luhn, but no card issuer starts with 12
    "user@localhost and @handle",
    "DE123456789 is not a valid VAT number",
]
SECRET_ROW = {"text": "Outage, call me on +49 30 901820 or mail jane.doe@example.com",
              "label": "dispatch"}
PLAIN_ROW = {"text": "Sparks from the pole near the school", "label": "emergency"}
CARD_ROW = {"text": "Pay with 4111 1111 1111 1111", "label": "accounts"}
LONG = {"max_seq_len": 96}
VALUES = ("901820", "jane.doe", "example.com", "4111")


@pytest.mark.parametrize(("text", "kind"), FOUND)
def test_each_kind_is_found(text: str, kind: str) -> None:
    assert [k for _, _, k in pii.find(text, "de")] == [kind]


@pytest.mark.parametrize("text", NOT_FOUND)
def test_near_misses_are_not_found(text: str) -> None:
    assert pii.find(text, "de") == []


def test_redaction_replaces_each_match_with_its_placeholder() -> None:
    text, kinds = pii.redact("jane@example.org, IBAN GB82WEST12345698765432, tel +44 20 7946 0018")
    assert text == "<EMAIL>, IBAN <IBAN>, tel <PHONE>"
    assert kinds == ["email", "iban", "phone"]


def test_an_iban_running_into_a_word_is_cut_at_the_group() -> None:
    text, _ = pii.redact("DE89 3704 0044 0532 0130 00 CALL")
    assert text == "<IBAN> CALL"


@pytest.mark.parametrize("hostile", ["a@b" + ".c" * 20_000 + "!", "1 " * 20_000,
                                     "x@" * 50_000, "4" * 100_000, "DE89 " + "ABCD " * 20_000])
def test_hostile_text_is_scanned_in_linear_time(hostile: str) -> None:
    started = time.monotonic()
    pii.find(hostile, "en")
    assert time.monotonic() - started < 10


def test_the_stricter_of_site_and_recipe_wins() -> None:
    assert PiiPolicy.off.at_least(PiiPolicy.report) is PiiPolicy.report
    assert PiiPolicy.reject.at_least(PiiPolicy.report) is PiiPolicy.reject
    assert PiiPolicy.redact.at_least(PiiPolicy.off) is PiiPolicy.redact


def test_report_counts_kinds_and_rows_without_the_values(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [PLAIN_ROW, SECRET_ROW, SECRET_ROW, CARD_ROW])
    recipe = make_recipe(path, data={"pii": "report"}, train=LONG)
    report = build_report(recipe, tokenizer, tmp_path)
    assert report.usable and report.pii is not None
    found = {k.kind: (k.matches, k.rows, k.where) for k in report.pii.kinds}
    assert found == {"email": (2, 2, ["line 2", "line 3"]), "card": (1, 1, ["line 4"]),
                     "phone": (2, 2, ["line 2", "line 3"])}
    assert "personal data (report): 2 email in 2 rows, 1 card in 1 row, 2 phone in 2 rows" \
        in report.summary()
    assert not report.pii.redacted and not (tmp_path / pii.REDACTED_DIR).exists()
    assert "  email: (line 2, line 3)" in report.to_text()
    # The rendered examples show the tenant's rows as they are; nothing else quotes them.
    without_examples = report.model_copy(update={"train": report.train.model_copy(
        update={"examples": []})})
    for value in VALUES:
        assert value not in without_examples.model_dump_json()


def test_redact_trains_on_a_copy_with_placeholders(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [SECRET_ROW, PLAIN_ROW, '{"broken": \n', CARD_ROW])
    recipe = make_recipe(path, data={"pii": "redact", "max_bad_fraction": 0.5}, train=LONG)
    work = tmp_path / "job"
    work.mkdir()
    report = build_report(recipe, tokenizer, work)
    assert report.usable and report.pii is not None
    (copy,) = report.pii.redacted
    assert copy.role == "train" and copy.source == str(path) and len(copy.source_sha256 or "") == 64
    rows = [json.loads(line) for line in Path(copy.path).read_text().splitlines()]
    assert rows[0]["text"] == "Outage, call me on <PHONE> or mail <EMAIL>"
    assert rows[1] == PLAIN_ROW and rows[2]["text"] == "Pay with <CARD_NUMBER>"
    assert report.train.source == copy.path and report.train.rows_read == 3
    assert "<PHONE>" in report.train.examples[0].text
    for value in VALUES:
        assert value not in report.model_dump_json()
    data = report.pii.applied_to(recipe.data)
    trained = load_examples(data, tokenizer, recipe.train.max_seq_len).train
    text = tokenizer.decode([t for e in trained.examples for t in e["input_ids"]])
    assert "<EMAIL>" in text and not any(v in text for v in VALUES)


def test_redact_also_rewrites_a_validation_file(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    train = write_jsonl(tmp_path / "t.jsonl", [PLAIN_ROW, PLAIN_ROW])
    validation = write_jsonl(tmp_path / "v.jsonl", [SECRET_ROW])
    recipe = make_recipe(train, data={"pii": "redact", "validation_file": str(validation)},
                         train=LONG)
    report = build_report(recipe, tokenizer, tmp_path)
    assert report.pii is not None
    assert [k.where for k in report.pii.kinds] == [["validation line 1"]] * 2
    data = report.pii.applied_to(recipe.data)
    assert data.validation_file == str(tmp_path / pii.REDACTED_DIR / "validation.jsonl")
    assert "<EMAIL>" in Path(data.validation_file).read_text()


def test_reject_refuses_the_data_naming_kinds_and_counts(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [PLAIN_ROW, SECRET_ROW])
    recipe = make_recipe(path, data={"pii": "reject"}, train=LONG)
    report = build_report(recipe, tokenizer, tmp_path)
    assert not report.usable
    assert report.reason == ("data.pii is reject and the data holds personal data: "
                             "1 email in 1 row, 1 phone in 1 row")
    assert not any(v in report.reason for v in VALUES)
    clean = write_jsonl(tmp_path / "clean.jsonl", [PLAIN_ROW])
    assert build_report(make_recipe(clean, data={"pii": "reject"}, train=LONG), tokenizer).usable


def test_off_scans_nothing(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    tokenizer: PreTrainedTokenizerBase,
) -> None:
    path = write_jsonl(tmp_path / "t.jsonl", [SECRET_ROW])
    report = build_report(make_recipe(path), tokenizer, tmp_path)
    assert report.pii is None and "personal data" not in report.summary()


def test_aif_preflight_applies_the_site_minimum(
    tmp_path: Path, make_recipe: Callable, write_jsonl: Callable,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AIF_HOME", str(tmp_path / "home"))
    path = write_jsonl(tmp_path / "t.jsonl", [PLAIN_ROW, SECRET_ROW])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(make_recipe(path, train=LONG).model_dump(mode="json")))
    runner = CliRunner()
    monkeypatch.setenv("AIF_PII_POLICY", "redact")
    shown = runner.invoke(app, ["preflight", str(recipe), "--json"])
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.output)
    assert report["pii"]["policy"] == "redact" and "<EMAIL>" in json.dumps(report["train"])
    assert not any(v in shown.output for v in VALUES)
    monkeypatch.setenv("AIF_PII_POLICY", "reject")
    rejected = runner.invoke(app, ["preflight", str(recipe)])
    assert rejected.exit_code == 1 and "data.pii is reject" in rejected.output
