"""Per-step diagnostics of the response weights."""

import math

import pytest
import torch

from lambda_grpo.weight_stats import weight_diagnostics
from lambda_grpo.weights import response_weights

LENGTHS = torch.tensor([4.0, 8.0, 12.0, 0.0, 30.0, 10.0, 20.0])
GROUPS = ["a", "a", "a", "a", "b", "b", "b"]


def test_uniform_weights_have_full_entropy_and_no_length_correlation():
    stats = weight_diagnostics(response_weights(LENGTHS, GROUPS, "dapo"), LENGTHS, GROUPS)
    assert stats == pytest.approx({"weight_min": 1.0, "weight_max": 1.0, "weight_mean": 1.0, "weight_entropy": 1.0,
                                   "weight_length_corr": 0.0, "weight_long_short_ratio": 1.0,
                                   "long_token_share_shift": 0.0}, abs=1e-12)


@pytest.mark.parametrize("lam, sign", [(3.0, 1), (-3.0, -1)])
def test_correlation_follows_the_sign_of_lambda_and_entropy_drops(lam, sign):
    weights = response_weights(LENGTHS, GROUPS, "lambda", lam=lam)
    stats = weight_diagnostics(weights, LENGTHS, GROUPS)
    assert math.copysign(1, stats["weight_length_corr"]) == sign and abs(stats["weight_length_corr"]) > 0.9
    assert 0.9 < stats["weight_entropy"] < 1.0
    assert math.copysign(1, math.log(stats["weight_long_short_ratio"])) == sign
    assert math.copysign(1, stats["long_token_share_shift"]) == sign
    assert stats["weight_min"] == pytest.approx(weights[LENGTHS > 0].min().item())


def test_entropy_by_hand():
    # One group of two with weights (1.5, 0.5): p = (0.75, 0.25), H/log 2 = 0.8113.
    stats = weight_diagnostics(torch.tensor([1.5, 0.5]), torch.tensor([3.0, 5.0]), [0, 0])
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2)
    assert stats["weight_entropy"] == pytest.approx(expected)
    assert stats["weight_length_corr"] == pytest.approx(-1.0)


def test_padding_only_batch_has_no_statistics():
    assert weight_diagnostics(torch.zeros(3), torch.zeros(3), ["p", "p", "p"]) == {}


def test_preference_strength_grows_with_lambda_where_the_correlation_does_not():
    stats = [weight_diagnostics(response_weights(LENGTHS, GROUPS, "lambda", lam=lam), LENGTHS, GROUPS)
             for lam in (0.5, 2.0, 8.0)]
    assert all(s["weight_length_corr"] > 0.9 for s in stats)
    ratios = [s["weight_long_short_ratio"] for s in stats]
    shifts = [s["long_token_share_shift"] for s in stats]
    assert 1 < ratios[0] < ratios[1] < ratios[2] and 0 < shifts[0] < shifts[1] < shifts[2]


def test_strength_by_hand():
    # Group "x": lengths 2, 6 with weights 0.5, 1.5; group "y": lengths 4, 4, 8 with weights 1, 1, 1; an empty row.
    lengths = torch.tensor([2.0, 6.0, 4.0, 4.0, 8.0, 0.0])
    weights = torch.tensor([0.5, 1.5, 1.0, 1.0, 1.0, 0.0])
    stats = weight_diagnostics(weights, lengths, ["x", "x", "y", "y", "y", "y"])
    assert stats["weight_long_short_ratio"] == pytest.approx((3.0 + 1.0) / 2)
    # Longer than the group mean: 6 (x) and 8 (y). Token mass f·n: 1, 9, 4, 4, 8 (Σ 26); uniform n: Σ 24.
    assert stats["long_token_share_shift"] == pytest.approx((9 + 8) / 26 - (6 + 8) / 24)
    grpo = weight_diagnostics(response_weights(lengths, ["x", "x", "y", "y", "y", "y"], "grpo"), lengths,
                              ["x", "x", "y", "y", "y", "y"])
    assert grpo["weight_long_short_ratio"] == pytest.approx((2 / 6 + 4 / 8) / 2)
