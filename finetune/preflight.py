"""Pre-flight stage: what training would see, before any GPU time is spent.

`python -m finetune.preflight PREFLIGHT_SPEC_JSON` runs it as a stage process like training
(the orchestrator never loads a tokenizer or reads training rows itself) and writes the report
to `preflight.json` in the job directory. Exit codes: 0 the report is written (usable or not),
2 the spec, data, recipe or base model cannot be read at all, 1 anything else; a non-zero exit
leaves a StageFailure beside the spec saying whether a retry can help.

It reads the data through the same code as training (`finetune.data.read_examples`), so row
counts, token counts, truncation and the rendered examples are those of the real run. The
orchestrator stores it with the job and rejects the job when the data is unusable; `aif
preflight` prints it without submitting anything.

Personal data (`finetune.pii`): with `data.pii` other than `off` every string of every row is
scanned; the report counts each kind with its rows, never the values. `redact` writes copies
with placeholders under `work_dir/redacted/` and describes those (the orchestrator then
freezes the recipe onto them, so training reads them); `reject` makes any match unusable.

Overlap with the evaluation data: a training row overlaps when any of its string values
(nested ones included, e.g. chat message contents) of at least `MIN_OVERLAP_CHARS`
characters equals a string value of a document in one of the recipe's task data files
(local JSONL), both lowercased with whitespace collapsed. Short values such as labels are
ignored, so that shared class names do not count as leaks.
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from transformers import PreTrainedTokenizerBase

from events.recipe import Recipe
from events.recipe_data import DataSection, PiiPolicy
from events.recipe_eval import EvalSection
from finetune import pii
from finetune.base_model import BaseModelError, load_tokenizer
from finetune.choice_accuracy import ChoiceTaskError, gate_choices, questions
from finetune.data import (
    IGNORE_INDEX,
    DataValidationError,
    Example,
    Split,
    TokenizerUnfitError,
    read_examples,
    sequences,
)
from finetune.estimate import Estimator
from finetune.eval_pairs import evaluated_pairs
from finetune.gate_noise import gate_noise
from finetune.held_out import hold_out
from finetune.hyperparameters import pick
from finetune.labels import task_labels
from finetune.rows import SourceNames, url_name
from stagefiles.jobspec import FailureKind, PreflightSpec, record_failure
from stagefiles.preflight_report import PREFLIGHT, PreflightReport, RenderedExample, SplitReport
from stagefiles.remote_data import RemoteDataError, fetch_all, local_copy, remote_fields
from stagefiles.tasks import TaskConfigError, eval_data_files

EXIT_UNUSABLE = 2

MIN_OVERLAP_CHARS = 20
SHOWN_EXAMPLES = 3
SHOWN_ROWS = 20  # bad rows listed in full; duplicates and overlaps by line
NO_LOSS = ("[no loss]", "[/no loss]")


def build_report(recipe: Recipe, tokenizer: PreTrainedTokenizerBase,
                 work_dir: Path | None = None, estimator: Estimator | None = None,
                 names: SourceNames | None = None) -> PreflightReport:
    """Read both splits as training would and describe them, with the compute estimate if
    an `estimator` is given; DataValidationError only when a source cannot be read at all
    (missing file, unreachable hub dataset).

    With `data.pii: redact` the redacted copies are written under `work_dir` and described
    instead of the originals, since they are what training will read. Files are named in
    the report by `names` (default: as given).
    """
    names = names or SourceNames()
    for path in (recipe.data.train_file, recipe.data.validation_file, recipe.data.eval_file):
        if path is not None:
            names.known.setdefault(path, names(path))
    given = recipe  # the tenant's own files: what the estimate's data size counts
    scan = None
    if recipe.data.pii is not PiiPolicy.off:
        scan = pii.scan(recipe.data, recipe.language, recipe.data.pii, work_dir)
        scan = scan.model_copy(update={"redacted": [
            c.model_copy(update={"source": names.text(c.source)}) for c in scan.redacted]})
        names.known.update({c.path: f"{c.source} (redacted copy)" for c in scan.redacted})
        recipe = recipe.model_copy(update={"data": scan.applied_to(recipe.data)})
    held = None
    if recipe.data.eval_split:
        held = hold_out(recipe, work_dir or Path(tempfile.mkdtemp(prefix="aif-preflight-")))
        held = held.model_copy(update={"source": names.text(held.source)})
        names.known.update({held.train_file: f"{held.source} (rows not held out)",
                            held.eval_file: f"{held.source} (held-out rows)"})
        recipe = held.applied_to(recipe)
    reasons = []
    try:  # messages-form or mapped pairs: copied into the columns the gate task reads
        eval_pairs = evaluated_pairs(
            recipe, tokenizer, work_dir or Path(tempfile.mkdtemp(prefix="aif-preflight-")))
    except DataValidationError as exc:
        eval_pairs = None
        reasons.append(names.text(str(exc)))
    if eval_pairs is not None:
        names.known[eval_pairs.eval_file] = f"{names(eval_pairs.source)} (as the gate reads it)"
        recipe = eval_pairs.applied_to(recipe)
    data = read_examples(recipe.data, tokenizer, recipe.train.max_seq_len, recipe.train.seed,
                         task_labels(recipe))
    eval_strings = _eval_strings(recipe.eval)
    if scan is not None and scan.policy is PiiPolicy.reject and scan.kinds:
        reasons.append(f"data.pii is reject and the data holds personal data: "
                       f"{scan.describe()}")
    for split in (data.train, data.validation):
        try:
            if split is not None:
                split.check(recipe.data.max_bad_fraction)
        except DataValidationError as exc:
            reasons.append(str(exc))
    if recipe.train.early_stopping_metric == "accuracy" and data.validation is not None:
        try:  # as training will ask them, so that it cannot fail on them
            questions(gate_choices(recipe), tokenizer, data.validation)
        except (ChoiceTaskError, DataValidationError) as exc:
            reasons.append(str(exc))
    train = _split_report(data.train, tokenizer, eval_strings, names)
    picked = pick(recipe, train.rows_usable,
                  max((len(ids) for e in data.train.encoded for ids, _ in sequences(e.example)),
                      default=0))
    if picked is not None:  # the estimate and training count the picked steps
        recipe, given = picked.applied_to(recipe), picked.applied_to(given)
    noise = gate_noise(recipe)
    warnings: list[str] = []
    checks = [_overlap_check(recipe.data, train)]
    if noise is not None:
        checks.insert(0, (noise.verdict, noise.sentence))
    for verdict, sentence in checks:
        if verdict == "refuse":
            reasons.append(sentence)
        elif verdict == "warn":
            warnings.append(sentence)
    return PreflightReport(
        recipe=recipe.name,
        base_model=recipe.model.base,
        max_seq_len=recipe.train.max_seq_len,
        max_bad_fraction=recipe.data.max_bad_fraction,
        train=train,
        validation=data.validation and _split_report(data.validation, tokenizer, eval_strings,
                                                     names),
        usable=not reasons,
        reason=names.text("\n".join(reasons)),
        pii=scan,
        estimate=estimator(given, data.train) if estimator else None,
        held_out=held,
        eval_pairs=eval_pairs,
        picked=picked,
        gate_noise=noise,
        warnings=[names.text(w) for w in warnings],
    )


def _overlap_check(data: DataSection, train: SplitReport) -> tuple[str, str]:
    """(verdict, sentence) on the share of training rows found in the evaluation documents."""
    share = train.eval_overlap / max(1, train.rows_usable)
    if share <= data.max_eval_overlap:
        return "ok", ""
    return data.eval_overlap, (
        f"{train.eval_overlap} of {train.rows_usable} training rows ({share:.1%}) share a "
        f"string of {MIN_OVERLAP_CHARS}+ characters with the evaluation documents, above "
        f"data.max_eval_overlap {data.max_eval_overlap:.1%}: those scores would measure "
        "memory, not the task")


def render(example: Example, tokenizer: PreTrainedTokenizerBase) -> str:
    """Decode the example's tokens, wrapping each run without loss in the NO_LOSS markers;
    a preference pair as its chosen sequence, then its rejected one, a blank line between."""
    rendered = []
    for ids, labels in sequences(example):
        parts = []
        tokens = zip(ids, labels, strict=True)
        for trained, run in itertools.groupby(tokens, key=lambda p: p[1] != IGNORE_INDEX):
            text = tokenizer.decode([token for token, _ in run])
            parts.append(text if trained else f"{NO_LOSS[0]}{text}{NO_LOSS[1]}")
        rendered.append("".join(parts))
    return "\n\n".join(rendered)


def _split_report(split: Split, tokenizer: PreTrainedTokenizerBase,
                  eval_strings: set[str], names: SourceNames) -> SplitReport:
    lengths = [e.length for e in split.encoded]
    first_seen: dict[tuple[tuple[tuple[int, ...], tuple[int, ...]], ...], str] = {}
    duplicates = []
    for e in split.encoded:
        key = tuple((tuple(ids), tuple(labels)) for ids, labels in sequences(e.example))
        if key in first_seen:
            duplicates.append(f"{e.where} = {first_seen[key]}")
        first_seen.setdefault(key, e.where)
    overlap = [e.where for e in split.encoded if not eval_strings.isdisjoint(_strings(e.row))]
    return SplitReport(
        source=names.text(split.source),
        rows_read=split.rows,
        rows_usable=len(split.encoded),
        bad_rows=len(split.skipped),
        bad_row_reasons=split.skipped[:SHOWN_ROWS],
        tokens=sum(lengths),
        mean_tokens=sum(lengths) / len(lengths) if lengths else 0.0,
        max_tokens=max(lengths, default=0),
        trained_tokens=sum(label != IGNORE_INDEX for e in split.encoded
                           for _, labels in sequences(e.example) for label in labels),
        truncated=split.truncated,
        examples=[RenderedExample(where=e.where, text=render(e.example, tokenizer),
                                  truncated=e.truncated)
                  for e in split.encoded[:SHOWN_EXAMPLES]],
        duplicates=len(duplicates),
        duplicate_rows=duplicates[:SHOWN_ROWS],
        eval_overlap=len(overlap),
        eval_overlap_rows=overlap[:SHOWN_ROWS],
    )


def _eval_strings(section: EvalSection) -> set[str]:
    """Normalised long string values of every document in the recipe's task data files."""
    found: set[str] = set()
    for path in eval_data_files(section):
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                found.update(s for line in fh if line.strip() for s in _strings(json.loads(line)))
    return found


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        text = " ".join(value.lower().split())
        if len(text) >= MIN_OVERLAP_CHARS:
            yield text
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def main(spec: PreflightSpec, names: SourceNames) -> int:
    cache, work_dir = Path(spec.model_cache_dir), Path(spec.work_dir)
    # URL data is fetched into the job directory first: the report and training read the copy.
    data = fetch_all(spec.recipe.data, work_dir, spec.remote_data_allow_networks,
                     spec.max_download_bytes, spec.s3_endpoint_url)
    tokenizer = load_tokenizer(spec.recipe.model.base, cache)
    estimator = Estimator.on_this_node(spec.recipe.model.base, cache, spec.throughput)
    build_report(spec.recipe.model_copy(update={"data": data}), tokenizer, work_dir,
                 estimator, names).write(work_dir / PREFLIGHT)
    return 0


