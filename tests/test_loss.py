"""The λ-GRPO loss path against verl 0.9.1's own `ppo_loss`, surrogates and aggregation modes.

Every micro-batch is a TensorDict in verl's V1 layout (tests/loss_batches.py) with the global batch info
verl's engine attaches, so both sides run verl's unchanged `ppo_loss`; ours writes the weights into
`rollout_is_weights`. Batches carry padding rows (verl's `pad…` uid, zero mask), empty responses and groups
split over micro-batches and two simulated data-parallel ranks. Value and gradient are compared.
"""

import functools
import math

import pytest
import torch
from verl.workers.utils.losses import ppo_loss

from lambda_grpo.actor_loss import row_weights
from lambda_grpo.loss import weighted_ppo_loss
from lambda_grpo.surrogates import LAMBDA_FROM_LOSS, SURROGATES, surrogate_for
from lambda_grpo.weights import WeightOptions, seq_mean_denominator
from loss_batches import PAD_UID, actor_config, make_rows, micro_batch, run_split

L_MAX = 24
TOKEN_MEAN_SURROGATES = sorted(name for name, s in SURROGATES.items() if s.aggregation is None)
# clip_cov and kl_cov pick tokens by statistics of the micro-batch at hand: verl's own loss depends on the
# split, so they are compared on one split, not across splits.
SPLIT_INVARIANT = [name for name in TOKEN_MEAN_SURROGATES if name not in ("clip_cov", "kl_cov")]

# 6 groups of 4 with mean lengths 2.5 … 19, interleaved; an empty response in "c"; 2 padding rows.
LENGTHS = [2, 18, 5, 3, 20, 9, 0, 13, 1, 22, 7, 4, 16, 2, 11, 24, 3, 8, 17, 6, 0, 14, 2, 12, 0, 19]
UIDS = ["a", "b", "c", "a", "b", "c", PAD_UID, "d", "a", "e", "c", "f", "d", "a", "e", "b", "f", "c", "d", "e",
        PAD_UID, "b", "f", "d", "c", "e"]
# Two ranks of 13 rows, uneven micro-batches, every group split across both ranks; rank 1 has a
# micro-batch of padding rows only.
SHARDS = [[[0, 1, 2, 3, 4], [5, 7, 8], [9, 10, 11, 12]], [[13, 14, 15, 16, 17, 18, 19], [6, 20], [21, 22, 23, 24, 25]]]
ONE_RANK = [[list(range(len(LENGTHS)))]]


def family(options, loss_mode, lam=0.0, loss_agg_mode="token-mean"):
    """Our loss path as the actor runs it, with λ passed explicitly."""
    config = actor_config(loss_mode, loss_agg_mode)

    def loss_fn(model_output, data):
        torch.manual_seed(0)  # clip_cov draws a random subset of tokens
        return weighted_ppo_loss(config, model_output, data, row_weights=row_weights(data, options, lam),
                                 surrogate=surrogate_for(loss_mode))

    return loss_fn


def verl(loss_mode, loss_agg_mode="token-mean", **config):
    """verl's own ppo_loss with the same surrogate and an aggregation mode of its own."""
    config = actor_config(loss_mode, loss_agg_mode, **config)

    def loss_fn(model_output, data):
        torch.manual_seed(0)
        return ppo_loss(config, model_output, data)

    return loss_fn


def rows(dtype=torch.float64, **kwargs):
    return make_rows(LENGTHS, UIDS, dtype=dtype, **kwargs)


