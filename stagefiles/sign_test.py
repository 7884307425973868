"""The one-sided exact sign (McNemar) test, one home for the gate that applies it
(`aif.orchestrator.gate`) and the pre-flight check of whether it can ever pass
(`finetune.gate_noise`)."""

from __future__ import annotations

import math


def sign_test(wins: int, losses: int) -> float:
    """One-sided exact McNemar: the chance of at least `wins` of the `wins + losses`
    discordant documents favouring one side if each favoured either with probability 1/2;
    1 without discordant documents (nothing tells the two apart). Exact in integers, then
    one division."""
    n = wins + losses
    return sum(math.comb(n, i) for i in range(wins, n + 1)) / 2**n
