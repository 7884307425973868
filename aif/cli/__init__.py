"""The `aif` command line: run the service, submit and follow jobs, manage recipes."""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import typer.core
from pydantic import ValidationError
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from aif import logs
from aif.cli.audit import audit_command
from aif.cli.models import models_app
from aif.cli.tenants import tenants_app
from aif.follow import wait_for_job
from aif.settings import Settings, get_settings
from aif.web import client as api_client
from events import redaction
from events.bus import make_producer, publish
from events.client import finetune_request
from events.envelope import describe_validation_error, job_id_for
from events.messages import (
    PUBLIC_LABEL,
    EvaluationCompleted,
    EventData,
    FineTuneRequested,
    JobProgress,
    JobStatusChanged,
    ModelReady,
)
from events.recipe import HyperparameterOverrides, Recipe, RecipeError, load_recipe_file
from events.signing import SigningKey
from events.states import JobState
from recipes import load_recipe, recipe_files


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
recipes_app = typer.Typer(help="List, show and validate recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")
app.add_typer(tenants_app, name="tenants")
app.add_typer(models_app, name="models")
app.command("audit")(audit_command)
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


def _submit(settings: Settings, recipe: str, tenant: str, overrides: HyperparameterOverrides,
            train_file: str | None, dataset: str | None = None,
            signing_key: SigningKey | None = None, labels: dict[str, str] | None = None,
            eval_file: Path | None = None, eval_split: float | None = None) -> str:
    event = finetune_request(
        tenant=tenant, source="urn:aif-tuning:cli", recipe=recipe, train_file=train_file,
        dataset=dataset, eval_file=eval_file and str(eval_file), eval_split=eval_split,
        overrides=overrides, labels=labels,
    )
    job_id = job_id_for(tenant, event.source, event.id)
    producer = make_producer(settings.kafka)
    try:
        publish(producer, settings.topics.requests, event, key=job_id, signing_key=signing_key)
    finally:
        producer.close()
    return job_id


