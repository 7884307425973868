"""`python -m finetune.rows FILE`: the pre-flight's row reader as a process of its own, for
checking an upload without torch; its summary names lines and rules, never the data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SECRET = "SECRET-MARKER-5be0"
GOOD = '{"text": "Sparks from the pole", "label": "emergency"}\n'


def _rows(path: Path, *args: str) -> tuple[int, dict, str]:
    done = subprocess.run([sys.executable, "-m", "finetune.rows", str(path), *args],
                          capture_output=True, text=True, timeout=60, check=False)
    return done.returncode, json.loads(done.stdout) if done.stdout else {}, done.stderr


def test_bad_rows_are_listed_by_line_and_rule_without_the_data(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_bytes((GOOD * 3 + f'{{"text": "{SECRET}",\n' + f'"{SECRET}"\n' + "\n"
                      + GOOD).encode() + SECRET.encode() + b"\xc3\x28\n")
    code, summary, stderr = _rows(path)
    assert code == 1
    assert summary == {
        "type": "jsonl", "usable": False, "rows": 7, "objects": 4, "bad_rows": 3,
        "problems": ["line 4: invalid JSON: Expecting property name enclosed in double quotes "
                     "(column 1)",
                     "line 5: expected an object with columns, got str",
                     f"line 8: not UTF-8 text (byte {len(SECRET)})"],
        "more_problems": 0,
    }
    assert SECRET not in json.dumps(summary) + stderr
    # The same file within a fraction that allows three bad rows in seven.
    code, summary, _ = _rows(path, "--max-bad-fraction", "0.5")
    assert (code, summary["usable"], summary["bad_rows"]) == (0, True, 3)


def test_only_the_first_problems_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text("[]\n" * 25)
    code, summary, _ = _rows(path)
    assert (code, summary["bad_rows"], len(summary["problems"]), summary["more_problems"]) \
        == (1, 25, 20, 5)


@pytest.mark.parametrize(("name", "content", "code", "problem"), [
    ("t.csv", f"text,label\n{GOOD.strip()},x\n", 0, None),
    ("t.csv", f"text,label\nok,fine\n{SECRET},\xff\n".encode("latin-1"), 2,
     "after line 0: not a UTF-8 CSV file (UnicodeDecodeError)"),
    ("t.parquet", f"PAR1{SECRET}".encode(), 2, "not a readable Parquet file (ArrowInvalid)"),
    ("t.txt", GOOD.encode(), 2, "unsupported file type '.txt'; use .jsonl, .csv or .parquet"),
    ("t.jsonl", b"\n \n", 1, "there are no rows"),
    ("missing.jsonl", None, 2, "no such file"),
])
def test_whole_files_that_cannot_be_used(tmp_path: Path, name: str, content: str | bytes | None,
                                         code: int, problem: str | None) -> None:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        path.write_bytes(content)
    got, summary, stderr = _rows(path)
    assert got == code
    assert summary["usable"] is (code == 0)
    assert summary["problems"] == ([problem] if problem else [])
    assert SECRET not in json.dumps(summary) + stderr


def test_a_bad_fraction_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    code, _, stderr = _rows(tmp_path / "t.jsonl", "--max-bad-fraction", "1.5")
    assert code == 2 and "--max-bad-fraction" in stderr


def test_reading_rows_needs_no_torch() -> None:
    probe = ("import sys, finetune.rows, aif.web.routes.files; "
             "print(sorted(m for m in ('torch', 'transformers', 'finetune.data') "
             "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"
