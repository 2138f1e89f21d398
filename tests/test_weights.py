"""Response weights of the unified family: formulas, invariances, edge cases and errors."""

import math

import pytest
import torch

from lambda_grpo.weights import (
    FLOAT32_LOG_MAX,
    PAPER_R,
    WeightOptions,
    check_lambda_range,
    check_lift_positive,
    group_length_table,
    lambda_weights,
    lift_bound,
    max_safe_lambda,
    response_weights,
)

NORMALIZATIONS = ("softmax", "power")

# Three interleaved groups: "a" of 4 with distinct lengths, "b" of 3 with a padding row, "c" a singleton.
LENGTHS = torch.tensor([12.0, 40.0, 7.0, 25.0, 33.0, 0.0, 18.0, 9.0, 60.0], dtype=torch.float64)
GROUPS = ["a", "a", "b", "c", "a", "b", "a", "b", "b"]


def _by_group(values, groups=GROUPS):
    out = {}
    for value, group in zip(values.tolist(), groups):
        out.setdefault(group, []).append(value)
    return out


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_lambda_zero_is_exactly_one(normalization):
    weights = response_weights(LENGTHS, GROUPS, "lambda", lam=0.0, normalization=normalization)
    expected = (LENGTHS > 0).to(weights.dtype)
    assert torch.equal(weights, expected)  # exactly 1, not approximately: λ = 0 is DAPO
    lam = torch.tensor(0.0, requires_grad=True)
    weights32 = response_weights(LENGTHS.float(), GROUPS, "lambda", lam=lam, normalization=normalization)
    assert torch.equal(weights32, expected.float())


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("lam", [-3.0, -0.5, 0.7, 4.0])
def test_weights_positive_and_sum_to_group_size(normalization, lam):
    weights = response_weights(LENGTHS, GROUPS, "lambda", lam=lam, normalization=normalization)
    present = LENGTHS > 0
    assert bool((weights[present] > 0).all())
    assert bool((weights[~present] == 0).all())
    for group, values in _by_group(weights).items():
        non_empty = [w for w, length in zip(values, _by_group(LENGTHS)[group]) if length > 0]
        assert sum(non_empty) == pytest.approx(len(non_empty), rel=1e-12)


@pytest.mark.parametrize("scheme", ["dapo", "grpo", "dr_grpo", "lambda"])
def test_permutation_invariance(scheme):
    generator = torch.Generator().manual_seed(0)
    permutation = torch.randperm(len(LENGTHS), generator=generator)
    kwargs = dict(lam=1.3, max_response_length=64)
    weights = response_weights(LENGTHS, GROUPS, scheme, **kwargs)
    permuted = response_weights(LENGTHS[permutation], [GROUPS[i] for i in permutation], scheme, **kwargs)
    torch.testing.assert_close(permuted, weights[permutation], rtol=0, atol=1e-15)


def test_hand_computed_example():
    # One group of lengths 10, 20, 30: μ = 20, σ (ddof=1) = 10, z = (−1, 0, 1); with eps = 1e-12 ≈ 0,
    # h = (8/9, 1, 10/9). At λ = 2: g = h² = (64/81, 1, 100/81).
    lengths = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64)
    g = [64 / 81, 1.0, 100 / 81]
    softmax = [3 * math.exp(v) / sum(math.exp(u) for u in g) for v in g]
    power = [3 * v / sum(g) for v in g]
    for normalization, expected in (("softmax", softmax), ("power", power)):
        weights = response_weights(lengths, [0, 0, 0], "lambda", lam=2.0, eps=1e-12, normalization=normalization)
        assert weights.tolist() == pytest.approx(expected, rel=1e-12)
    # The numbers themselves, worked by hand: exp(64/81) = 2.2037, e = 2.7183, exp(100/81) = 3.4369,
    # Σ = 8.3589, so f = 3·(2.2037, 2.7183, 3.4369)/8.3589.
    assert softmax == pytest.approx([0.79090, 0.97559, 1.23351], abs=1e-5)
    # GRPO f = μ̄/|o| = (2, 1, 2/3); Dr. GRPO f = μ̄/L_max = 20/40 (μ̄ = 20, the batch's mean length).
    assert response_weights(lengths, [0] * 3, "grpo").tolist() == pytest.approx([2.0, 1.0, 2 / 3], rel=1e-15)
    assert response_weights(lengths, [0] * 3, "dr_grpo", max_response_length=40).tolist() == [0.5] * 3


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_monotone_in_length_with_the_sign_of_lambda(normalization):
    lengths = torch.tensor([5.0, 11.0, 17.0, 30.0, 52.0, 80.0], dtype=torch.float64)
    groups = [0] * len(lengths)
    longer_first = response_weights(lengths, groups, "lambda", lam=2.5, normalization=normalization)
    shorter_first = response_weights(lengths, groups, "lambda", lam=-2.5, normalization=normalization)
    assert bool((longer_first.diff() > 0).all())
    assert bool((shorter_first.diff() < 0).all())


