"""Rows of a training file as the pre-flight and training read them, without torch.

Kept apart from `finetune.data` (which tokenises, and so imports torch and transformers) so
that the web app can check an upload with exactly the reading code of a job, in a process of
its own:

    python -m finetune.rows FILE [--max-bad-fraction F]

prints a JSON summary (file type, rows read, rows usable as objects with columns, bad rows as
"line N: reason") and exits 0 when the file is usable, 1 when it has no rows or more bad rows
than the fraction allows, 2 when it cannot be read at all. Reasons name the line and the rule,
never the data. A row is checked here alike for the upload and the pre-flight (`record`, and
what `read_rows` finds: a line that is not JSON, a CSV row with more cells than the header),
so a file the pre-flight refuses for its rows' shape is refused at upload, for the same reason.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

SUFFIXES = (".jsonl", ".csv", ".parquet")
SHOWN_PROBLEMS = 20
EXIT_REFUSED = 1
EXIT_UNREADABLE = 2


class DataValidationError(ValueError):
    """Rows of the training data are unusable; `.problems` names each one by line or row."""

    def __init__(self, source: object, problems: list[str], rows: int) -> None:
        self.problems = problems
        listed = "\n  ".join(problems[:SHOWN_PROBLEMS])
        more = len(problems) - SHOWN_PROBLEMS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        head = f"{source}: {len(problems)} problem(s) in {rows} row(s) read"
        super().__init__(f"{head}:\n  {listed}{tail}")


class RowError(Exception):
    """One row is unusable; the message says why."""


@dataclass(frozen=True)
class HubSplit:
    """One split of a hub dataset (or of a local dataset folder `load_dataset` reads)."""

    dataset: str
    config: str | None
    split: str

    def __str__(self) -> str:
        config = f" config {self.config!r}" if self.config else ""
        return f"hub dataset {self.dataset!r}{config} split {self.split!r}"


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"`,;:()\[\]{}<>]+")


class SourceNames:
    """How reasons and reports name a data file: as the tenant named it, never by the path
    it has on the server.

    The pre-flight stage reads canonical paths (`<data_root>/<tenant>/...`) and copies in the
    job directory, while the tenant named `exports/t.csv`, a `file_id` or a URL. `known`
    maps the paths the stage has a better name for (a URL's download, a redacted copy); any
    other absolute path is named by what follows the tenant's folder in it (an upload by its
    file id), else by its file name. Without a tenant (`aif preflight` on one's own files)
    everything is shown as given.
    """

    def __init__(self, tenant: str | None = None, known: Mapping[str, str] = ()) -> None:
        self.tenant = tenant
        self.known = dict(known)

    def __call__(self, path: str) -> str:
        if path in self.known:
            return self.known[path]
        if self.tenant is None or not path.startswith("/"):
            return path
        parts = PurePosixPath(path).parts[1:]
        if self.tenant not in parts[:-1]:
            return parts[-1] if parts else path
        own = parts[len(parts) - parts[::-1].index(self.tenant):]
        if len(own) == 3 and own[0] == "files" and own[2].startswith("data."):
            return own[1]  # an upload: its file_id
        return "/".join(own)

    def text(self, text: str) -> str:
        """`text` with every absolute path in it named as above."""
        if self.tenant is None:
            return text
        for path in sorted(self.known, key=len, reverse=True):  # they may hold spaces
            text = text.replace(path, self.known[path])
        return _ABSOLUTE_PATH.sub(lambda m: self(m.group()), text)


def url_name(url: str) -> str:
    """A data URL as reasons name it: without user, password, query or fragment."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{parts.path}"


def record(row: Any) -> dict[str, Any]:
    """The row as an object with columns, or RowError saying why it is not one."""
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, dict):
        raise RowError(f"expected an object with columns, got {type(row).__name__}")
    return row


def checked_rows(source: Path | HubSplit) -> Iterator[tuple[str, dict[str, Any] | RowError]]:
    """Yield (where, row as an object with columns) or (where, RowError saying why it is not
    one): the one check of a row's shape, for an upload (`summarise`) and for every reader
    of a job's rows (pre-flight, personal-data scan, held-out split, training)."""
    for where, raw in read_rows(source):
        try:
            yield where, record(raw)
        except RowError as exc:
            yield where, exc


def check_counts(source: object, rows: int, usable: int, problems: list[str],
                 max_bad_fraction: float) -> None:
    """Raise DataValidationError if more rows are bad than `max_bad_fraction` allows."""
    if rows == 0:
        raise DataValidationError(source, ["there are no rows"], 0)
    if problems and (len(problems) > max_bad_fraction * rows or not usable):
        raise DataValidationError(source, problems, rows)


