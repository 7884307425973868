"""Several adapters of one base model scored with one base load.

Loading the base (and lm-eval's model wrapper around it) is a fixed cost per model scored;
with N adapters of the same base it is paid once: the adapters are loaded side by side
with peft's multi-adapter API and switched with `set_adapter`. The model lm-eval scores is
the same PeftModel over the same weights, dtype and tokenizer as `model_args(..., peft=...)`
builds, so each adapter's scores equal a separate run's (tests/evaluation/test_multi_adapter.py).
With one output folder per adapter (the orchestrator's batches of jobs), each adapter's files
are named as a one-adapter run names them, and an adapter that fails its probe is reported
in place of its scores, so the other adapters' jobs are not failed with it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evaluation.harness import AdapterNotAppliedError, device, keep_results, probe_adapter, score
from evaluation.tasks import MaterialisedTasks
from stagefiles.jobspec import EvaluationSpec, TaskMetric


def result_name(index: int) -> str:
    """`tuned` for the first adapter (as a one-adapter job), `tuned-2`, ... after it."""
    return "tuned" if index == 0 else f"tuned-{index + 1}"


def evaluate_adapters(spec: EvaluationSpec, adapter_dirs: list[str], tasks: MaterialisedTasks
                      ) -> list[list[TaskMetric] | AdapterNotAppliedError]:
    """Each adapter's metrics, in order; each probed before it is scored. Empty lists on
    non-main ranks. A failed probe raises, unless the spec keeps each adapter's output apart:
    then that adapter's place holds the error."""
    from lm_eval.models.huggingface import HFLM
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.float32 if device() == "cpu" else "auto"  # as `model_args` asks lm-eval
    base = AutoModelForCausalLM.from_pretrained(spec.base_model_dir, dtype=dtype)
    base = base.to(device()).eval()
    names = [f"adapter-{i}" for i in range(len(adapter_dirs))]
    tuned = PeftModel.from_pretrained(base, adapter_dirs[0], adapter_name=names[0])
    for name, adapter_dir in zip(names[1:], adapter_dirs[1:], strict=True):
        tuned.load_adapter(adapter_dir, adapter_name=name)
    tuned.eval()
    tokenizer = AutoTokenizer.from_pretrained(spec.base_model_dir)
    model = HFLM(pretrained=tuned, tokenizer=spec.base_model_dir,
                 batch_size=spec.recipe.eval.batch_size)
    apart = spec.output_dirs()
    scored: list[list[TaskMetric] | AdapterNotAppliedError] = []
    for index, name in enumerate(names):
        tuned.set_adapter(name)
        try:
            probe_adapter(tuned, tokenizer, which=f"adapter {index + 1} of {len(names)}"
                          if not apart and len(names) > 1 else "the job's adapter")
        except AdapterNotAppliedError as exc:
            if not apart:
                raise
            scored.append(exc)
            continue
        raw = score(spec, model, tasks)
        folder, kept_as = ((apart[index], "tuned") if apart else
                           (Path(spec.output_dir), result_name(index)))
        scored.append([] if raw is None else
                      keep_results(folder, kept_as, raw, spec.recipe.eval.log_samples))
    return scored
