"""The leaderboard by model: one row per tuned adapter and one per base model, one column
per task, with the pins that say how each score was obtained.

Rows are built from the jobs the reader may see (`aif.web.leaderboard.visible_to` or
`PUBLIC_ONLY`, the same condition the API uses); a base model's row holds the base scores of
the newest of those jobs per task, so it never shows a score from a job the reader could not
see. Filters, sort and search are query parameters, so a view is a URL that can be shared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ValidationError
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session, selectinload

from aif.db.models import Job
from aif.orchestrator.gate import figures, gain_checks
from aif.orchestrator.scores import metric_score
from aif.web.pages import job_files
from events.messages import MetricScore, PairedComparison
from events.recipe import Recipe

NAME_LABEL = "name"
"""A request label naming the tuned model on the pages; else `recipe@version`."""


@dataclass
class Cell:
    task: str
    metric: str
    value: float
    stderr: float | None
    base: float | None = None  # tuned rows only
    delta: float | None = None
    verdict: str = ""  # clears | short | regressed | kept | gain | drop: the colour
    pins: dict[str, str] = field(default_factory=dict)
    macro_f1: float | None = None  # multiple-choice tasks: this model's
    majority: float | None = None  # ... and the constant majority answer's accuracy
    recall: dict[str, float] | None = None
    paired: list[str] = field(default_factory=list)  # tuned rows: `paired_figures`
    vs_base: PairedComparison | None = None  # tuned rows: the gate's paired comparisons
    vs_majority: PairedComparison | None = None


@dataclass
class ModelRow:
    key: str  # job:<id> or base:<model>, as the compare view names it
    name: str
    kind: Literal["tuned", "base"]
    job: Job  # the tuned model's job, or the newest job a base row's scores come from
    base_model: str
    recipe: str
    sector: str
    tenant: str
    method: str  # train.method of a tuned row (sft, dpo, orpo); "" for a base row
    gate_passed: bool | None
    gate_reason: str
    date: datetime
    cells: dict[str, Cell] = field(default_factory=dict)
    pins: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        return " ".join((self.name, self.recipe, self.base_model, self.sector, self.tenant,
                         self.method, self.job.id)).lower()


class BoardQuery(BaseModel):
    """The view: every field is a query parameter of the page and of its exports."""

    q: str = ""
    sector: str = ""
    recipe: str = ""
    task: str = ""
    base_model: str = ""
    gate: Literal["", "passed", "failed"] = ""
    tenant: str = ""  # staff only: others see one tenant and the public rows anyway
    method: str = ""
    sort: str = "date"  # a column: name, base_model, recipe, method, sector, tenant, gate, date, or
    # task:<name> / delta:<name>
    dir: Literal["asc", "desc"] = "desc"

    @classmethod
    def parse(cls, params: dict[str, str]) -> BoardQuery:
        """Unknown or malformed values fall back to the default view, never to an error page."""
        try:
            return cls.model_validate({k: v for k, v in params.items() if k in cls.model_fields})
        except ValidationError:
            return cls()

    def params(self, **change: str) -> dict[str, str]:
        """The non-default parameters of this view, with `change` applied (for links)."""
        merged = self.model_dump() | change
        return {k: v for k, v in merged.items() if v != BoardQuery.model_fields[k].default}


@dataclass
class Board:
    rows: list[ModelRow]
    tasks: list[str]  # the columns, after the task filter
    options: dict[str, list[str]]  # every value each filter could take, for its <select>


def _recipe(job: Job) -> Recipe | None:
    try:
        return Recipe.model_validate(job.recipe) if job.recipe else None
    except ValidationError:
        return None


def _verdict(recipe: Recipe | None, score: MetricScore) -> str:
    """How a delta reads against the job's own gate: the gate task clears it or falls short,
    a guard task keeps within its allowed regression or not, other tasks by sign."""
    if recipe is not None:
        gate = recipe.gate
        if (score.task, score.metric) == (gate.task, gate.metric):
            return "clears" if all(gain_checks(gate, score)) else (
                "short" if score.delta > 0 else "regressed")
        for guard in gate.guards:
            if (score.task, score.metric) == (guard.task, guard.metric):
                return "regressed" if -score.delta > guard.max_regression + 1e-9 else "kept"
    return "gain" if score.delta > 0 else "drop" if score.delta < 0 else ""


def paired_figures(score: MetricScore) -> list[str]:
    """Tuned against base and against the majority answer document by document, one line
    each, in the gate reason's words: what the gate's noise check saw, for people."""
    return [f"vs {other}: {paired.diff:+.3f} ({figures(paired, other)})"
            for other, paired in (("base", score.vs_base), ("majority", score.vs_majority))
            if paired is not None]


def _primary_metric(recipe: Recipe | None, task: str, metrics: list[str]) -> str:
    """The metric a task's column shows: the gate's or guard's if it names one, else acc."""
    if recipe is not None:
        named = [(recipe.gate.task, recipe.gate.metric)] + [
            (g.task, g.metric) for g in recipe.gate.guards]
        for t, metric in named:
            if t == task and metric in metrics:
                return metric
    return "acc" if "acc" in metrics else sorted(metrics)[0]