@pytest.mark.parametrize("is_weights", [False, True])
@pytest.mark.parametrize("loss_mode", TOKEN_MEAN_SURROGATES)
def test_lambda_zero_and_dapo_are_verls_own_surrogate_bit_for_bit(loss_mode, is_weights):
    """λ = 0 (learnable, softmax and power) and algo=dapo write exactly 1.0 (times the real IS weights):
    verl's own surrogate with its token-mean, value and gradient identical, on a split batch."""
    batch = rows(torch.float32, is_weights=is_weights)
    expected = run_split(verl(loss_mode), batch, SHARDS, [batch.log_prob])
    for options in (WeightOptions("lambda"), WeightOptions("lambda", normalization="power"), WeightOptions("dapo")):
        lam = torch.tensor(0.0, requires_grad=True)
        loss, (grad, lam_grad) = run_split(family(options, loss_mode, lam), batch, SHARDS, [batch.log_prob, lam])
        assert torch.equal(loss, expected[0]) and torch.equal(grad, expected[1][0]), options
        assert math.isfinite(lam_grad.item())


@pytest.mark.parametrize("scheme, mode", [("grpo", "seq-mean-token-mean"), ("dr_grpo", "seq-mean-token-sum-norm")])
@pytest.mark.parametrize("loss_mode", SPLIT_INVARIANT)
def test_fixed_members_are_verls_aggregation_modes_on_any_split(loss_mode, scheme, mode):
    """grpo ≡ seq-mean-token-mean and dr_grpo ≡ seq-mean-token-sum-norm (loss_scale_factor = L_max) over
    groups of mean lengths 2.5 … 19, with padding rows and an empty response, split over micro-batches and
    two ranks (T and N global, N counting the padding rows as verl's global_batch_size does)."""
    batch = rows()
    options = WeightOptions(scheme, max_response_length=L_MAX)
    reference = verl(loss_mode, mode, loss_scale_factor=L_MAX)
    expected = run_split(reference, batch, ONE_RANK, [batch.log_prob])
    for shards in (ONE_RANK, SHARDS):
        assert_close(run_split(reference, batch, shards, [batch.log_prob]), expected)  # verl's mode is split-free
        assert_close(run_split(family(options, loss_mode), batch, shards, [batch.log_prob]), expected)
    # Negative control: DAPO's token-mean is a different objective on this batch.
    dapo = run_split(family(WeightOptions("dapo"), loss_mode), batch, SHARDS, [batch.log_prob])
    assert not torch.allclose(dapo[0], expected[0], rtol=1e-2)


@pytest.mark.parametrize("loss_mode", ["clip_cov", "kl_cov"])
@pytest.mark.parametrize("scheme, mode", [("grpo", "seq-mean-token-mean"), ("dr_grpo", "seq-mean-token-sum-norm")])
def test_fixed_members_on_split_dependent_surrogates(loss_mode, scheme, mode):
    batch = rows()
    options = WeightOptions(scheme, max_response_length=L_MAX)
    assert_close(run_split(family(options, loss_mode), batch, SHARDS, [batch.log_prob]),
                 run_split(verl(loss_mode, mode, loss_scale_factor=L_MAX), batch, SHARDS, [batch.log_prob]))


def test_the_issue_batch_two_groups_of_mean_length_3_and_13():
    """Issue 10 §2: the grpo loss read −0.122 where verl's seq-mean-token-mean gives −0.219."""
    batch = make_rows([2, 3, 4, 12, 13, 14], ["x"] * 3 + ["y"] * 3, seed=5)
    whole = [[list(range(6))]]
    expected = run_split(verl("vanilla", "seq-mean-token-mean"), batch, whole, [batch.log_prob])
    assert_close(run_split(family(WeightOptions("grpo"), "vanilla"), batch, whole, [batch.log_prob]), expected)
    assert_close(run_split(family(WeightOptions("grpo"), "vanilla"), batch, [[[0, 4]], [[1, 2, 3, 5]]],
                           [batch.log_prob]), expected)