def _overrides(**given: object) -> HyperparameterOverrides:
    """The command line's overrides, or exit 2 naming the option and its rule."""
    try:
        return HyperparameterOverrides.model_validate(
            {k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        console.print(describe_validation_error(exc), style="red", markup=False)
        raise typer.Exit(2) from exc


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


def _submit_http(api: str, recipe: str, overrides: HyperparameterOverrides,
                 train_file: str | None, dataset: str | None, eval_file: Path | None = None,
                 eval_split: float | None = None) -> str:
    """The same request as `_submit`, through POST /v1/jobs (which signs and publishes it)."""
    request = FineTuneRequested(
        recipe=recipe, train_file=train_file, dataset=dataset,
        eval_file=eval_file and str(eval_file), eval_split=eval_split, overrides=overrides)
    try:
        return api_client.submit(api, _api_key(), request)
    except (api_client.ApiError, httpx.HTTPError) as exc:
        console.print(f"{api}: {exc}", style="red", markup=False)
        raise typer.Exit(2) from exc


def _signing_key(key_id: str | None, secret: str | None) -> SigningKey | None:
    """The key to sign with, from both options or neither.

    The CLI cannot know whether the service requires signed events (the default does), so it
    signs whenever it is given a key and says what an unsigned request risks.
    """
    if key_id and secret:
        return SigningKey(key_id, secret)
    if key_id or secret:
        console.print("[red]give both --signing-key-id and --signing-secret (or "
                      "AIF_SIGNING_KEY_ID and AIF_SIGNING_SECRET)[/red]")
        raise typer.Exit(2)
    console.print("[yellow]unsigned request: a service requiring signed events (the default) "
                  "dead-letters it; give --signing-key-id and --signing-secret (or "
                  "AIF_SIGNING_KEY_ID and AIF_SIGNING_SECRET)[/yellow]")
    return None


def _demo_signing_key(settings: Settings, tenant: str) -> SigningKey:
    """A signing key of the demo's tenant, from the demo's own job store (created there on
    first use): the demo runs beside its service, so it needs no set-up."""
    from sqlalchemy import select

    from aif.db.models import SigningKey as SigningKeyRow
    from aif.db.models import Tenant as TenantRow
    from aif.db.session import session_factory
    from aif.tenants import add_signing_key, create_tenant

    with session_factory(settings.db_url)() as s:
        if s.get(TenantRow, tenant) is None:
            created = create_tenant(s, tenant)
            key = SigningKey(created.signing_key_id, created.signing_secret)
        elif row := s.scalars(select(SigningKeyRow).where(
                SigningKeyRow.tenant == tenant, SigningKeyRow.revoked_at.is_(None))).first():
            key = SigningKey(row.id, row.secret)
        else:
            key = SigningKey(*add_signing_key(s, tenant))
        s.commit()
    return key


def _follow(settings: Settings, tenant: str, job_id: str, api: str | None = None
            ) -> tuple[JobState, list[EventData]]:
    """Show transitions as lines and training as a bar; return the final state and events.
    From the tenant's topics on the bus, or with `api` from the job's HTTP event stream.
    Where the output is no terminal (`make demo | tee log`) a live bar shows nothing until it
    ends, so progress comes as lines there (`ProgressLines`)."""
    def watch_with(show: Callable[[EventData], None]) -> tuple[JobState, list[EventData]]:
        watch = (api_client.follow(api, _api_key(), job_id, show) if api else
                 wait_for_job(settings.kafka, settings.topics, tenant, job_id, show))
        assert watch.final is not None  # wait_for_job returns only after the final status
        return watch.final, watch.events

    if not console.is_terminal:
        return watch_with(ProgressLines(console).show)
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=console) as progress:
        bar = progress.add_task("waiting for the orchestrator", total=None, info="")

        def show(ev: EventData) -> None:
            if isinstance(ev, JobStatusChanged):
                progress.console.print(_status_line(ev))
                progress.update(bar, description=str(ev.state))
            elif isinstance(ev, JobProgress):
                progress.update(bar, description=ev.stage, total=ev.total_steps,
                                completed=ev.step, info=_progress_info(ev))

        return watch_with(show)


def _status_line(ev: JobStatusChanged) -> Text:
    """A state change as one line; the reason is the service's text, never markup."""
    return Text.assemble((str(ev.state), "bold"), f"  {ev.reason}")


PROGRESS_LINE_S = 30.0
"""At most one progress line this often, when the output is no terminal."""


class ProgressLines:
    """What `_follow` shows where the output is no terminal: each state change, and progress
    as lines, flushed as they come: one when a stage starts, one when it reaches its last
    step, and at most one every `every_s` seconds in between."""

    def __init__(self, out: Console, every_s: float = PROGRESS_LINE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.out, self.every_s, self.clock = out, every_s, clock
        self.stage: str | None = None
        self.last = -math.inf

    def show(self, ev: EventData) -> None:
        if isinstance(ev, JobStatusChanged):
            self.out.print(_status_line(ev))
        elif isinstance(ev, JobProgress):
            now = self.clock()
            if (ev.stage != self.stage or ev.step >= ev.total_steps
                    or now - self.last >= self.every_s):
                self.stage, self.last = ev.stage, now
                self.out.print(f"{ev.stage}  {_progress_info(ev)}", markup=False,
                               highlight=False)


def _progress_info(ev: JobProgress) -> str:
    info = f"step {ev.step}/{ev.total_steps}"
    if ev.loss is not None:
        info += f"  loss {ev.loss:.3f}"
    if ev.tokens_per_s:
        info += f"  {ev.tokens_per_s:.0f} tok/s"
    if ev.eta_s is not None:
        info += f"  eta {ev.eta_s:.0f}s"
    return info


def _print_outcome(final: JobState, events: list[EventData]) -> None:
    evaluated = next((e for e in events if isinstance(e, EvaluationCompleted)), None)
    if evaluated:
        table = Table(title="base vs tuned")
        for col in ("task", "metric", "base", "tuned", "delta"):
            table.add_column(col, justify="right" if col in ("base", "tuned", "delta") else "left")
        for s in evaluated.scores:
            table.add_row(s.task, s.metric, f"{s.base:.3f}", f"{s.tuned:.3f}", f"{s.delta:+.3f}")
        console.print(table)
        verdict = "passed" if evaluated.gate.passed else "failed"
        # The gate's reason is the reason of the state change it made, shown as it came.
        told = next((e.state for e in events if isinstance(e, JobStatusChanged)
                     and e.reason == evaluated.gate.reason), None)
        console.print(f"gate: {verdict} (the reason is on the {told} line above)" if told else
                      f"gate: {verdict} - {evaluated.gate.reason}", markup=False)
    ready = next((e for e in events if isinstance(e, ModelReady)), None)
    if ready:
        console.print(f"model ready: {ready.adapter_uri}", markup=False)
    console.print(Text.assemble("job finished: ", (str(final), "bold")))


@app.command()
def up(
    only: Annotated[Part | None, typer.Option(
        help="Run only this part (Kubernetes runs each in Deployments of its own).")] = None,
) -> None:
    """Run the service (broker if needed, orchestrator, web app) until Ctrl-C."""
    from aif.service import Service

    settings = _setup()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with Service(settings, web=only in (None, Part.web),
                 orchestrator=only in (None, Part.orchestrator)) as service:
        console.print(f"aif-tuning is up. Leaderboard: {service.url}  (Ctrl-C to stop)")
        try:
            while not stop.wait(1):
                pass
        except KeyboardInterrupt:
            pass


@app.command()
def submit(
    recipe: Annotated[str, typer.Argument(help="Recipe name, see `aif recipes list`.")],
    tenant: Tenant = "demo",
    max_steps: MaxSteps = None,
    epochs: Epochs = None,
    eval_limit: EvalLimit = None,
    train_file: TrainFile = None,
    dataset: Dataset = None,
    eval_file: EvalFile = None,
    eval_split: EvalSplit = None,
    wait: Annotated[bool, typer.Option(help="Follow the job until it ends.")] = False,
    signing_key_id: SigningKeyId = None,
    signing_secret: SigningSecret = None,
    api: Annotated[str | None, typer.Option(
        help="Base URL of the HTTP API (e.g. http://127.0.0.1:8000) to submit and follow "
             "through, with the key in AIF_API_KEY, instead of Kafka; the tenant is the "
             "key's.")] = None,
) -> None:
    """Publish a fine-tuning request to the running service.

    Signed with the tenant's signing key when given one (`--tenant` must be the key's tenant);
    a service requiring signed events (the default) dead-letters an unsigned request.
    """
    settings = _setup()
    overrides = _overrides(max_steps=max_steps, epochs=epochs, eval_limit=eval_limit)
    if api:
        job_id = _submit_http(api, recipe, overrides, train_file, dataset, eval_file,
                              eval_split)
    else:
        key = _signing_key(signing_key_id, signing_secret)
        job_id = _submit(settings, recipe, tenant, overrides, train_file, dataset,
                         signing_key=key, eval_file=eval_file, eval_split=eval_split)
    console.print(f"submitted job {job_id}")
    if wait:
        final, events = _follow(settings, tenant, job_id, api)
        _print_outcome(final, events)
        raise typer.Exit(0 if final is JobState.succeeded else 1)


@app.command()
def demo(
    recipe: Annotated[str, typer.Option(help="Recipe to run.")] = "grid-ticket-routing",
    max_steps: MaxSteps = None,
    eval_limit: EvalLimit = None,
    serve: Annotated[bool, typer.Option(help="Keep serving the leaderboard afterwards.")] = False,
) -> None:
    """Everything at once on embedded defaults: one request from Kafka to the leaderboard."""
    from aif.service import Service

    settings = _setup()
    started = time.monotonic()
    with Service(settings) as service:
        console.print(f"services up (broker {settings.kafka.bootstrap_servers}, "
                      f"database {settings.db_url}, web {service.url})")
        job_id = _submit(settings, recipe, "demo",
                         _overrides(max_steps=max_steps, eval_limit=eval_limit), None,
                         signing_key=_demo_signing_key(settings, "demo"),
                         labels={PUBLIC_LABEL: "true"})  # shown on the open leaderboard page
        console.print(f"published a fine-tuning request for [bold]{recipe}[/bold]: job {job_id}")
        final, events = _follow(settings, "demo", job_id)
        _print_outcome(final, events)
        console.print(f"wall time {time.monotonic() - started:.0f}s")
        console.print(f"leaderboard: {service.url}"
                      + ("" if serve else "  (run `aif up` to browse it)"))
        _print_sign_in(service.url, "demo", job_id)
        if serve:
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    raise typer.Exit(0 if final is JobState.succeeded else 1)


def _print_sign_in(url: str, tenant: str, job_id: str) -> None:
    """Where the demo's job is, and how to sign in as its tenant: its first API key was
    never shown (the demo made the tenant), so the command that makes another."""
    console.print(f"job page: {url}/jobs/{job_id}", markup=False, soft_wrap=True)
    console.print(f"sign in at {url}/signin as tenant {tenant} with a key from: "
                  f"{_aif()} tenants add-key {tenant}", markup=False, soft_wrap=True)


def _aif() -> str:
    """This program as it was started (`.venv/bin/aif` under `make demo`), else `aif`."""
    return sys.argv[0] if Path(sys.argv[0]).name == "aif" else "aif"


def _recipe(recipe: str) -> Recipe:
    """A recipe by name, or from a YAML file; the name is the user's own, so it is shown."""
    if recipe.endswith((".yaml", ".yml")):
        return load_recipe_file(Path(recipe))
    try:
        return load_recipe(recipe)
    except RecipeError as exc:
        raise RecipeError(f"{recipe}: {exc}") from exc


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


import aif.cli.stages  # noqa: E402, F401  (its commands use the names above)
