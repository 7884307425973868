"""The leaderboard page, its CSV and JSON exports, and the compare view.

Signed out, a reader sees the rows their tenants published; signed in, their own tenant's
rows too (staff: every tenant's, with a tenant column and filter), exactly as
`GET /v1/leaderboard` scopes them.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import ColumnElement
from sqlalchemy.orm import Session

from aif.tenants import Principal
from aif.web.deps import SessionDep
from aif.web.leaderboard import PUBLIC_ONLY, visible_to
from aif.web.pages import board, job_files
from aif.web.pages.render import page
from aif.web.pages.sessions import Viewer

router = APIRouter()
MAX_COMPARED = 6


def _visible(viewer: Principal | None) -> ColumnElement[bool]:
    return PUBLIC_ONLY if viewer is None else visible_to(viewer)


def _board(request: Request, session: Session, viewer: Principal | None
           ) -> tuple[board.Board, board.BoardQuery]:
    query = board.BoardQuery.parse(dict(request.query_params))
    staff = viewer is not None and viewer.staff
    return board.build(session, _visible(viewer), query, staff), query


@router.get("/leaderboard", response_class=HTMLResponse)
def leaderboard_page(request: Request, session: SessionDep, viewer: Viewer) -> Response:
    view, query = _board(request, session, viewer)
    return page(request, "leaderboard.html", viewer, board=view, query=query,
                staff=viewer is not None and viewer.staff)


@router.get("/leaderboard.json")
def leaderboard_json(request: Request, session: SessionDep, viewer: Viewer) -> Response:
    view, query = _board(request, session, viewer)
    body = {"view": query.params(), "tasks": view.tasks,
            "rows": board.export_records(view, viewer is not None and viewer.staff)}
    return Response(json.dumps(body, indent=1), media_type="application/json", headers={
        "Content-Disposition": 'attachment; filename="leaderboard.json"'})


@router.get("/leaderboard.csv")
def leaderboard_csv(request: Request, session: SessionDep, viewer: Viewer) -> Response:
    view, _ = _board(request, session, viewer)
    records = board.export_records(view, viewer is not None and viewer.staff)
    out = io.StringIO()
    if records:
        writer = csv.DictWriter(out, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in r.items()} for r in records)
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": 'attachment; filename="leaderboard.csv"'})


def _cell(value: object) -> object:
    """A text cell a spreadsheet would run as a formula (a label `=HYPERLINK(...)`) is
    quoted, as OWASP advises for CSV exports; numbers stay numbers."""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value


@dataclass
class Agreement:
    """Per-sample agreement of two models on one task (documents both scored)."""

    task: str
    a: str
    b: str
    both_right: int
    only_a: int
    only_b: int
    both_wrong: int


def _outcomes(viewer: Principal | None, row: board.ModelRow, task: str
              ) -> dict[str, bool] | None:
    """A row's per-document results; samples are the tenant's data, so public rows of
    another tenant never show theirs."""
    if viewer is None or not viewer.may_read(row.job.tenant):
        return None
    cell = row.cells[task]
    return job_files.sample_outcomes(row.job, row.kind, task, cell.metric)


def _agreements(viewer: Principal | None, rows: list[board.ModelRow], tasks: list[str]
                ) -> list[Agreement]:
    found = []
    for task in tasks:
        outcomes = [(r, _outcomes(viewer, r, task)) for r in rows]
        for i, (a, oa) in enumerate(outcomes):
            for b, ob in outcomes[i + 1:]:
                if not oa or not ob:
                    continue
                docs = oa.keys() & ob.keys()
                found.append(Agreement(
                    task, a.name, b.name, sum(oa[d] and ob[d] for d in docs),
                    sum(oa[d] and not ob[d] for d in docs),
                    sum(ob[d] and not oa[d] for d in docs),
                    sum(not oa[d] and not ob[d] for d in docs)))
    return found


@router.get("/compare", response_class=HTMLResponse)
def compare(request: Request, session: SessionDep, viewer: Viewer,
            m: Annotated[list[str] | None, Query()] = None) -> Response:
    """Two or more models (`m=job:<id>` or `m=base:<model>`) on the tasks they share."""
    view = board.build(session, _visible(viewer), board.BoardQuery(), False)
    by_key = {r.key: r for r in view.rows}
    rows = [by_key[k] for k in dict.fromkeys(m or []) if k in by_key][:MAX_COMPARED]
    shared = sorted(set.intersection(*(set(r.cells) for r in rows))) if rows else []
    return page(request, "compare.html", viewer, rows=rows, tasks=shared,
                agreements=_agreements(viewer, rows, shared))
