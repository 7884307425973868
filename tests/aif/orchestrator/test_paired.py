"""The gate's paired statistics against hand computations: the exact sign test, the one-sample
binomial test, the seeded paired bootstrap and the pairing by doc_id."""

from __future__ import annotations

from math import comb, sqrt

import pytest

from aif.orchestrator.paired import above_rate, bootstrap_interval, compare
from stagefiles.jobspec import DocOutcomes
from stagefiles.sign_test import sign_test


@pytest.mark.parametrize(("wins", "losses", "expected"), [
    (10, 0, 0.5**10),
    (5, 3, sum(comb(8, k) for k in range(5, 9)) / 2**8),  # 93/256
    (3, 5, sum(comb(8, k) for k in range(3, 9)) / 2**8),
    (0, 0, 1.0),  # no discordant document: nothing tells the two apart
])
def test_sign_test_is_the_exact_one_sided_binomial(wins: int, losses: int,
                                                   expected: float) -> None:
    assert sign_test(wins, losses) == pytest.approx(expected, rel=1e-12)


def test_above_rate_is_the_exact_one_sided_binomial() -> None:
    expected = sum(comb(100, k) * 0.4**k * 0.6 ** (100 - k) for k in range(45, 101))
    assert above_rate(45, 100, 0.4) == pytest.approx(expected, rel=1e-9)
    assert above_rate(3, 3, 0.5) == pytest.approx(0.125)


def test_bootstrap_is_seeded_and_near_the_normal_interval() -> None:
    low, high = bootstrap_interval(118, 3, 200)
    assert (low, high) == bootstrap_interval(118, 3, 200)
    diff = 115 / 200
    se = sqrt((121 / 200 - diff**2) / 200)  # of a mean of per-document differences
    assert low == pytest.approx(diff - 1.96 * se, abs=0.01)
    assert high == pytest.approx(diff + 1.96 * se, abs=0.01)
    assert bootstrap_interval(0, 0, 50) == (0.0, 0.0)
    assert bootstrap_interval(10, 0, 10) == (1.0, 1.0)


def test_compare_pairs_by_doc_id_whatever_the_order() -> None:
    """By position the lists below would pair doc 3 with doc 0; by doc_id tuned is right on
    0 and 3 where the other is wrong, and wrong on 1 where the other is right."""
    tuned = DocOutcomes(right=[3, 0, 2], wrong=[1])
    other = DocOutcomes(right=[2, 1], wrong=[3, 0])
    paired = compare(tuned, other)
    assert paired is not None
    assert (paired.documents, paired.only_tuned_right, paired.only_other_right) == (4, 2, 1)
    assert paired.diff == pytest.approx(1 / 4)
    assert paired.p_value == pytest.approx(sign_test(2, 1))
    assert compare(tuned, other) == paired  # seeded: the same interval every time
    assert compare(tuned, DocOutcomes(right=[7], wrong=[8])) is None


def test_a_document_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="each doc_id must be in right or wrong, once"):
        DocOutcomes(right=[1, 2], wrong=[2])
