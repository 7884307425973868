"""`aif tenants ...`: create tenants and their keys, list them, revoke keys, set quotas,
erase a tenant.

Run by the centre's operators on a host that reaches the job store (`AIF_DATABASE_URL`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer
from pydantic import ByteSize, TypeAdapter, ValidationError
from rich.console import Console
from rich.table import Table

from aif.db.models import Tenant, utcnow
from aif.db.session import session_factory
from aif.erasure import STOP_TIMEOUT_S, ErasureError, erase_tenant
from aif.quotas import limits, set_quota, usage
from aif.settings import get_settings
from aif.tenants import (
    Role,
    TenantError,
    another_api_key,
    create_tenant,
    erased_tenants,
    list_tenants,
    revoke,
)

tenants_app = typer.Typer(help="Create tenants and their keys, list them, revoke keys, set "
                          "quotas, erase a tenant.",
                          no_args_is_help=True)
console = Console()


def _fail(exc: TenantError) -> typer.Exit:
    console.print(str(exc), style="red", markup=False)  # the message is text, not markup
    return typer.Exit(2)


Staff = Annotated[bool, typer.Option(help="An operator of the centre: reads every tenant.")]


@tenants_app.command("create")
def create(name: str, staff: Staff = False) -> None:
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


@tenants_app.command("add-key")
def add_key(name: str, staff: Staff = False) -> None:
    """Another API key of an existing tenant, shown only now: to sign in at /signin as the
    demo's tenant (whose first key was never shown), or to replace a lost key."""
    sessions = session_factory(get_settings().db_url)
    with sessions() as session:
        try:
            key_id, key = another_api_key(session, name, Role.staff if staff else Role.tenant)
        except TenantError as exc:
            raise _fail(exc) from exc
        session.commit()
    console.print(f"new API key {key_id} of tenant {name}; keep it, it is not shown again:",
                  markup=False)
    typer.echo(f"  {key}")  # unwrapped, so it can be copied whole
    console.print("sign in with it at /signin, or send it as Authorization: Bearer <key>",
                  markup=False)


@tenants_app.command("list")
def list_() -> None:
    """Every tenant and its keys: ids, kinds, dates; never a secret."""
    sessions = session_factory(get_settings().db_url)
    with sessions() as session:
        tenants, erased = list_tenants(session), erased_tenants(session)
    table = Table("tenant", "key id", "kind", "role", "created", "revoked")
    for tenant, keys in tenants.items():
        for key in keys or []:
            table.add_row(tenant, key.id, key.kind, key.role, key.created_at[:19],
                          "yes" if key.revoked else "")
        if not keys:
            table.add_row(tenant, "-", "erased" if tenant in erased else "-", "-", "-", "")
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


CLEAR = "default"
"""The value that removes a tenant's own limit, so the site default (or none) applies."""
_LIMIT_HELP = f"'{CLEAR}' removes the tenant's own limit."


def _parsed(value: str | None, parse: Callable[[str], int | float], option: str
            ) -> int | float | None:
    if value == CLEAR:
        return None
    try:
        return parse(value or "")
    except ValueError as exc:
        raise typer.BadParameter(f"a number or '{CLEAR}'", param_hint=option) from exc


def _byte_size(text: str) -> int:
    try:
        return int(TypeAdapter(ByteSize).validate_python(text))
    except ValidationError as exc:
        raise ValueError(text) from exc


@tenants_app.command("set-quota")
def set_quota_(
    name: str,
    concurrent_jobs: Annotated[str | None, typer.Option(
        help=f"Jobs queued or running at once. {_LIMIT_HELP}")] = None,
    dataset_bytes: Annotated[str | None, typer.Option(
        help=f"Largest training data, in bytes. {_LIMIT_HELP}")] = None,
    dataset_size: Annotated[str | None, typer.Option(
        help="The same with a unit: 500MB, 2GiB.")] = None,
    monthly_tokens: Annotated[str | None, typer.Option(
        help=f"Trained tokens per calendar month (UTC). {_LIMIT_HELP}")] = None,
    monthly_device_hours: Annotated[str | None, typer.Option(
        help=f"Training device-hours per calendar month (UTC). {_LIMIT_HELP}")] = None,
) -> None:
    """Set the tenant's own limits; those not given stay as they are."""
    if dataset_bytes is not None and dataset_size is not None:
        raise typer.BadParameter("give one of them", param_hint="--dataset-bytes/--dataset-size")
    given = {
        "concurrent_jobs": (concurrent_jobs, int, "--concurrent-jobs"),
        "dataset_bytes": (dataset_bytes, int, "--dataset-bytes"),
        "monthly_tokens": (monthly_tokens, int, "--monthly-tokens"),
        "monthly_device_hours": (monthly_device_hours, float, "--monthly-device-hours"),
    }
    if dataset_size is not None:
        given["dataset_bytes"] = (dataset_size, _byte_size, "--dataset-size")
    changes = {field: _parsed(value, parse, option)
               for field, (value, parse, option) in given.items() if value is not None}
    if not changes:
        raise typer.BadParameter("give at least one limit to set", param_hint="options")
    sessions = session_factory(get_settings().db_url)
    with sessions() as session:
        try:
            set_quota(session, name, changes)
        except TenantError as exc:
            raise _fail(exc) from exc
        except ValidationError as exc:
            raise typer.BadParameter("limits must not be negative") from exc
        session.commit()
    _show_quota(name)


@tenants_app.command("quota")
def quota(name: str) -> None:
    """The tenant's limits (its own or the site's) and what it uses of them now."""
    _show_quota(name)


def _show_quota(name: str) -> None:
    settings = get_settings()
    sessions = session_factory(settings.db_url)
    with sessions() as session:
        if session.get(Tenant, name) is None:
            raise _fail(TenantError(f"tenant {name}: no such tenant"))
        found = limits(session, name, settings.quota_defaults)
        used = usage(session, name, utcnow())
    now = {"concurrent_jobs": f"{used.running_jobs} queued or running",
           "dataset_bytes": "-",
           "monthly_tokens": f"{used.tokens:,} this month",
           "monthly_device_hours": f"{used.device_hours:.3g} this month"}
    table = Table("quota", "limit", "used", title=f"tenant {name}")
    for field, in_use in now.items():
        limit = found.get(field)
        table.add_row(field.replace("_", "-"), str(limit) if limit else "unlimited", in_use)
    console.print(table)
@tenants_app.command("erase")
def erase(
    name: str,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    stop_timeout: Annotated[float, typer.Option(
        help="Seconds a running stage may take to stop.")] = STOP_TIMEOUT_S,
) -> None:
    """Erase the tenant: files, jobs, scores, events, uploads and keys; its name stays taken
    and one audit row lists what was removed (counts and sha256 only)."""
    if not yes:
        typer.confirm(f"Erase tenant {name} and everything it has? This cannot be undone",
                      abort=True)
    settings = get_settings()
    try:
        erased = erase_tenant(session_factory(settings.db_url), settings, name, stop_timeout)
    except ErasureError as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(1) from exc
    rows = ", ".join(f"{table} {n}" for table, n in sorted(erased.rows.items())) or "no rows"
    console.print(f"erased tenant {name}: {rows}; {len(erased.files)} file(s); "
                  f"{len(erased.retired)} model(s) retired")
