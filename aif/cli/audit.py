"""`aif audit`: the audit log, for operators, as a table or as JSON lines."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from aif.audit import entries
from aif.db.models import Audit
from aif.db.session import session_factory
from aif.settings import get_settings

console = Console()


def _as_dict(row: Audit) -> dict[str, object]:
    return {"id": row.id, "at": row.at.isoformat(), "tenant": row.tenant, "actor": row.actor,
            "action": row.action, "job_id": row.job_id, "event_id": row.event_id,
            "sha256": row.sha256, "detail": row.detail}


def audit_command(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's rows.")] = None,
    job: Annotated[str | None, typer.Option(help="Only this job's rows.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")]
    = False,
) -> None:
    """Who did what, oldest first: actor, action, job, event and payload sha256."""
    sessions = session_factory(get_settings().db_url)
    with sessions() as session:
        rows = [_as_dict(r) for r in entries(session, tenant=tenant, job_id=job)]
    if as_json:
        for row in rows:
            typer.echo(json.dumps(row, sort_keys=True))
        return
    table = Table("at", "tenant", "actor", "action", "job", "event", "detail")
    for row in rows:
        table.add_row(*(Text(cell) for cell in (
            _at(row), row["tenant"] or "-", str(row["actor"]), str(row["action"]),
            row["job_id"] or "-", row["event_id"] or "-", _detail(row))))
    wide = console.options.update_width(10_000)
    if Measurement.get(console, wide, table).maximum > console.width:
        table = _narrow(rows)  # ids are 36 characters: seven columns fit no terminal
    console.print(table)


def _at(row: dict[str, object]) -> str:
    return str(row["at"])[:19].replace("T", " ")


def _detail(row: dict[str, object]) -> str:
    return json.dumps(row["detail"], sort_keys=True)[:80]


def _narrow(rows: list[dict[str, object]]) -> Table:
    """Each row as a few lines beside its time, nothing cut: what, whose and by whom; the job
    and event ids whole, each on its own line; the detail."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("at", no_wrap=True)
    table.add_column("action · tenant · actor; job, event, detail", overflow="fold")
    for row in rows:
        lines = [f"{row['action']} · tenant {row['tenant'] or '-'} · by {row['actor']}"]
        lines += [f"{name} {row[key]}" for name, key in (("job", "job_id"), ("event", "event_id"))
                  if row[key]]
        lines.append(_detail(row))
        table.add_row(Text(_at(row)), Text("\n".join(lines)))
    return table
