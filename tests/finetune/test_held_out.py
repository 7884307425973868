"""`data.eval_split`: the pre-flight holds a seeded share of the training rows out as the
gate's own evaluation rows, reports overlap with them, and training never reads them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from events.recipe import Recipe
from finetune.data import DataValidationError
from finetune.preflight import build_report
from finetune.rows import SourceNames
from recipes import load_recipe

TEAMS = ["dispatch", "accounts", "metering", "forestry", "emergency"]


def _recipe(path: Path, share: float) -> Recipe:
    recipe = load_recipe("grid-ticket-routing")
    return recipe.model_copy(update={"data": recipe.data.model_copy(
        update={"train_file": str(path), "eval_split": share})})


def test_held_out_rows_gate_the_job_and_overlap_is_counted_against_them(
    tmp_path: Path, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [{"text": f"Ticket {i}: a matter for the {TEAMS[i % 5]} team today", "label":
             TEAMS[i % 5]} for i in range(40)]
    rows += [rows[0]] * 4  # the same ticket five times: some copies land on each side
    report = build_report(_recipe(write_jsonl(tmp_path / "t.jsonl", rows), 0.25), tokenizer,
                          tmp_path / "job")
    held = report.held_out
    assert held is not None and (held.train_rows, held.eval_rows) == (33, 11)
    evaluation = [json.loads(line) for line in Path(held.eval_file).read_text().splitlines()]
    training = [json.loads(line) for line in Path(held.train_file).read_text().splitlines()]
    assert len(evaluation) == 11 and len(training) == 33
    assert sorted(map(json.dumps, evaluation + training)) == sorted(map(json.dumps, rows))
    assert report.train.source == held.train_file and report.train.rows_read == 33
    shared = sum(r == rows[0] for r in training) if rows[0] in evaluation else 0
    assert shared > 0 and report.train.eval_overlap == shared  # seed 42 splits the copies
    assert report.gate_noise is not None and report.gate_noise.documents == 11
    again = build_report(_recipe(write_jsonl(tmp_path / "t.jsonl", rows), 0.25), tokenizer,
                         tmp_path / "job2")
    assert again.held_out is not None  # the same seed, the same rows held out
    assert Path(again.held_out.eval_file).read_text() == Path(held.eval_file).read_text()


@pytest.mark.parametrize(("rows", "problem"), [
    ([{"text": "one", "label": "metering"}], "holds out none or leaves none to train on"),
    ([], r"of 0 row\(s\) holds out none"),
])
def test_a_split_that_leaves_nothing_is_refused(
    tmp_path: Path, write_jsonl: Callable, tokenizer: PreTrainedTokenizerBase,
    rows: list, problem: str,
) -> None:
    with pytest.raises(DataValidationError, match=problem):
        build_report(_recipe(write_jsonl(tmp_path / "t.jsonl", rows), 0.3), tokenizer, tmp_path)


def test_unreadable_lines_are_named_before_any_split(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a ticket", "label": "metering"}\n{oops\n' * 3)
    with pytest.raises(DataValidationError, match="line 2: invalid JSON"):
        build_report(_recipe(path, 0.3), tokenizer, tmp_path)


def test_the_split_names_the_tenants_file_as_it_named_it(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    rows = [{"text": f"Ticket {i}: a matter for the {TEAMS[i % 5]} team today", "label":
             TEAMS[i % 5]} for i in range(40)]
    path = tmp_path / "srv" / "data" / "acme" / "exports" / "t.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = build_report(_recipe(path, 0.25), tokenizer, tmp_path / "job",
                          names=SourceNames("acme"))
    assert report.held_out is not None and report.held_out.source == "exports/t.jsonl"
    assert report.train.source == "exports/t.jsonl (rows not held out)"
    assert Path(report.held_out.train_file).is_relative_to(tmp_path / "job")  # read by training
    assert str(tmp_path) not in report.reason + report.summary() + report.train.source


def test_a_csv_row_with_a_cell_too_many_is_named_before_any_split(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase
) -> None:
    path = tmp_path / "t.csv"
    path.write_text("text,label\n" + "a ticket,metering\n" * 4 + "a ticket, sadly,metering\n")
    with pytest.raises(DataValidationError, match="line 6: 3 columns, the header has 2"):
        build_report(_recipe(path, 0.3), tokenizer, tmp_path)