def test_singletons_zero_variance_and_padding_rows():
    lengths = torch.tensor([14.0, 14.0, 14.0, 9.0, 0.0, 0.0], dtype=torch.float64)
    groups = ["flat", "flat", "flat", "alone", "alone", "pad"]
    for normalization in NORMALIZATIONS:
        weights = response_weights(lengths, groups, "lambda", lam=3.0, normalization=normalization)
        assert weights.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_padding_rows_do_not_enter_group_statistics():
    with_padding = response_weights(LENGTHS, GROUPS, "lambda", lam=1.7)
    keep = LENGTHS > 0
    without = response_weights(LENGTHS[keep], [g for g, k in zip(GROUPS, keep) if k], "lambda", lam=1.7)
    torch.testing.assert_close(with_padding[keep], without, rtol=0, atol=0)


def test_fixed_schemes_use_the_batch_mean_length():
    """μ̄ = Σ_j |o_j| / N over all N rows (verl's global_batch_size counts padding rows), not a group's mean."""
    mean = LENGTHS.sum().item() / len(LENGTHS)
    grpo = response_weights(LENGTHS, GROUPS, "grpo")
    dr_grpo = response_weights(LENGTHS, GROUPS, "dr_grpo", max_response_length=64)
    for i, length in enumerate(LENGTHS.tolist()):
        if length == 0:
            assert grpo[i] == 0 and dr_grpo[i] == 0
        else:
            assert grpo[i].item() == pytest.approx(mean / length, rel=1e-15)
            assert dr_grpo[i].item() == pytest.approx(mean / 64, rel=1e-15)
    assert torch.equal(response_weights(LENGTHS, GROUPS, "dapo"), (LENGTHS > 0).double())
    assert response_weights(LENGTHS, GROUPS, "grpo", mean_length=10.0)[0].item() == pytest.approx(10 / 12)


def test_tensor_group_ids_match_sequence_group_ids():
    ids = torch.tensor([{"a": 7, "b": 3, "c": 100}[g] for g in GROUPS])
    torch.testing.assert_close(
        response_weights(LENGTHS, ids, "lambda", lam=0.9), response_weights(LENGTHS, GROUPS, "lambda", lam=0.9)
    )


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_gradient_in_lambda_matches_finite_difference(normalization):
    coefficients = torch.linspace(-1.0, 2.0, len(LENGTHS), dtype=torch.float64)

    def objective(lam):
        return (coefficients * response_weights(LENGTHS, GROUPS, "lambda", lam=lam, normalization=normalization)).sum()

    lam = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(objective(lam), lam)
    step = 1e-6
    numeric = (objective(0.8 + step) - objective(0.8 - step)) / (2 * step)
    assert gradient.item() == pytest.approx(numeric.item(), rel=1e-7)
    assert torch.autograd.gradcheck(objective, (lam,))


def test_group_length_table_rows_hold_their_whole_group():
    table, position = group_length_table(LENGTHS, GROUPS, min_width=6)
    assert table.shape == (len(LENGTHS), 6)
    for i, group in enumerate(GROUPS):
        members = sorted(length for length, g in zip(LENGTHS.tolist(), GROUPS) if g == group)
        row = table[i].tolist()
        assert sorted(row[: len(members)]) == members and not any(row[len(members):])
        assert table[i, position[i]] == LENGTHS[i]


def test_row_form_equals_batch_form_on_any_subset_of_rows():
    options = WeightOptions("lambda", normalization="softmax")
    table, position = group_length_table(LENGTHS, GROUPS)
    full = lambda_weights(table, position, options, lam=-1.2)
    rows = torch.tensor([8, 1, 5])  # a "micro-batch" holding parts of two groups
    torch.testing.assert_close(lambda_weights(table[rows], position[rows], options, lam=-1.2), full[rows])


def test_lift_check_at_configuration_time():
    check_lift_positive(PAPER_R, 82)  # the paper's r is safe up to G = 82: (82−1)/(9·√82) = 0.994
    with pytest.raises(ValueError, match="h = 1 \\+ r·z <= 0"):
        check_lift_positive(PAPER_R, 83)  # (83−1)/(9·√83) = 1.00007
    with pytest.raises(ValueError, match="groups of 8"):
        WeightOptions("lambda", r=0.5, max_group_size=8)
    WeightOptions("dapo", r=0.5, max_group_size=8)  # the lift only matters for the lambda scheme


