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

Evaluation: the trained LoRA model, in eval mode without gradients, scores a batch the way a
loglikelihood task does (log-softmax of the logits, the targets' log-probabilities summed
per row); it measures that forward pass only, not lm-eval's request handling.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.roofline import TokenMix, flops_per_token
from events.recipe_train import LoraSection
from finetune.save import peak_memory
from stagefiles.compute import training_flops

# Dense bf16 peak TFLOP/s by a substring of torch.cuda.get_device_name(); first match wins.
PEAK_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIE"), 756.0),
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
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes not installed"
    if device.type != "cuda":
        return "needs a CUDA GPU"
    return None


def run_cases(args: argparse.Namespace, report: Callable[[dict], None]) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops if args.peak_tflops else (
        peak_tflops(name) if device.type == "cuda" else None)
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cases: list[dict] = []

    def add(case: dict) -> None:
        case = {"device": name, "peak_tflops": peak, **case}
        cases.append(case)
        report(case)

    for shape in shapes(args.dry):
        config = shape.config
        _reset_peak(device)
        model = _lora(_base(config, device, dtype))
        n_params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
        run = _train(model, config, args, device, generator)
        add({"case": f"lora-bf16-{shape.name}" if device.type == "cuda"
             else f"lora-fp32-{shape.name}", "status": "measured",
             **_figures(run, config, args, n_params, peak), "peak_memory_mb": peak_memory()})
        _reset_peak(device)
        run = _evaluate(model, config, args, device, generator)
        add({"case": f"eval-{shape.name}", "status": "measured", **run,
             "peak_memory_mb": peak_memory()})
        del model
        _free(device)

        reason = _qlora_unavailable(device)
        if reason:
            add({"case": f"qlora-nf4-{shape.name}", "status": f"skipped: {reason}"})
            continue
        base = _base(config, device, torch.bfloat16)
        _quantize_nf4(base)
        _free(device)
        _reset_peak(device)
        model = _lora(base)
        run = _train(model, config, args, device, generator)
        add({"case": f"qlora-nf4-{shape.name}", "status": "measured",
             **_figures(run, config, args, n_params, peak), "peak_memory_mb": peak_memory()})
        del model, base
        _free(device)
    return cases


def line(case: dict) -> str:
    head = f"{case['case']:<16} {case['device']}"
    if case["status"] != "measured":
        return f"{head}: {case['status']}"
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
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the card's dense bf16 peak, if it is not in the built-in table")
    args = parser.parse_args(argv)
    defaults = ({"steps": 2, "warmup": 1, "batch_size": 2, "eval_batch_size": 2, "seq_len": 32}
                if args.dry else
                {"steps": 10, "warmup": 3, "batch_size": 2, "eval_batch_size": 8, "seq_len": 2048})
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
        elif getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    cases = run_cases(args, lambda case: print(line(case), flush=True))
    result = {"dry": args.dry, "seq_len": args.seq_len, "batch_size": args.batch_size,
              "eval_batch_size": args.eval_batch_size, "steps": args.steps,
              "warmup": args.warmup, "flop_rule": "benchmarks.roofline.flops_per_token",
              "torch": torch.__version__, "wall_s": time.perf_counter() - started,
              "cases": cases}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out} ({result['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