def test_sapo_aggregation_is_undone_so_the_algo_decides():
    """sapo hard-codes seq-mean-token-mean: algo=grpo over sapo is verl's sapo bit for bit (float32), and
    algo=dapo (λ = 0) is SAPO's token losses under token-mean, Σ_i Σ_t ℓ_it / T."""
    batch = rows(torch.float32)
    assert_equal(run_split(family(WeightOptions("grpo"), "sapo"), batch, SHARDS, [batch.log_prob]),
                 run_split(verl("sapo"), batch, SHARDS, [batch.log_prob]))
    batch = rows()
    token_sums = _sapo_token_sums(batch)
    expected_loss = token_sums.sum() / batch.tokens
    expected_grad = torch.autograd.grad(expected_loss, batch.log_prob)[0]
    for options in (WeightOptions("dapo"), WeightOptions("lambda")):
        lam = torch.tensor(0.0, dtype=torch.float64, requires_grad=True)
        assert_close(run_split(family(options, "sapo", lam), batch, SHARDS, [batch.log_prob]),
                     (expected_loss, [expected_grad]))


def _sapo_token_sums(batch):
    """Σ_t ℓ_it of verl's sapo per response: its per-row seq-mean (global_batch_size 1) times (|o_i| + 1e-8),
    the latter evaluated as verl evaluates it."""
    sums = []
    for i, length in enumerate(batch.lengths.tolist()):
        data, model_output = micro_batch(batch, [i], global_batch_size=1, batch_num_tokens=max(length, 1))
        sums.append(ppo_loss(actor_config("sapo"), model_output, data)[0] * seq_mean_denominator(torch.tensor(length)))
    return torch.stack(sums)


@pytest.mark.parametrize("normalization", ["softmax", "power"])
@pytest.mark.parametrize("loss_mode", sorted(SURROGATES))
def test_lambda_gradient_matches_a_central_finite_difference(loss_mode, normalization):
    """∂L/∂λ of the split loss against a central difference of the loss (objective-valued surrogates) or of
    the ratio objective J (REINFORCE-form: verl's vanilla with clipping switched off, on the same batch)."""
    batch = rows(is_weights=True)
    options = WeightOptions("lambda", normalization=normalization)
    shards = ONE_RANK if loss_mode in ("clip_cov", "kl_cov") else SHARDS
    lam = torch.tensor(1.3, dtype=torch.float64, requires_grad=True)
    _, (lam_grad,) = run_split(family(options, loss_mode, lam), batch, shards, [lam])
    if SURROGATES[loss_mode].lambda_objective == LAMBDA_FROM_LOSS:
        def value(at):
            return run_split(family(options, loss_mode, at), batch, shards, [batch.log_prob])[0]
    else:
        unclipped = functools.partial(actor_config, clip_ratio_low=1e9, clip_ratio_high=1e9)

        def value(at):
            config = unclipped("vanilla")
            loss_fn = functools.partial(lambda model_output, data: weighted_ppo_loss(
                config, model_output, data, row_weights=row_weights(data, options, at),
                surrogate=surrogate_for("vanilla")))
            return run_split(loss_fn, batch, shards, [batch.log_prob])[0]
    step = 1e-5
    numeric = (value(torch.tensor(1.3 + step, dtype=torch.float64))
               - value(torch.tensor(1.3 - step, dtype=torch.float64))) / (2 * step)
    assert lam_grad.item() == pytest.approx(numeric.item(), rel=1e-6)
    assert abs(lam_grad.item()) > 1e-4  # not vacuous


