"""`aif audit`: the audit log, for operators, as a table or as JSON lines."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

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
        table.add_row(str(row["at"])[:19], row["tenant"] or "-", str(row["actor"]),
                      str(row["action"]), row["job_id"] or "-", row["event_id"] or "-",
                      json.dumps(row["detail"], sort_keys=True)[:80])
    console.print(table)
