"""`aif tenants ...`: create tenants and their keys, list them, revoke keys.

Run by the centre's operators on a host that reaches the job store (`AIF_DATABASE_URL`).
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from aif.db.session import session_factory
from aif.settings import get_settings
from aif.tenants import Role, TenantError, create_tenant, list_tenants, revoke

tenants_app = typer.Typer(help="Create tenants and their keys, list them, revoke keys.",
                          no_args_is_help=True)
console = Console()


def _fail(exc: TenantError) -> typer.Exit:
    console.print(f"[red]{exc}[/red]")
    return typer.Exit(2)


@tenants_app.command("create")
def create(
    name: str,
    staff: Annotated[bool, typer.Option(help="An operator of the centre: reads every tenant.")]
    = False,
) -> None:
    """Create a tenant with an API key and an event-signing key, each shown only now."""
    sessions = session_factory(get_settings().db_url)
    with sessions() as session:
        try:
            made = create_tenant(session, name, Role.staff if staff else Role.tenant)
        except TenantError as exc:
            raise _fail(exc) from exc
        session.commit()
    console.print(f"tenant {made.tenant} created; keep these, they are not shown again:")
    for label, value in (("API key (Authorization: Bearer ...)", made.api_key),
                         ("signing key id", made.signing_key_id),
                         ("signing secret (HMAC-SHA256)", made.signing_secret)):
        typer.echo(f"  {label:<36} {value}")  # unwrapped, so it can be copied whole


@tenants_app.command("list")
def list_() -> None:
    """Every tenant and its keys: ids, kinds, dates; never a secret."""
    sessions = session_factory(get_settings().db_url)
    with sessions() as session:
        tenants = list_tenants(session)
    table = Table("tenant", "key id", "kind", "role", "created", "revoked")
    for tenant, keys in tenants.items():
        for key in keys or []:
            table.add_row(tenant, key.id, key.kind, key.role, key.created_at[:19],
                          "yes" if key.revoked else "")
        if not keys:
            table.add_row(tenant, "-", "-", "-", "-", "")
    console.print(table)


@tenants_app.command("revoke")
def revoke_(
    name: str,
    key_id: Annotated[str | None, typer.Option(help="Only this key (default: all of them).")]
    = None,
) -> None:
    """Revoke a key of the tenant, or all its keys; calls with them get 401 from now on."""
    sessions = session_factory(get_settings().db_url)
    with sessions() as session:
        try:
            revoked = revoke(session, name, key_id)
        except TenantError as exc:
            raise _fail(exc) from exc
        session.commit()
    console.print(f"revoked {len(revoked)} key(s) of {name}: {', '.join(revoked) or '-'}")