@pytest.mark.parametrize("loss_mode", [name for name, s in SURROGATES.items() if s.lambda_objective != LAMBDA_FROM_LOSS])
def test_reinforce_form_surrogates_keep_their_own_loss_and_give_lambda_vanillas_gradient_on_policy(loss_mode):
    """The λ term adds exactly 0 to the value and nothing to the policy gradient; on-policy (r = 1) λ's
    gradient is exactly the one vanilla gives it, although the loss's value has the opposite sign."""
    batch = rows(is_weights=True, on_policy=True)
    options = WeightOptions("lambda")
    lam = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    loss, (grad, lam_grad) = run_split(family(options, loss_mode, lam), batch, SHARDS, [batch.log_prob, lam])
    weights = row_weights(micro_batch(batch, range(len(LENGTHS)))[0], options, lam.detach())
    with_weights = make_rows(LENGTHS, UIDS, is_weights=True, on_policy=True)
    with_weights.is_weights = batch.is_weights * weights[:, None]
    expected = run_split(verl(loss_mode), with_weights, SHARDS, [with_weights.log_prob])
    assert_close((loss, [grad]), expected)
    _, (vanilla_lam_grad,) = run_split(family(options, "vanilla", lam), batch, SHARDS, [lam])
    torch.testing.assert_close(lam_grad, vanilla_lam_grad, rtol=1e-12, atol=0)
    assert torch.sign(loss) != torch.sign(run_split(family(options, "vanilla", lam), batch, SHARDS, [lam])[0])


@pytest.mark.parametrize("loss_mode", ["vanilla", "gspo", "cispo"])
def test_lambda_weights_multiply_real_rollout_correction_weights(loss_mode):
    """With IS weights w on, our loss is verl's with w·f in rollout_is_weights, never f alone."""
    batch = rows(is_weights=True)
    options = WeightOptions("lambda")
    lam = torch.tensor(1.7, dtype=torch.float64)
    ours = run_split(family(options, loss_mode, lam), batch, SHARDS, [batch.log_prob])
    f = row_weights(micro_batch(batch, range(len(LENGTHS)))[0], options, lam)
    combined = rows(is_weights=True)
    combined.is_weights = batch.is_weights * f[:, None]
    assert_close(ours, run_split(verl(loss_mode), combined, SHARDS, [combined.log_prob]))
    replaced = rows()
    replaced.is_weights = f[:, None].expand_as(batch.mask).clone()
    assert not torch.allclose(ours[0], run_split(verl(loss_mode), replaced, SHARDS, [replaced.log_prob])[0], rtol=1e-3)


@pytest.mark.parametrize("normalization", ["softmax", "power"])
@pytest.mark.parametrize("loss_mode", ["vanilla", "cispo"])
def test_empty_rows_give_exactly_zero_lambda_gradient_through_the_loss(loss_mode, normalization):
    """Padding rows and empty responses, split into micro-batches (one of padding rows only): λ's gradient is
    finite and the same as without those rows; the padding-only micro-batch adds exactly 0 to it."""
    batch = rows()
    options = WeightOptions("lambda", normalization=normalization)
    lam = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)
    _, (with_empty,) = run_split(family(options, loss_mode, lam), batch, SHARDS, [lam])
    keep = [i for i, length in enumerate(LENGTHS) if length > 0]
    clean = batch.subset(keep)
    _, (without,) = run_split(family(options, loss_mode, lam), clean, [[list(range(len(keep)))]], [lam])
    assert math.isfinite(with_empty.item())
    torch.testing.assert_close(with_empty, without, rtol=1e-12, atol=0)
    _, (padding_only,) = run_split(family(options, loss_mode, lam), batch, [[[6, 20]]], [lam])
    assert padding_only.item() == 0.0


def test_lambda_is_split_invariant():
    batch = rows()
    lam = torch.tensor(-0.9, dtype=torch.float64, requires_grad=True)
    loss_fn = family(WeightOptions("lambda"), "vanilla", lam)
    single = run_split(loss_fn, batch, ONE_RANK, [batch.log_prob, lam])
    assert_close(run_split(loss_fn, batch, SHARDS, [batch.log_prob, lam]), single)
    assert_close(run_split(loss_fn, batch, SHARDS, [batch.log_prob, lam], nested=False), single)


def assert_close(actual, expected):
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-12, atol=1e-15)
    for got, want in zip(actual[1], expected[1]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-15)


def assert_equal(actual, expected):
    assert torch.equal(actual[0], expected[0])
    assert all(torch.equal(got, want) for got, want in zip(actual[1], expected[1]))
