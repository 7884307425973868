"""`python -m serving.check SERVING_CHECK_SPEC_JSON`: can a server load this adapter?

Three checks, cheapest first:
1. the adapter's own config against the site's serving limits (rank, targets,
   `modules_to_save`, DoRA), as vLLM checks them, so a refusal costs no model load;
2. plain transformers + peft load the adapter on the base model and re-score the primary
   task's first documents with lm-eval's own task file (the one the evaluation stage wrote);
   the score must match the stored one. lm-eval is given the peft model object, so this
   is a second, independent loading path from the evaluation stage's `peft=` argument;
   log-likelihood scoring is deterministic, so a server-side fault shows as a different
   score, not as noise;
3. the greedy completions of the probe prompts are recorded: what a server must answer.

Exit codes: 0 compatible, 2 refused (the result's reason is in the failure file),
1 infrastructure.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from events.messages import AdapterShape
from stagefiles.checksums import sha256_file
from stagefiles.jobspec import (
    SERVING_CHECK_RESULT,
    VLLM_LORA_RANKS,
    FailureKind,
    ServingCheckResult,
    ServingCheckSpec,
    ServingLimits,
    record_failure,
)

EXIT_REFUSED = 2
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja")


class Refused(Exception):
    """The adapter cannot be served under the site's limits, or does not behave as scored."""


def adapter_config(adapter_dir: Path) -> dict:
    return json.loads((adapter_dir / "adapter_config.json").read_text())


def min_max_lora_rank(r: int) -> int:
    """The smallest `--max-lora-rank` vLLM accepts that holds rank `r`."""
    return next((v for v in VLLM_LORA_RANKS if v >= r), r)


def check_limits(config: dict, limits: ServingLimits) -> None:
    """Raise Refused naming the field, its value and the limit; vLLM's own rules."""
    if config.get("peft_type") != "LORA":
        raise Refused(f"adapter_config.peft_type: {config.get('peft_type')!r} is not LORA")
    if config["r"] > limits.max_lora_rank:
        raise Refused(f"adapter_config.r: {config['r']} is above the servers' max_lora_rank "
                      f"{limits.max_lora_rank} (AIF_SERVING_LIMITS__MAX_LORA_RANK)")
    if config.get("modules_to_save") and not limits.allow_modules_to_save:
        raise Refused(f"adapter_config.modules_to_save: {sorted(config['modules_to_save'])} "
                      "is not loadable by the servers (vLLM refuses modules_to_save)")
    if config.get("use_dora") and not limits.allow_dora:
        raise Refused("adapter_config.use_dora: true is not loadable by the servers")
    allowed = limits.allowed_target_modules
    targets = _targets(config)
    if allowed is not None and not set(targets) <= set(allowed):
        raise Refused(f"adapter_config.target_modules: {sorted(set(targets) - set(allowed))} "
                      f"not among the servers' {sorted(allowed)}")


def _targets(config: dict) -> list[str]:
    targets = config.get("target_modules") or []
    return [targets] if isinstance(targets, str) else sorted(targets)


def tree_sha256(directory: Path, names: tuple[str, ...] | None = None) -> str:
    """sha256 over `name  digest` lines of the folder's files (or only `names`)."""
    files = sorted(p for p in directory.rglob("*") if p.is_file()) if names is None else [
        directory / n for n in names if (directory / n).is_file()]
    lines = "".join(f"{p.relative_to(directory)}  {sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def rescore(spec: ServingCheckSpec, model: object, tokenizer: object) -> float:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    settings, task = spec.recipe.eval, spec.recipe.gate.task
    include = Path(spec.evaluation_dir) / "tasks"
    manager = TaskManager(include_path=str(include) if include.is_dir() else None,
                          include_defaults=not (include / f"{task}.yaml").is_file(), metadata={})
    raw = lm_eval.simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size),
        tasks=[task], task_manager=manager, num_fewshot=settings.num_fewshot,
        limit=spec.sample_docs, apply_chat_template=settings.apply_chat_template,
        fewshot_as_multiturn=settings.apply_chat_template, random_seed=settings.seed,
        numpy_random_seed=settings.seed, torch_random_seed=settings.seed,
        fewshot_random_seed=settings.seed)
    return float(raw["results"][task][f"{spec.metric},none"])


def greedy(model: object, tokenizer: object, prompts: list[str], max_new_tokens: int
           ) -> dict[str, str]:
    import torch

    out = {}
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
        out[prompt] = tokenizer.decode(generated[0, ids["input_ids"].shape[1]:],
                                       skip_special_tokens=True)
    return out


def main(spec_path: Path) -> int:
    spec = ServingCheckSpec.read(spec_path)
    adapter_dir, base_dir = Path(spec.adapter_dir), Path(spec.base_model_dir)
    config = adapter_config(adapter_dir)
    check_limits(config, spec.limits)

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    rescored = rescore(spec, model, tokenizer)
    if abs(rescored - spec.stored_score) > spec.tolerance:
        raise Refused(f"{spec.recipe.gate.task} {spec.metric}: plain peft scores "
                      f"{rescored:.4f} on {spec.sample_docs} documents, the evaluation stored "
                      f"{spec.stored_score:.4f}")
    ServingCheckResult(
        adapter=AdapterShape(
            peft_type=config["peft_type"], r=config["r"], lora_alpha=config["lora_alpha"],
            target_modules=_targets(config), use_dora=bool(config.get("use_dora")),
            modules_to_save=sorted(config.get("modules_to_save") or []),
            dtype=str(getattr(base.config, "torch_dtype", "float32") or "float32"
                      ).removeprefix("torch."),
            min_max_lora_rank=min_max_lora_rank(config["r"])),
        base_revision=tree_sha256(base_dir), tokenizer_sha256=tree_sha256(base_dir,
                                                                           TOKENIZER_FILES),
        rescored=rescored, sample_docs=spec.sample_docs,
        greedy=greedy(model, tokenizer, spec.probe_prompts, spec.max_new_tokens),
    ).write(spec_path.parent / SERVING_CHECK_RESULT)
    return 0


def _cli(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m serving.check SERVING_CHECK_SPEC_JSON", file=sys.stderr)
        return EXIT_REFUSED
    spec_path = Path(argv[0])
    try:
        return main(spec_path)
    except Refused as exc:
        kind, reason, code = FailureKind.final, f"serving check: {exc}", EXIT_REFUSED
    except (KeyError, ValueError) as exc:  # a broken adapter_config.json or spec
        kind, code = FailureKind.final, EXIT_REFUSED
        reason = f"serving check: the adapter or spec cannot be read ({type(exc).__name__})"
    except OSError as exc:
        kind, code = FailureKind.retryable, 1
        reason = f"serving check: {type(exc).__name__}: {exc.strerror or 'I/O error'}"
    record_failure(spec_path, kind, reason)
    print(reason, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
