"""The markdown table of docs/benchmarks.md, from the JSON the benchmarks wrote.

    .venv/bin/python -m benchmarks.report    # prints it; paste it under "Figures"
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.machine import RESULTS

ROW = "| {what} | {figure} | {target} | {where} |"


def _where(result: dict[str, Any]) -> str:
    m, load = result["machine"], result["load_average_before"]
    after = result["load_average_after"]
    return (f"{m['cores']}-core {m['cpu']}, torch {m['torch']}; load {load[0]:.1f} before, "
            f"{after[0]:.1f} after; `{result['command']}` ({result['date']})")


def _train(result: dict[str, Any]) -> list[str]:
    rows = []
    for name, got in result["datasets"].items():
        packed = got["variants"]["recipe trainer, packed"]
        plain = got["variants"]["HF Trainer, pad to longest"]
        variable = name == "variable-length"
        matmuls = "bf16" if got.get("precision") == "bf16" else "fp32"
        rows.append(ROW.format(
            what=f"training, {name} ({got['steps']} steps x {got['batch_size']}, {matmuls} "
                 "matmuls)",
            figure=f"{got['packed_vs_plain_longest']:.2f}x tokens/s ({packed['tokens_per_s']:.0f}"
                   f" vs {plain['tokens_per_s']:.0f}); peak memory {got['peak_memory_ratio']:.2f}x"
                   f" ({packed['peak_memory_mb']:.0f} vs {plain['peak_memory_mb']:.0f} MiB)",
            target="2x, no more memory" if variable else "1.5x", where=_where(result)))
        rows.append(ROW.format(
            what=f"training FLOP/s, {name} ({matmuls} matmuls)",
            figure=f"{got['roofline_fraction']:.0%} of the matmul roofline "
                   f"({got['achieved_flops_per_s'] / 1e9:.1f} of "
                   f"{got['matmul_roofline_flops_per_s'] / 1e9:.1f} GFLOP/s)",
            target=">= 35% (60%)" if variable else ">= 45% (60%)", where=_where(result)))
    return rows


def _eval(result: dict[str, Any]) -> list[str]:
    return [ROW.format(
        what=f"evaluation per job, warm base cache (limit {result['limit']})",
        figure=f"{result['ratio']:.2f}x the lm_eval command line on base and tuned "
               f"({result['stage_warm_cache_s']:.1f} vs {result['cli_base_and_tuned_s']:.1f} s);"
               f" scores identical: {'yes' if result['scores_identical'] else 'NO'}",
        target="<= 0.55x", where=_where(result))]


def _start(result: dict[str, Any]) -> list[str]:
    total, queued = result["total_s"], result["to_queued_s"]
    return [ROW.format(
        what=f"accepted -> training started ({result['requests']} requests, local launcher)",
        figure=f"p50 {total['p50']:.1f} s, p95 {total['p95']:.1f} s (first, cold cache "
               f"{total['first']:.1f} s); pre-flight until queued p50 {queued['p50']:.1f} s "
               f"({result['preflight_share_of_p50']:.0%})",
        target="p50 < 5 s", where=_where(result))]


def _with_reference(result: dict[str, Any]) -> str:
    """DPO's ratio with its once-per-pair reference pass counted in, where measured."""
    if "dpo_with_reference_vs_sft" not in result:
        return ""
    return (f"; DPO with its reference pass ({result['variants']['dpo']['reference_s']:.0f} s, "
            f"one epoch) {result['dpo_with_reference_vs_sft']:.2f}x")


def _preference(result: dict[str, Any]) -> list[str]:
    v = result["variants"]
    batches = "packed" if result.get("packing", True) else "padded"
    return [ROW.format(
        what=f"preference training, {result['recipe']} ({result['steps']} steps x "
             f"{result['batch_size']} pairs, {batches})",
        figure=f"DPO {result['dpo_tokens_per_s_vs_sft']:.2f}x SFT's tokens/s on the same rows "
               f"({v['dpo']['tokens_per_s']:.0f} vs {v['sft']['tokens_per_s']:.0f}), ORPO "
               f"{result['orpo_tokens_per_s_vs_sft']:.2f}x{_with_reference(result)}; "
               "peak memory DPO "
               f"{v['dpo']['peak_memory_mb']:.0f}, SFT {v['sft']['peak_memory_mb']:.0f} MiB",
        target="DPO >= 0.8x", where=_where(result))]


def main() -> None:
    print("| what | figure | target | machine, load, command |")
    print("|---|---|---|---|")
    for name, render in (("train_throughput_fp32", _train), ("train_throughput_bf16", _train),
                         ("eval_overhead", _eval),
                         ("start_latency", _start), ("preference_throughput", _preference),
                         ("preference_throughput_padded", _preference)):
        path = RESULTS / f"{name}.json"
        if path.is_file():
            print("\n".join(render(json.loads(path.read_text()))))


if __name__ == "__main__":
    main()