def _row_pins(job: Job, recipe: Recipe | None, model: str) -> dict[str, str]:
    """How the row's scores were obtained, beyond what each score row holds."""
    pins: dict[str, str] = {}
    if recipe is not None:
        e = recipe.eval
        pins |= {"chat template": "yes" if e.apply_chat_template else "no",
                 "batch size": str(e.batch_size), "limit": str(e.limit or "none"),
                 "seed": str(e.seed)}
    config = job_files.lm_eval_config(job, model)
    pins["dtype"] = job_files.dtype_of(config) or "not recorded"
    pins["device"] = str(config.get("device") or "not recorded")
    trained = job_files.training_result(job) if model == "tuned" else None
    if trained is not None:
        pins["adapter sha256"] = trained.files_sha256.get("adapter_model.safetensors", "")
    origin = job_files.provenance(job)
    if origin is not None:
        pins["base model sha256"] = ", ".join(
            f"{name} {digest}" for name, digest in sorted(origin.base_model_sha256.items())
            if name.endswith(".safetensors")) or "not recorded"
    command = job_files.eval_commands(job).get(model)
    pins["lm_eval command"] = " ".join(command) if command else "not recorded (job "\
        "evaluated before commands were kept, or not by the evaluation stage)"
    return pins


def _cells(job: Job, recipe: Recipe | None, kind: str) -> dict[str, Cell]:
    by_task: dict[str, list] = {}
    for s in job.scores:
        by_task.setdefault(s.task, []).append(s)
    cells = {}
    for task, scores in by_task.items():
        metric = _primary_metric(recipe, task, [s.metric for s in scores])
        s = next(x for x in scores if x.metric == metric)
        pins = {"lm-eval": s.lm_eval_version, "task": s.task, "task sha256":
                s.task_config_sha256 or "built-in", "few-shot": str(s.num_fewshot),
                "documents": str(s.samples)}
        if kind == "base":
            cells[task] = Cell(task, metric, s.base, s.base_stderr, pins=pins,
                               macro_f1=s.base_macro_f1, majority=s.majority,
                               recall=s.base_recall)
            continue
        score = metric_score(s)
        cells[task] = Cell(task, metric, s.tuned, s.tuned_stderr, s.base, score.delta,
                           _verdict(recipe, score), pins, macro_f1=s.tuned_macro_f1,
                           majority=s.majority, recall=s.tuned_recall,
                           paired=paired_figures(score), vs_base=score.vs_base,
                           vs_majority=score.vs_majority)
    return cells


def display_name(job: Job) -> str:
    """How the leaderboard and the job page label a tuned model (`NAME_LABEL`), which is not
    the name it is registered and served under (`registry.model_name`)."""
    label = (job.request or {}).get("data", {}).get("labels", {}).get(NAME_LABEL)
    recipe = job.recipe or {}
    return label or f"{job.recipe_name or recipe.get('name', 'inline')}@{recipe.get('version', 1)}"


def method(job: Job) -> str:
    """How the job's adapter learnt (train.method: sft, dpo, orpo), from its frozen recipe."""
    return str((job.recipe or {}).get("train", {}).get("method", "sft"))


def _tuned_row(job: Job) -> ModelRow:
    recipe = _recipe(job)
    return ModelRow(
        key=f"job:{job.id}", name=display_name(job), kind="tuned", job=job,
        base_model=recipe.model.base if recipe else "", recipe=job.recipe_name or "inline",
        sector=recipe.sector if recipe else "", tenant=job.tenant, method=method(job),
        gate_passed=job.gate_passed,
        gate_reason=job.gate_reason or "", date=job.updated_at,
        cells=_cells(job, recipe, "tuned"), pins=_row_pins(job, recipe, "tuned"))


