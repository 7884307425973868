"""`aif eval` and `aif preflight`: the evaluation and pre-flight stages outside any job.

Both run their stages as the worker does, local launches of the entry points in the table of
stages (`_launch`), and print what the stages write: the shell imports no stage code and so
no torch. `aif eval` launches two: `EVAL_SETUP` (the base model resolved into the model
cache, the gate's evidence planned) and then `EVALUATION`; the gate is the orchestrator's."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aif.cli.common import (
    Dataset,
    EvalFile,
    EvalLimit,
    TrainFile,
    _error,
    _recipe,
    _setup,
    app,
    console,
)
from aif.launchers import stop
from aif.launchers.local import LocalLauncher
from aif.orchestrator.specs import base_score_cache, preflight_spec
from aif.orchestrator.stage_runs import POLL_S
from aif.orchestrator.throughput import throughput
from aif.stages import EVAL_SETUP, EVALUATION, FINAL_EXIT_CODES, PREFLIGHT, Stage
from events.recipe import RecipeError
from stagefiles.jobspec import EVAL_COMMANDS, EvalSetupSpec, EvaluationSpec, StageFailure


@app.command("eval")
def eval_(
    recipe: Annotated[str, typer.Argument(help="Recipe name or YAML file; its eval tasks run.")],
    adapter: Annotated[list[Path] | None, typer.Option(
        help="LoRA adapter directory: scores base and base + adapter, and applies the gate. "
        "Repeat it for several adapters of the same base: the base is loaded once.",
    )] = None,
    base: Annotated[str | None, typer.Option(
        help="Base model (registered name, HF directory, GGUF file, hub id); default: recipe's.",
    )] = None,
    limit: EvalLimit = None,
    eval_file: EvalFile = None,
    output: Annotated[Path | None, typer.Option(
        help="Where lm-eval's results go; default: AIF_HOME/evals/<time>.")] = None,
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Score the base model again (and store that) even if its scores "
        "on these tasks with these settings are cached.")] = False,
) -> None:
    """Evaluate a model, with or without an adapter, outside any job. The base model's
    scores on shipped tasks are kept (AIF_HOME/base_scores) and reused; other tasks belong
    to no tenant here and are always scored."""
    from aif.orchestrator.gate import decide  # numpy and scipy: only for this command

    settings = _setup()
    try:
        r = _recipe(recipe)
        if limit is not None:
            r = r.model_copy(update={"eval": r.eval.model_copy(update={"limit": limit})})
        if eval_file is not None:
            r = r.model_copy(update={"data": r.data.with_eval(str(eval_file.resolve()), None)})
            r = r.gated_on_own_eval()
    except RecipeError as exc:
        _error(str(exc))
        raise typer.Exit(2) from exc
    adapters = [str(a.resolve()) for a in adapter or []]
    for given in adapter or []:
        if not (given / "adapter_config.json").is_file():
            _error(f"--adapter {given}: no adapter_config.json there")
            raise typer.Exit(2)
    with tempfile.TemporaryDirectory() as folder:  # the base model goes to the model cache
        setup_spec = Path(folder) / EVAL_SETUP.spec_file
        EvalSetupSpec(base=base or r.model.base, recipe=r,
                      model_cache_dir=str(settings.models_dir)).write(setup_spec)
        code, failed = _launch(EVAL_SETUP, setup_spec)
        if code != 0:
            _error(failed)
            raise typer.Exit(2 if code in FINAL_EXIT_CODES else 1)
        prepared = EVAL_SETUP.result.read(Path(folder) / EVAL_SETUP.result_file)
    if prepared.gate_noise is not None:  # what the pre-flight would say of these documents
        console.print(f"evidence: {prepared.gate_noise.sentence}", markup=False, soft_wrap=True)
    out = output or settings.home / "evals" / time.strftime("%Y%m%d-%H%M%S")
    spec = EvaluationSpec(job_id=f"eval-{out.name}", base_model_dir=prepared.base_model_dir,
                          adapter_dir=adapters[0] if adapters else None,
                          more_adapter_dirs=adapters[1:], recipe=r,
                          output_dir=str(out.resolve()),
                          base_cache=base_score_cache(settings, None, r, refresh=no_cache))
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / EVALUATION.spec_file  # the evaluation's spec and log stay with it
    spec.write(spec_path)
    with console.status(f"lm-eval on {', '.join(t.name for t in r.eval.tasks)}"):
        code, failed = _launch(EVALUATION, spec_path)
    if code != 0:  # e.g. an adapter for another base model, a broken task YAML
        _error(failed)
        raise typer.Exit(1)
    if not (out / EVALUATION.result_file).is_file():
        console.print("[red]RANK is set and not 0: only the main process reports[/red]")
        raise typer.Exit(1)
    result = EVALUATION.result.read(out / EVALUATION.result_file)
    table = Table(title=f"{r.name}: {base or r.model.base}")
    tuned_sets = [result.tuned, *result.more_tuned] if adapters else []
    for col in ("task", "metric", "base", *(
            "tuned" if len(adapters) == 1 else f"tuned {i + 1}" for i in range(len(adapters))),
            "majority", "macro-F1 base / tuned"):
        table.add_column(col)
    tuned = [{(m.task, m.metric): m for m in got} for got in tuned_sets]
    for m in result.base:
        got = [t.get((m.task, m.metric)) for t in tuned]
        f1 = " / ".join(f"{x.classes.macro_f1:.4f}" for x in (m, *got) if x and x.classes)
        table.add_row(m.task, m.metric, f"{m.value:.4f}",
                      *("" if t is None else f"{t.value:.4f}" for t in got),
                      f"{m.classes.majority:.4f}" if m.classes else "", f1)
    console.print(table)
    if result.base_from_cache:
        console.print(f"base scores of {', '.join(result.base_from_cache)} from the cache "
                      "(--no-cache scores them again)")
    for i, (adapter_dir, got) in enumerate(zip(adapters, tuned_sets, strict=True)):
        _, decision = decide(r, result.model_copy(update={"tuned": got}))
        label = "" if len(adapters) == 1 else f" ({i + 1}: {adapter_dir})"
        console.print(f"gate{label}: {'passed' if decision.passed else 'failed'} - "
                      f"{decision.reason}")
    commands = json.loads((out / EVAL_COMMANDS).read_text())
    console.print(f"results in {out}; the same run with the lm_eval command line:\n"
                  + " ".join(commands["tuned" if adapters else "base"]))


def _launch(stage: Stage, spec_path: Path) -> tuple[int, str]:
    """Run a stage as the worker does, a local launch of `python -m <module> <spec>` (its
    log beside the spec), and wait for it: its exit code and, if not 0, why (its own
    StageFailure, else the end of its log). Ctrl-C stops the stage too."""
    run = LocalLauncher().start(stage.command(spec_path), spec_path.parent / stage.log_file)
    try:
        while (code := run.poll()) is None:
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        stop(run)
        raise
    failure = StageFailure.find(spec_path)
    return code, "" if code == 0 else failure.reason if failure else run.log_tail()


@app.command()
def preflight(
    recipe: Annotated[str, typer.Argument(help="Recipe name or YAML file.")],
    train_file: TrainFile = None,
    dataset: Dataset = None,
    json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """The pre-flight report (rows, tokens, truncation, rendered examples, duplicates, overlap
    with the evaluation data) without submitting; exit 1 when the job would be rejected."""
    settings = _setup()
    try:
        r = _recipe(recipe).with_pii_at_least(settings.pii_policy)
    except RecipeError as exc:
        console.print(str(exc), style="red", markup=False)
        raise typer.Exit(2) from exc
    r = r.model_copy(update={"data": r.data.with_source(train_file, dataset)})
    with tempfile.TemporaryDirectory() as folder:  # redacted copies, if the policy asks
        work = Path(folder)
        spec_path = work / PREFLIGHT.spec_file
        preflight_spec("preflight", "", r, work, settings, throughput(settings, r)).write(
            spec_path)
        code, failed = _launch(PREFLIGHT, spec_path)
        if code != 0:
            console.print(failed, style="red", markup=False)
            raise typer.Exit(2 if code in FINAL_EXIT_CODES else 1)
        report = PREFLIGHT.result.read(work / PREFLIGHT.result_file)
    if json:
        console.print_json(report.model_dump_json())
    else:
        console.print(report.to_text(), markup=False, highlight=False)
    raise typer.Exit(0 if report.usable else 1)
