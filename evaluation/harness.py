"""The lm-eval harness calls: score one model (base, or base plus LoRA adapter) on the
recipe's tasks with lm-eval (`python -m evaluation.run`, the stage's entry point, drives them).

The Python API and `cli_command` must stay in step: a user who reruns the printed command
must get the stored score, which is what makes a published number checkable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from evaluation.baselines import with_sample_figures
from evaluation.tasks import MaterialisedTasks, materialise_tasks
from evaluation.templates import compile_once
from stagefiles.jobspec import EvaluationSpec, TaskMetric

PROBE_PROMPT = "Route the ticket to a team.\nTicket: The power is out on Main Street.\nTeam:"
PROBE_TOLERANCE = 1e-6


class AdapterNotAppliedError(RuntimeError):
    """Base and base+adapter give the same logits: the adapter would be silently ignored."""


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_args(base_model_dir: str, adapter_dir: str | None) -> str:
    """lm-eval `model_args`; float32 on CPU, where half precision is slow and inexact."""
    args = [f"pretrained={base_model_dir}"]
    if adapter_dir is not None:
        args.append(f"peft={adapter_dir}")
    args.append("dtype=float32" if device() == "cpu" else "dtype=auto")
    return ",".join(args)


def check_adapter_applied(base_model_dir: str, adapter_dir: str) -> float:
    """Return the largest logit change the adapter makes; raise if it makes none.

    A LoRA whose target modules or key names do not match the model loads without error in
    some peft versions and evaluates as the base model, reporting a "tuned" score that is not.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(model, adapter_dir).eval()
    return probe_adapter(tuned, tokenizer)


def probe_adapter(tuned: Any, tokenizer: Any, which: str = "the job's adapter") -> float:
    """The probe on a loaded peft model, its active adapter against the adapter disabled;
    `which` names the adapter in the error, never by its folder (a job's reason)."""
    inputs = tokenizer(PROBE_PROMPT, return_tensors="pt").to(tuned.device)
    with torch.no_grad():
        with tuned.disable_adapter():
            base_logits = tuned(**inputs).logits
        tuned_logits = tuned(**inputs).logits
    diff = (tuned_logits - base_logits).abs().max().item()
    if not diff >= PROBE_TOLERANCE:
        raise AdapterNotAppliedError(
            f"ADAPTER NOT APPLIED: {which} changes no logit of its base model "
            f"(max |diff| = {diff:.3g} < {PROBE_TOLERANCE}); its LoRA weights are zero or do "
            "not reach the model, so a 'tuned' score would be the base model's"
        )
    return diff


def evaluate_model(
    spec: EvaluationSpec, adapter_dir: str | None, tasks: MaterialisedTasks | None = None
) -> tuple[list[TaskMetric], dict[str, Any]]:
    """Score base (`adapter_dir` None) or tuned model; keep lm-eval's raw results beside.

    Returns empty results on non-main ranks under `accelerate launch`, where lm-eval
    gathers everything on rank 0.
    """
    if adapter_dir is not None:
        check_adapter_applied(spec.base_model_dir, adapter_dir)
    tasks = tasks or materialise_tasks(spec.recipe.eval, Path(spec.output_dir))
    raw = score(spec, model_args(spec.base_model_dir, adapter_dir), tasks)
    if raw is None:
        return [], {}
    return keep_results(Path(spec.output_dir), "base" if adapter_dir is None else "tuned",
                        raw, spec.recipe.eval.log_samples), raw


def score(spec: EvaluationSpec, model: str | Any, tasks: MaterialisedTasks) -> dict | None:
    """lm-eval's results (JSON-safe, samples included) for `model`: `model_args` or a loaded
    lm-eval model; None on non-main ranks."""
    import lm_eval
    from lm_eval.utils import handle_non_serializable

    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    settings = spec.recipe.eval
    raw = lm_eval.simple_evaluate(
        model=model if not isinstance(model, str) else "hf",
        model_args=model if isinstance(model, str) else None,
        tasks=tasks.names,
        task_manager=_task_manager(tasks),
        num_fewshot=settings.num_fewshot,
        batch_size=settings.batch_size,
        limit=settings.limit,
        device=device(),
        log_samples=True,  # evaluation.baselines reads every document's answer
        apply_chat_template=settings.apply_chat_template,
        fewshot_as_multiturn=settings.apply_chat_template,
        random_seed=settings.seed,
        numpy_random_seed=settings.seed,
        torch_random_seed=settings.seed,
        fewshot_random_seed=settings.seed,
    )
    if raw is None:
        return None
    return json.loads(json.dumps(raw, default=handle_non_serializable))