def _base_rows(tuned: list[ModelRow]) -> list[ModelRow]:
    """One row per base model: per task, the base score of the newest job that has one."""
    rows: dict[str, ModelRow] = {}
    for t in sorted(tuned, key=lambda r: r.date, reverse=True):
        row = rows.get(t.base_model)
        if row is None:
            row = rows[t.base_model] = ModelRow(
                key=f"base:{t.base_model}", name=t.base_model, kind="base", job=t.job,
                base_model=t.base_model, recipe="", sector="", tenant="", method="",
                gate_passed=None,
                gate_reason="", date=t.date, pins=_row_pins(t.job, _recipe(t.job), "base"))
        for task, cell in _cells(t.job, _recipe(t.job), "base").items():
            row.cells.setdefault(task, cell)
    return list(rows.values())


def scored_jobs(session: Session, visible: ColumnElement[bool]) -> list[Job]:
    return list(session.scalars(
        select(Job).where(visible, Job.scores.any()).options(selectinload(Job.scores))
        .order_by(Job.updated_at.desc(), Job.id)))


def _sort_key(column: str):
    kind, _, task = column.partition(":")

    def key(row: ModelRow) -> tuple:
        if kind in ("task", "delta"):
            cell = row.cells.get(task)
            value = None if cell is None else cell.value if kind == "task" else cell.delta
            return (value is None, value or 0.0)
        value = {"name": row.name.lower(), "base_model": row.base_model, "recipe": row.recipe,
                 "method": row.method, "sector": row.sector, "tenant": row.tenant,
                 "date": row.date.isoformat(),
                 "gate": {True: 2, False: 1, None: 0}[row.gate_passed]}.get(kind, row.date
                                                                             .isoformat())
        return (False, value)
    return key


def build(session: Session, visible: ColumnElement[bool], query: BoardQuery,
          staff: bool) -> Board:
    tuned_all = [_tuned_row(job) for job in scored_jobs(session, visible)]
    options = {
        "sector": sorted({r.sector for r in tuned_all if r.sector}),
        "recipe": sorted({r.recipe for r in tuned_all}),
        "method": sorted({r.method for r in tuned_all}),
        "base_model": sorted({r.base_model for r in tuned_all if r.base_model}),
        "task": sorted({t for r in tuned_all for t in r.cells}),
        "tenant": sorted({r.tenant for r in tuned_all}) if staff else [],
    }
    tuned = [r for r in tuned_all if all(
        not wanted or getattr(r, name) == wanted
        for name, wanted in (("sector", query.sector), ("recipe", query.recipe),
                             ("method", query.method), ("base_model", query.base_model),
                             ("tenant", query.tenant if staff else "")))]
    rows = tuned + _base_rows(tuned)
    if query.gate:
        rows = [r for r in tuned if r.gate_passed is (query.gate == "passed")]
    if query.task:
        rows = [r for r in rows if query.task in r.cells]
    if query.q:
        rows = [r for r in rows if query.q.lower() in r.text()]
    none_last = [r for r in rows if _sort_key(query.sort)(r)[0]]
    present = sorted((r for r in rows if not _sort_key(query.sort)(r)[0]),
                     key=_sort_key(query.sort), reverse=query.dir == "desc")
    tasks = [query.task] if query.task else sorted({t for r in rows for t in r.cells})
    return Board(present + none_last, tasks, options)


def _paired_columns(prefix: str, paired: PairedComparison | None) -> dict[str, object]:
    """A paired comparison as export columns, one per field: the documents, the difference,
    its paired 95% interval, the discordant documents each way and the one-sided p-value
    (empty where none was made)."""
    return {f"{prefix}_{name}": getattr(paired, name) if paired else None
            for name in PairedComparison.model_fields}


def export_records(board: Board, staff: bool) -> list[dict[str, object]]:
    """The view as flat records, one per row, for the CSV and JSON exports."""
    records = []
    for r in board.rows:
        record: dict[str, object] = {
            "model": r.name, "kind": r.kind, "job_id": r.job.id if r.kind == "tuned" else "",
            "base_model": r.base_model, "recipe": r.recipe, "method": r.method,
            "sector": r.sector,
            "gate": "" if r.gate_passed is None else "passed" if r.gate_passed else "failed",
            "date": r.date.isoformat() if r.kind == "tuned" else ""}
        if staff:
            record["tenant"] = r.tenant
        for task in board.tasks:
            cell = r.cells.get(task)
            record[f"{task}:metric"] = cell.metric if cell else ""
            record[f"{task}:score"] = cell.value if cell else None
            record[f"{task}:stderr"] = cell.stderr if cell else None
            record[f"{task}:delta"] = cell.delta if cell else None
            record[f"{task}:macro_f1"] = cell.macro_f1 if cell else None
            record[f"{task}:majority"] = cell.majority if cell else None
            for other in ("base", "majority"):
                record.update(_paired_columns(f"{task}:vs_{other}", getattr(
                    cell, f"vs_{other}") if cell else None))
        records.append(record)
    return records
