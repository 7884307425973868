"""Paired tests of tuned against another scorer on the same documents.

Base and tuned (and the constant majority answer) are scored on the same documents, so most
of the variance of each accuracy is shared: the documents that are easy or hard for both.
Treating the two accuracies as independent samples counts that shared variance twice and
rejects real gains. What tells models apart are the discordant documents, those only one of
them got right: under "no difference" each is equally likely to favour either side, so the
count favouring tuned is Binomial(discordant, 1/2) (the exact McNemar, or sign, test).

The interval of the difference is a paired bootstrap over documents. Resampling n documents
with replacement only changes how many of them are of each kind (only tuned right, only the
other right, concordant), which is one multinomial draw with the observed shares, so 10,000
resamples are one vectorised call whatever n is; seeded, so the same counts always give the
same interval. With few discordant documents the percentile interval is too narrow: the
decision rests on the exact p-value, the interval only describes the size of the effect.
"""

from __future__ import annotations

import numpy as np

from events.messages import PairedComparison
from stagefiles.jobspec import DocOutcomes
from stagefiles.sign_test import sign_test

RESAMPLES = 10_000
SEED = 25
CONFIDENCE = 0.95


def compare(tuned: DocOutcomes, other: DocOutcomes) -> PairedComparison | None:
    """Tuned against `other` on the documents both scored, paired by doc_id; None if they
    share none."""
    tuned_right, other_right = set(tuned.right), set(other.right)
    docs = (tuned_right | set(tuned.wrong)) & (other_right | set(other.wrong))
    if not docs:
        return None
    only_tuned = len(docs & tuned_right - other_right)
    only_other = len(docs & other_right - tuned_right)
    low, high = bootstrap_interval(only_tuned, only_other, len(docs))
    return PairedComparison(
        documents=len(docs), diff=(only_tuned - only_other) / len(docs), ci_low=low,
        ci_high=high, only_tuned_right=only_tuned, only_other_right=only_other,
        p_value=sign_test(only_tuned, only_other),
    )


def bootstrap_interval(only_tuned: int, only_other: int, documents: int
                       ) -> tuple[float, float]:
    """Percentile interval of the paired difference over `RESAMPLES` bootstrap resamples of
    the documents, drawn as counts of each kind (see the module's docstring)."""
    shares = np.array([only_tuned, only_other, documents - only_tuned - only_other]) / documents
    counts = np.random.default_rng(SEED).multinomial(documents, shares, size=RESAMPLES)
    diffs = (counts[:, 0] - counts[:, 1]) / documents
    low, high = np.quantile(diffs, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return float(low), float(high)


def above_rate(right: int, documents: int, rate: float) -> float:
    """One-sided exact binomial test of `right` of `documents` against guessing with
    success probability `rate`. Where each document has its own rate (1/choices), their
    mean is used: the true count then varies less than this binomial, so the p-value is
    conservative."""
    from scipy.stats import binomtest  # here: scipy.stats costs every `aif` process ~2 s

    return float(binomtest(right, documents, rate, alternative="greater").pvalue)