def test_nonpositive_lift_raises_instead_of_nan():
    # One short outlier in a group of 16 has z = −15/4, so h = 1 − 0.5·3.75 < 0.
    lengths = torch.tensor([100.0] * 15 + [1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="h = 1 \\+ r·z <= 0"):
        response_weights(lengths, [0] * 16, "lambda", lam=0.5, r=0.5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lengths=torch.ones(3), group_ids=[0, 0], scheme="lambda"), "3 rows but group_ids has 2"),
        (dict(lengths=torch.ones(3, 2), group_ids=[0, 0, 0], scheme="lambda"), "1-d tensor"),
        (dict(lengths=torch.ones(3), group_ids=[0, 0, 0], scheme="gspo"), "unknown weight scheme 'gspo'"),
        (dict(lengths=torch.ones(3), group_ids=[0, 0, 0], scheme="dr_grpo"), "needs max_response_length"),
        (dict(lengths=torch.ones(3), group_ids=[0, 0, 0], scheme="lambda", normalization="sum"), "normalization"),
        (dict(lengths=torch.tensor([1.0, -2.0]), group_ids=[0, 0], scheme="dapo"), ">= 0"),
        (dict(lengths=torch.tensor([1.0, math.nan]), group_ids=[0, 0], scheme="dapo"), "finite"),
        (dict(lengths=torch.ones(2), group_ids=[0, 0], scheme="lambda", r=-0.1), "r must be"),
        (dict(lengths=torch.ones(2), group_ids=[0, 0], scheme="lambda", eps=0.0), "eps must be a finite number > 0"),
    ],
)
def test_bad_inputs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        response_weights(**kwargs)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_empty_rows_and_empty_groups_give_exactly_zero_lambda_gradient(normalization):
    """Issue 10 §1: a group of empty rows only (verl's padding) made λ's gradient NaN under softmax."""
    lam = torch.tensor(0.3, requires_grad=True)
    weights = response_weights(torch.tensor([3, 5, 7, 9, 0, 0]), ["a"] * 4 + ["pad1", "pad1"], "lambda", lam=lam,
                               normalization=normalization)
    (weights * torch.arange(1.0, 7)).sum().backward()
    clean = torch.tensor(0.3, requires_grad=True)
    (response_weights(torch.tensor([3, 5, 7, 9]), ["a"] * 4, "lambda", lam=clean, normalization=normalization)
     * torch.arange(1.0, 5)).sum().backward()
    assert weights[4:].tolist() == [0.0, 0.0]
    assert torch.isfinite(lam.grad) and lam.grad == clean.grad
    # An empty row inside a real group, and the empty rows alone: exactly 0 contribution.
    alone = torch.tensor(0.3, requires_grad=True)
    response_weights(torch.tensor([0, 0, 4, 0]), ["pad1", "pad1", "b", "b"], "lambda", lam=alone,
                     normalization=normalization)[[0, 1, 3]].sum().backward()
    assert alone.grad.item() == 0.0


def test_lambda_range_keeps_h_to_the_lambda_finite_in_float32():
    """The issue's example, bounds [−400, 400] with n = 8, is refused; within the safe range the most extreme
    group's weights and gradient are finite in float32, beyond ln(float32 max)/max|ln h| they are not."""
    group = 8
    limit = max_safe_lambda(PAPER_R, group)
    bound = lift_bound(PAPER_R, group)
    assert limit == pytest.approx((FLOAT32_LOG_MAX - math.log(group)) / -math.log1p(-bound))
    with pytest.raises(ValueError, match=r"bounds \[-400.0, 400.0\] let h\^λ overflow float32 .* ±269"):
        check_lambda_range((-400.0, 400.0), PAPER_R, group)
    check_lambda_range((-10.0, 10.0), PAPER_R, group)
    outliers = torch.tensor([100.0] * (group - 1) + [1.0, 1.0] + [100.0] * (group - 1))  # z = ∓(G−1)/√G
    table, position = group_length_table(outliers, [0] * group + [1] * group, min_width=group)
    options = WeightOptions("lambda", eps=1e-12)
    for lam_value, finite in ((-limit, True), (limit, True), (-1.01 * FLOAT32_LOG_MAX / -math.log1p(-bound), False)):
        lam = torch.tensor(lam_value, requires_grad=True)
        weights = lambda_weights(table.float(), position, options, lam)
        (weights * torch.linspace(-1, 1, len(weights))).sum().backward()
        assert bool(torch.isfinite(weights).all() and torch.isfinite(lam.grad)) is finite, lam_value
    assert max_safe_lambda(0.0, group) == math.inf and max_safe_lambda(PAPER_R, 1) == math.inf
