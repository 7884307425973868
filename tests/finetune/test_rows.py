"""`python -m finetune.rows FILE`: the pre-flight's row reader as a process of its own, for
checking an upload without torch; its summary names lines and rules, never the data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune.rows import SourceNames, read_rows, url_name

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
    ("t.csv", 'text,label\n"Sparks, from the pole",emergency\n', 0, None),
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


def test_a_csv_row_with_more_cells_than_the_header_is_a_bad_row_by_its_first_line(
    tmp_path: Path,
) -> None:
    """An unquoted comma splits a cell in two: the row is refused as such (the upload check
    and the pre-flight read it alike), never read as a row with an odd label."""
    path = tmp_path / "t.csv"
    path.write_text(f'text,label\n"Sparks\nfrom the pole",emergency\n\n{SECRET} a, b,{SECRET}\n'
                    f'{SECRET}\nshort\n')
    code, summary, stderr = _rows(path)
    assert (code, summary["rows"], summary["objects"]) == (1, 4, 3)
    assert summary["problems"] == ["line 5: 3 columns, the header has 2"]
    assert SECRET not in json.dumps(summary) + stderr
    rows = list(read_rows(path))
    assert [where for where, _ in rows] == ["line 2", "line 5", "line 6", "line 7"]
    assert rows[3][1] == {"text": "short", "label": None}  # cells missing at the end: None


@pytest.mark.parametrize(("path", "named"), [
    ("/srv/aif/data/acme/exports/t.csv", "exports/t.csv"),
    ("/srv/aif/data/acme/t.csv", "t.csv"),
    ("/home/acme/aif/data/acme/t.csv", "t.csv"),  # the folder nearest the file is the tenant's
    ("/srv/aif/data/acme/files/file-0a1b/data.parquet", "file-0a1b"),  # an upload: its id
    ("/srv/aif/recipes/energy/data/train.jsonl", "train.jsonl"),  # not the tenant's: file name
    ("exports/t.csv", "exports/t.csv"),  # already relative
    ("/srv/aif/jobs/acme/j-1/remote/train_file.csv", "https://example.org/t.csv"),  # known
])
def test_files_are_named_as_the_tenant_named_them(path: str, named: str) -> None:
    names = SourceNames("acme", {"/srv/aif/jobs/acme/j-1/remote/train_file.csv":
                                 "https://example.org/t.csv"})
    assert names(path) == named
    assert names.text(f"{path}: 1 problem(s) in 12/14 rows (see {path!r}); and/or") == (
        f"{named}: 1 problem(s) in 12/14 rows (see {named!r}); and/or")
    assert SourceNames()(path) == SourceNames().text(path) == path  # aif preflight: as given


def test_a_known_path_with_spaces_is_named_whole() -> None:
    names = SourceNames("acme", {"/srv/my data/acme/t.csv": "t.csv"})
    assert names.text("/srv/my data/acme/t.csv: bad; /srv/other/x.jsonl") == "t.csv: bad; x.jsonl"


def test_a_data_url_is_named_without_its_credentials_or_query() -> None:
    assert url_name("https://u:pw@example.org:8443/d/t.csv?sig=abc#x") == (
        "https://example.org:8443/d/t.csv")
    assert url_name("s3://bucket/tenants/acme/t.jsonl") == "s3://bucket/tenants/acme/t.jsonl"


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