def source_names(spec: PreflightSpec) -> SourceNames:
    """How the job's reasons and report name its files: as its tenant named them, a URL's
    download by the URL."""
    work_dir = Path(spec.work_dir)
    return SourceNames(spec.tenant, {
        str(local_copy(work_dir, field, url)): url_name(url)
        for field, url in remote_fields(spec.recipe.data).items()})


def _cli(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m finetune.preflight PREFLIGHT_SPEC_JSON", file=sys.stderr)
        return EXIT_UNUSABLE
    spec_path = Path(argv[0])
    names = SourceNames(tenant="")  # until the spec is read: every path by its file name
    try:
        spec = PreflightSpec.read(spec_path)
        names = source_names(spec)
        return main(spec, names)
    except (DataValidationError, TokenizerUnfitError, BaseModelError, TaskConfigError,
            RemoteDataError) as exc:
        kind, reason, code = FailureKind.final, names.text(str(exc)), EXIT_UNUSABLE
    except (ValidationError, UnicodeError, ValueError) as exc:
        # A parser refused the spec, the data or a task file. Its message may quote the
        # input, so only the class is kept.
        kind, code = FailureKind.final, EXIT_UNUSABLE
        reason = f"the spec, data or task files cannot be read ({type(exc).__name__})"
    except OSError as exc:  # a full disk, a file system away: not the request's fault
        kind, code = FailureKind.retryable, 1
        reason = f"pre-flight: {type(exc).__name__}: {exc.strerror or 'I/O error'}"
    print(f"pre-flight: {reason}", file=sys.stderr)
    record_failure(spec_path, kind, reason)
    return code


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
