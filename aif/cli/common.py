"""What every `aif` command shares: the app, the console, the options, the settings and
the recipe a command names."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console

from aif import logs, redaction
from aif.settings import Settings, get_settings
from events.recipe import Recipe, RecipeError, load_recipe_file
from recipes import load_recipe


def _flags_take_no_value() -> None:
    """typer's rich help prints a value type after every flag (`--help <bool>`, `--serve
    --no-serve <bool>`), as if it took a value; a flag takes none, so none is shown."""
    shown = typer.core.TyperOption.display_type_rich

    def display_type_rich(self: typer.core.TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    typer.core.TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_take_no_value()
app = typer.Typer(help="aif-tuning: event-driven LoRA fine-tuning and evaluation.",
                  no_args_is_help=True)
console = Console()

Tenant = Annotated[str, typer.Option(help="Tenant the job belongs to.")]


class Part(StrEnum):
    orchestrator = "orchestrator"
    web = "web"


MaxSteps = Annotated[int | None, typer.Option(help="Override the recipe's training steps.")]
EvalLimit = Annotated[int | None, typer.Option(help="Evaluate at most this many documents.")]
Epochs = Annotated[str | None, typer.Option(
    help="Passes over the training rows instead of the recipe's steps: a number, or auto "
         "(picked from the data set's size; the job's pre-flight report says what).")]
InitFrom = Annotated[str | None, typer.Option(
    help="Train on from a registered model version of the tenant's own, NAME[:VERSION] as "
         "`aif models` lists it (e.g. DPO after an SFT job), instead of a fresh adapter.")]
TrainFile = Annotated[str | None, typer.Option(help="Training data instead of the recipe's.")]
Dataset = Annotated[str | None, typer.Option(help="Hub dataset id instead of the recipe's data.")]
EvalFile = Annotated[Path | None, typer.Option(
    help="Own evaluation rows (the training columns): the gate's primary task, scored with "
         "the recipe's task template; the recipe's test set is still reported.")]
EvalSplit = Annotated[float | None, typer.Option(
    help="Instead of --eval-file: hold this share of the training rows out as the gate's "
         "primary task (seeded).")]
SigningKeyId = Annotated[str | None, typer.Option(
    envvar="AIF_SIGNING_KEY_ID", help="Id of the tenant's signing key (from `aif tenants "
    "create`); with --signing-secret the request is signed.")]
SigningSecret = Annotated[str | None, typer.Option(
    envvar="AIF_SIGNING_SECRET", show_default=False,
    help="The signing key's secret; better given as AIF_SIGNING_SECRET than on the command line.")]


def _setup() -> Settings:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    settings = get_settings()
    logs.configure(settings.log_format, settings.log_level)
    redaction.install(settings)
    return settings


def _error(text: str) -> None:
    """An error in red, as it is: messages quote patterns and paths that rich would take
    for markup (`[a-z0-9]` vanished from a recipe error)."""
    console.print(text, style="red", markup=False)


def _api_key() -> str:
    key = os.environ.get("AIF_API_KEY")
    if not key:
        console.print("[red]--api needs the tenant's API key in AIF_API_KEY[/red]")
        raise typer.Exit(2)
    return key


def _recipe(recipe: str) -> Recipe:
    """A recipe by name, or from a YAML file; the name is the user's own, so it is shown."""
    if recipe.endswith((".yaml", ".yml")):
        return load_recipe_file(Path(recipe))
    try:
        return load_recipe(recipe)
    except RecipeError as exc:
        raise RecipeError(f"{recipe}: {exc}") from exc