def keep_results(output_dir: Path, model: str, raw: dict[str, Any], log_samples: bool
                 ) -> list[TaskMetric]:
    """Write `lm_eval_<model>.json` (and, with `log_samples`, its samples beside) and return
    its metrics with the class statistics and per-document outcomes read from every
    document's row."""
    output_dir.mkdir(parents=True, exist_ok=True)
    raw = dict(raw)
    samples = raw.pop("samples", None) or {}
    if log_samples:  # per task, one line per document, beside the results
        with (output_dir / f"samples_{model}.jsonl").open("w") as fh:
            for task, rows in samples.items():
                for row in rows:
                    fh.write(json.dumps({"task": task, **row}) + "\n")
    (output_dir / f"lm_eval_{model}.json").write_text(json.dumps(raw, indent=2))
    return with_sample_figures(extract_metrics(raw), samples)


def _task_manager(tasks: MaterialisedTasks) -> Any:
    """Index lm-eval's thousands of built-in tasks (about 9 s) only when the recipe uses one;
    the tasks' templates compiled once, not for every document (`evaluation.templates`)."""
    from lm_eval.tasks import TaskManager

    compile_once()
    return TaskManager(
        include_path=str(tasks.include_dir) if tasks.include_dir else None,
        include_defaults=set(tasks.names) != set(tasks.sha256),
        metadata={},
    )


def extract_metrics(raw: dict[str, Any]) -> list[TaskMetric]:
    """Every `metric,filter` value of every task with its stderr; `,none` is dropped."""
    metrics = []
    for task, values in raw["results"].items():
        for key, value in values.items():
            if "," not in key or "_stderr," in key or not isinstance(value, int | float):
                continue
            metric, filter_name = key.split(",", 1)
            stderr = values.get(f"{metric}_stderr,{filter_name}")
            metrics.append(
                TaskMetric(
                    task=task,
                    metric=metric if filter_name == "none" else key,
                    value=float(value),
                    stderr=float(stderr) if isinstance(stderr, int | float) else None,
                    num_fewshot=raw.get("n-shot", {}).get(task, 0),
                    samples=_samples(raw, task),
                )
            )
    return metrics


def _samples(raw: dict[str, Any], task: str) -> int:
    """Documents scored; a group's count is the sum of its subtasks'."""
    counts = raw.get("n-samples", {})
    if task in counts:
        return int(counts[task]["effective"])
    return sum(_samples(raw, sub) for sub in raw.get("group_subtasks", {}).get(task, []))


def cli_command(spec: EvaluationSpec, adapter_dir: str | None, output_path: Path) -> list[str]:
    """The `lm_eval` invocation with the same settings as `evaluate_model`.

    Task YAMLs are materialised under `output_path/tasks` so the command is self-contained.
    """
    tasks = materialise_tasks(spec.recipe.eval, output_path)
    settings = spec.recipe.eval
    executable = Path(sys.executable).with_name("lm_eval")
    command = [
        str(executable) if executable.exists() else "lm_eval",
        "run",
        "--model", "hf",
        "--model_args", model_args(spec.base_model_dir, adapter_dir),
        "--tasks", ",".join(tasks.names),
        "--num_fewshot", str(settings.num_fewshot),
        "--batch_size", str(settings.batch_size),
        "--device", device(),
        "--seed", ",".join([str(settings.seed)] * 4),
        "--output_path", str(output_path),
    ]  # fmt: skip
    if tasks.include_dir is not None:
        command += ["--include_path", str(tasks.include_dir)]
    if settings.limit is not None:
        command += ["--limit", str(settings.limit)]
    if settings.apply_chat_template:
        command.append("--apply_chat_template")
    if settings.log_samples:
        command.append("--log_samples")
    return command