def read_rows(source: Path | HubSplit) -> Iterator[tuple[str, Any]]:
    """Yield (where, row); a line that is not JSON comes back as a RowError, to be listed."""
    if isinstance(source, HubSplit):
        yield from _read_hub(source)
        return
    if not source.is_file():
        raise DataValidationError(source, ["no such file"], 0)
    suffix = source.suffix.lower()
    if suffix == ".jsonl":
        yield from _read_jsonl(source)
    elif suffix == ".csv":
        yield from _read_csv(source)
    elif suffix == ".parquet":
        yield from _read_parquet(source)
    else:
        problem = f"unsupported file type {suffix!r}; use .jsonl, .csv or .parquet"
        raise DataValidationError(source, [problem], 0)


def _read_jsonl(source: Path) -> Iterator[tuple[str, Any]]:
    """Lines as bytes, so one that is not UTF-8 is a bad row like one that is not JSON."""
    with open(source, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            where = f"line {number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield where, RowError(f"not UTF-8 text (byte {exc.start})")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, RowError(f"invalid JSON: {exc.msg} (column {exc.colno})")
            except RecursionError:
                yield where, RowError("invalid JSON: nested too deeply")


def _read_csv(source: Path) -> Iterator[tuple[str, Any]]:
    """Rows of a CSV file by the line they start on, as objects keyed by the header (cells
    missing at the end are None); a row with more cells than the header is a bad row, since
    its cells cannot be told apart from a cell holding an unquoted comma. Past a byte that is
    not UTF-8 or broken quoting nothing can be trusted (there are no reliable line
    boundaries), so the file is refused there."""
    line = 0
    try:
        with open(source, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, [])
            line = reader.line_num
            for cells in reader:
                where, line = f"line {line + 1}", reader.line_num
                if not cells:  # a blank line
                    continue
                if len(cells) > len(header):
                    yield where, RowError(f"{len(cells)} columns, the header has {len(header)}")
                else:
                    yield where, dict(zip(header, [*cells, *[None] * (len(header) - len(cells))],
                                          strict=True))
    except (UnicodeDecodeError, csv.Error) as exc:
        problem = f"after line {line}: not a UTF-8 CSV file ({type(exc).__name__})"
        raise DataValidationError(source, [problem], line) from exc


def _read_parquet(source: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(source)
    except (pa.ArrowException, OSError) as exc:
        problem = f"not a readable Parquet file ({type(exc).__name__})"
        raise DataValidationError(source, [problem], 0) from exc
    for number, row in enumerate(table.to_pylist(), start=1):
        yield f"row {number}", row


def _read_hub(source: HubSplit) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        rows = datasets.load_dataset(source.dataset, source.config, split=source.split)
    except (OSError, ValueError) as exc:  # offline, unknown id, config or split
        problem = f"data.dataset {source.dataset!r} cannot be loaded: {exc}"
        raise DataValidationError(source, [problem], 0) from exc
    for number, row in enumerate(rows, start=1):
        yield f"row {number}", row


def summarise(path: Path, max_bad_fraction: float = 0.0) -> tuple[dict[str, Any], int]:
    """(summary, exit code) of one file, read as a job would read it."""
    rows = usable = 0
    bad: list[str] = []  # "line N: reason" per row that is not an object with columns
    try:
        for where, row in checked_rows(path):
            rows += 1
            if isinstance(row, RowError):
                bad.append(f"{where}: {row}")
            else:
                usable += 1
    except DataValidationError as exc:  # the file itself cannot be read (any further)
        code, problems = EXIT_UNREADABLE, [*bad, *exc.problems]
    else:
        try:
            check_counts(path, rows, usable, bad, max_bad_fraction)
            code, problems = 0, bad
        except DataValidationError as exc:
            code, problems = EXIT_REFUSED, exc.problems
    summary = {"type": path.suffix.lower().lstrip("."), "usable": code == 0, "rows": rows,
               "objects": usable, "bad_rows": len(bad), "problems": problems[:SHOWN_PROBLEMS],
               "more_problems": max(0, len(problems) - SHOWN_PROBLEMS)}
    return summary, code


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.rows", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--max-bad-fraction", type=float, default=0.0,
                        help="bad rows allowed, as a fraction of the rows read (default 0)")
    args = parser.parse_args(argv)
    if not 0.0 <= args.max_bad_fraction < 1.0:
        parser.error("--max-bad-fraction: between 0 (inclusive) and 1")
    summary, code = summarise(args.file, args.max_bad_fraction)
    print(json.dumps(summary))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
