"""`aif models list|show|retire`: the model registry, for operators (every tenant's)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from aif import audit, registry
from aif.db.models import RegisteredModel
from aif.db.session import session_factory
from aif.settings import get_settings

models_app = typer.Typer(help="Handed-off models: versions, files, scores, serving status.",
                         no_args_is_help=True)
console = Console()
TenantOption = Annotated[str | None, typer.Option(help="Only this tenant's models.")]


def _describe(row: RegisteredModel) -> dict[str, object]:
    return {"name": row.name, "version": row.version, "status": row.status,
            "served_name": row.served_name, "job_id": row.job_id, "base_model": row.base_model,
            "base_revision": row.base_revision, "adapter_uri": row.adapter_uri,
            "files_sha256": row.files_sha256, "merged_uri": row.merged_uri,
            "adapter": row.adapter, "scores": row.scores, "gate": row.gate_reason,
            "serving": row.serving, "created_at": row.created_at.isoformat(),
            "retired_at": row.retired_at and row.retired_at.isoformat()}


@models_app.command("list")
def list_command(tenant: TenantOption = None) -> None:
    """Every version: name, version, status, base model, primary score, where served."""
    with session_factory(get_settings().db_url)() as session:
        rows = registry.list_models(session, tenant)
        table = Table("name", "version", "status", "base", "score", "served as")
        for row in rows:
            score = row.scores[0] if row.scores else None
            table.add_row(row.name, str(row.version), row.status, row.base_model,
                          f"{score['task']} {score['tuned']:.3f}" if score else "-",
                          row.served_name)
    console.print(table)


@models_app.command("show")
def show_command(ref: Annotated[str, typer.Argument(help="NAME[:VERSION], latest if none.")],
                 tenant: TenantOption = None) -> None:
    """One version as JSON: files and checksums, adapter shape, scores, serving outcome."""
    with session_factory(get_settings().db_url)() as session:
        try:
            row = registry.find(session, tenant, *registry.parse_ref(ref))
        except registry.RegistryError as exc:
            raise typer.BadParameter(str(exc), param_hint="NAME[:VERSION]") from exc
        typer.echo(json.dumps(_describe(row), indent=2, sort_keys=True))


@models_app.command("retire")
def retire_command(ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
                   tenant: TenantOption = None) -> None:
    """Unload it from every endpoint, remove its published files, publish model.retired."""
    settings = get_settings()
    try:
        row = registry.retire(session_factory(settings.db_url), settings, tenant, ref,
                              audit.OPERATOR)
    except registry.RegistryError as exc:
        raise typer.BadParameter(str(exc), param_hint="NAME:VERSION") from exc
    typer.echo(f"{row.name}:{row.version} retired")
