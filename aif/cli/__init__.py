"""The `aif` command line: run the service, submit and follow jobs; the other commands
register from their own modules (recipes, tenants, models, audit, eval and preflight)."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer
from pydantic import ValidationError

from aif.cli.audit import audit_command
from aif.cli.common import (
    Dataset,
    Epochs,
    EvalFile,
    EvalLimit,
    EvalSplit,
    InitFrom,
    MaxSteps,
    Part,
    SigningKeyId,
    SigningSecret,
    Tenant,
    TrainFile,
    _api_key,
    _error,
    _setup,
    app,
    console,
)
from aif.cli.following import _follow, _print_outcome
from aif.cli.models import models_app
from aif.cli.recipes import recipes_app
from aif.cli.tenants import tenants_app
from aif.settings import Settings
from aif.web import client as api_client
from events.bus import make_producer, publish
from events.client import finetune_request
from events.envelope import describe_validation_error, job_id_for
from events.messages import PUBLIC_LABEL, FineTuneRequested
from events.recipe import HyperparameterOverrides, RecipeError
from events.signing import SigningKey
from events.states import JobState
from recipes import shipped_name

app.add_typer(recipes_app, name="recipes")
app.add_typer(tenants_app, name="tenants")
app.add_typer(models_app, name="models")
app.command("audit")(audit_command)


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
    init_from: InitFrom = None,
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
    overrides = _overrides(max_steps=max_steps, epochs=epochs, eval_limit=eval_limit,
                           init_from=init_from)
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
    recipe: Annotated[str, typer.Option(
        help="Recipe to run: its name or its folder, e.g. public_sector/citizen_reply_de_dpo "
             "(DPO).")] = "grid-ticket-routing",
    max_steps: MaxSteps = None,
    eval_limit: EvalLimit = None,
    serve: Annotated[bool, typer.Option(help="Keep serving the leaderboard afterwards.")] = False,
) -> None:
    """Everything at once on embedded defaults: one request from Kafka to the leaderboard."""
    from aif.service import Service

    try:  # before anything starts: a misspelt recipe costs no broker and no database
        recipe = shipped_name(recipe)
    except RecipeError as exc:
        _error(f"--recipe: {exc}")
        raise typer.Exit(2) from exc
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


from aif.cli import stage_commands  # noqa: E402, F401  (registers `aif eval`, `aif preflight` last)
