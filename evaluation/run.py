"""Worker entrypoint: `python -m evaluation.run /path/evaluation_spec.json`.

The orchestrator only reads files, so every outcome must end in `evaluation_result.json`
or a non-zero exit with the reason on stderr; progress goes to `progress.jsonl` as it
happens. Under `accelerate launch` only rank 0 writes.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
import time
from pathlib import Path

from evaluation.adapters import evaluate_adapters, result_name
from evaluation.base_cache import evaluate_base
from evaluation.harness import AdapterNotAppliedError, cli_command, evaluate_model
from evaluation.tasks import materialise_tasks
from stagefiles.jobspec import (
    EVAL_COMMANDS,
    EVALUATION_FAILURE,
    EVALUATION_RESULT,
    PROGRESS_LOG,
    EvaluationResult,
    EvaluationSpec,
    FailureKind,
    ProgressLine,
    StageFailure,
    TaskMetric,
    record_failure,
)
from stagefiles.tasks import TaskConfigError


def run(spec: EvaluationSpec) -> EvaluationResult | None:
    """Score base then tuned (each adapter); return None on non-main ranks, which write
    nothing. With one folder per adapter (`more_output_dirs`) each folder gets what a
    one-adapter run of its adapter writes (see `_keep_apart`); an adapter that failed its
    probe has empty metrics in the returned result."""
    started = time.monotonic()
    output_dir = Path(spec.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    apart = spec.output_dirs()
    for folder in apart or [output_dir]:  # what an earlier run found is not this run's
        folder.mkdir(parents=True, exist_ok=True)
        (folder / EVALUATION_FAILURE).unlink(missing_ok=True)
    is_main = int(os.environ.get("RANK", "0")) == 0
    tasks = materialise_tasks(spec.recipe.eval, output_dir)
    adapters = [] if spec.adapter_dir is None else [spec.adapter_dir, *spec.more_adapter_dirs]
    total = 1 + len(adapters)

    def progress(step: int) -> None:
        if is_main:
            line = ProgressLine(stage="evaluation", step=step, total_steps=total)
            for folder in apart or [output_dir]:  # each job follows its own file
                with (folder / PROGRESS_LOG).open("a") as log:
                    log.write(line.model_dump_json() + "\n")

    if spec.base_cache is not None:
        base, cached = evaluate_base(spec, spec.base_cache, tasks)
    else:
        (base, _), cached = evaluate_model(spec, None, tasks), []
    progress(1)
    scored: list[list[TaskMetric] | AdapterNotAppliedError]
    if len(adapters) > 1:  # one base load for all of them
        scored = evaluate_adapters(spec, adapters, tasks)
        progress(total)
    else:
        scored = [evaluate_model(spec, a, tasks)[0] for a in adapters]
        if adapters:
            progress(total)
    if not is_main:
        return None
    tuned = [[] if isinstance(s, AdapterNotAppliedError) else s for s in scored]
    result = EvaluationResult(
        base=base,
        tuned=tuned[0] if tuned else [],
        more_tuned=tuned[1:],
        lm_eval_version=importlib.metadata.version("lm_eval"),
        task_config_sha256=tasks.sha256,
        wall_s=time.monotonic() - started,
        base_from_cache=cached,
    )
    if apart:
        _keep_apart(spec, result, scored, adapters)
        return result
    result.write(output_dir / EVALUATION_RESULT)
    # The pages show how to rerun each score by hand; only this stage may import lm-eval's
    # side of things, so it writes the command lines down.
    commands = {"base": cli_command(spec, None, output_dir)} | {
        result_name(i): cli_command(spec, a, output_dir) for i, a in enumerate(adapters)}
    (output_dir / EVAL_COMMANDS).write_text(json.dumps(commands, indent=2))
    return result


def _keep_apart(spec: EvaluationSpec, result: EvaluationResult,
                scored: list[list[TaskMetric] | AdapterNotAppliedError],
                adapters: list[str]) -> None:
    """Give each adapter's folder its own result (the shared base, its own tuned scores),
    the base's files, its task YAMLs and commands, or EVALUATION_FAILURE naming why not."""
    base_dir = Path(spec.output_dir)
    for folder, adapter, outcome in zip(spec.output_dirs(), adapters, scored, strict=True):
        if isinstance(outcome, AdapterNotAppliedError):
            StageFailure(kind=FailureKind.final, reason=f"evaluation failed: "
                         f"{type(outcome).__name__}: {outcome}").write(folder / EVALUATION_FAILURE)
            continue
        if folder != base_dir:  # its task YAMLs are written by `cli_command`
            for name in ("lm_eval_base.json", "samples_base.jsonl"):
                if (base_dir / name).is_file():
                    shutil.copyfile(base_dir / name, folder / name)
        result.model_copy(update={"tuned": outcome, "more_tuned": []}).write(
            folder / EVALUATION_RESULT)
        commands = {"base": cli_command(spec, None, folder),
                    "tuned": cli_command(spec, adapter, folder)}
        (folder / EVAL_COMMANDS).write_text(json.dumps(commands, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.run", description=__doc__)
    parser.add_argument("spec", type=Path, help=f"path to {EvaluationSpec.__name__} JSON")
    args = parser.parse_args(argv)
    kind = FailureKind.final
    try:
        run(EvaluationSpec.read(args.spec))
    except (AdapterNotAppliedError, TaskConfigError) as exc:  # ours: they name no data
        reason = f"evaluation failed: {type(exc).__name__}: {exc}"
    except OSError as exc:  # a full disk, a lost mount: not the request's fault
        kind = FailureKind.retryable
        reason = f"evaluation failed: {type(exc).__name__}: {exc.strerror or 'I/O error'}"
    except Exception as exc:  # the contract is a reason and an exit code, never a trace
        # lm-eval's and pydantic's messages may quote documents, so only the class is kept.
        reason = f"evaluation failed: {type(exc).__name__}"
    else:
        return 0
    print(reason, file=sys.stderr)
    record_failure(args.spec, kind, reason)
    return 1


if __name__ == "__main__":
    sys.exit(main())
