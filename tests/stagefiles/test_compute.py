import pytest

from stagefiles.compute import GPAI_MODIFICATION_SHARE, share_of_base, training_flops


def test_flops_count_six_per_parameter_and_token() -> None:
    assert training_flops(135_000_000, 1_000) == 6 * 135_000_000 * 1_000


def test_a_small_fine_tune_is_far_below_the_modification_threshold() -> None:
    base = training_flops(135_000_000, 2_000_000_000_000)  # SmolLM2-135M: 2T tokens
    share = share_of_base(training_flops(135_000_000, 1_000_000), base)
    assert share == pytest.approx(5e-7)
    assert share < GPAI_MODIFICATION_SHARE


@pytest.mark.parametrize("params, tokens", [(-1, 1), (1, -1)])
def test_negative_counts_are_refused(params: int, tokens: int) -> None:
    with pytest.raises(ValueError):
        training_flops(params, tokens)


def test_a_base_without_compute_is_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        share_of_base(1.0, 0.0)
