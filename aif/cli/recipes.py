"""`aif recipes`: list, show and validate recipes."""

from __future__ import annotations

from pathlib import Path

import typer
from rich import box
from rich.measure import Measurement
from rich.table import Table

from aif.cli.common import _error, _recipe, console
from events.recipe import Recipe, RecipeError, load_recipe_file
from recipes import load_recipe, recipe_files

recipes_app = typer.Typer(help="List, show and validate recipes.", no_args_is_help=True)


@recipes_app.command("list")
def recipes_list() -> None:
    """Every shipped recipe with its sector and gate."""
    recipes = [load_recipe(name) for name in recipe_files()]
    table = Table()
    table.add_column("name", no_wrap=True)  # what one types after `aif submit`: never cut
    for col in ("sector", "language", "base model", "gate"):
        table.add_column(col)
    for r in recipes:
        table.add_row(r.name, r.sector, r.language, r.model.base, _gate(r))
    if _natural_width(table) > console.width:
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False)  # narrow: the rest beside the name
        table.add_column("name", no_wrap=True)
        table.add_column("sector · language · base model, gate", overflow="fold")
        for r in recipes:
            table.add_row(r.name, f"{r.sector} · {r.language} · {r.model.base}\n"
                                  f"gate: {_gate(r)}")
    console.print(table)


def _natural_width(table: Table) -> int:
    """How wide the table is with no cell wrapped or cut."""
    return Measurement.get(console, console.options.update_width(10_000), table).maximum


def _gate(r: Recipe) -> str:
    return f"{r.gate.metric} on {r.gate.task} >= base + {r.gate.min_gain}"


@recipes_app.command("show")
def recipes_show(name: str) -> None:
    """The recipe as the service will run it (paths resolved)."""
    try:
        console.print_json(_recipe(name).model_dump_json())
    except RecipeError as exc:
        _error(str(exc))
        raise typer.Exit(2) from exc


@recipes_app.command("validate")
def recipes_validate(files: list[Path]) -> None:
    """Check recipe files; errors name the file and the field."""
    failed = False
    for path in files:
        try:
            load_recipe_file(path)
            console.print(f"{path}: ok", markup=False)
        except RecipeError as exc:
            _error(str(exc))  # a pattern such as [a-z0-9] is text, not markup
            failed = True
    raise typer.Exit(1 if failed else 0)
