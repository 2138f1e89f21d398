"""The registered `lambda_grpo` loss against verl's own losses and aggregation modes.

Every equivalence is checked against verl 0.9.1's functions (`compute_policy_loss_vanilla`, `agg_loss`),
in value and in gradient, with `config.global_batch_info` filled the way verl's engine fills it.
"""

import pytest
import torch
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla, get_policy_loss_fn
from verl.workers.config import ActorConfig, PolicyLossConfig

from lambda_grpo.loss import MissingSampleWeightsError, compute_policy_loss_lambda_grpo, sample_weights_bound
from lambda_grpo.weights import WeightOptions, group_length_table, response_weights, weights_from_group_lengths

MAX_LEN = 12


def make_config(loss_agg_mode="token-mean", **global_batch_info):
    config = ActorConfig(
        strategy="fsdp",
        rollout_n=4,
        ppo_micro_batch_size_per_gpu=1,
        clip_ratio=0.2,
        loss_agg_mode=loss_agg_mode,
        policy_loss=PolicyLossConfig(loss_mode="lambda_grpo"),
    )
    config.global_batch_info.update(global_batch_info)
    return config


def make_batch(lengths, seed=0, dtype=torch.float64):
    """Random log-probs whose ratios fall in every clip region, GRPO-style per-response advantages."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    mask = torch.arange(MAX_LEN).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    old_log_prob = -torch.rand(batch, MAX_LEN, generator=generator, dtype=dtype) * 3
    log_prob = old_log_prob + (torch.rand(batch, MAX_LEN, generator=generator, dtype=dtype) - 0.5) * 0.9
    advantages = torch.randn(batch, 1, generator=generator, dtype=dtype).expand(batch, MAX_LEN).clone()
    return old_log_prob, log_prob.requires_grad_(True), advantages, mask


def run_loss(fn, batch, config, **kwargs):
    old_log_prob, log_prob, advantages, mask = batch
    loss, metrics = fn(old_log_prob, log_prob, advantages, mask, config.loss_agg_mode, config, **kwargs)
    (grad,) = torch.autograd.grad(loss, log_prob, retain_graph=True)
    return loss, grad, metrics


LENGTHS = [5, 12, 3, 9, 7, 11, 1, 6]
GROUPS = ["p", "q", "p", "q", "p", "q", "p", "q"]


@pytest.mark.parametrize("normalization", ["softmax", "power"])
@pytest.mark.parametrize("global_info", [{}, dict(dp_size=4, batch_num_tokens=230, global_batch_size=32)])
def test_lambda_zero_is_verl_vanilla_token_mean_bit_for_bit(normalization, global_info):
    batch = make_batch(LENGTHS, dtype=torch.float32)
    lam = torch.tensor(0.0, requires_grad=True)
    weights = response_weights(torch.tensor(LENGTHS), GROUPS, "lambda", lam=lam, normalization=normalization)
    ours, our_grad, metrics = run_loss(
        compute_policy_loss_lambda_grpo, batch, make_config(**global_info), sample_weights=weights
    )
    verl, verl_grad, verl_metrics = run_loss(compute_policy_loss_vanilla, batch, make_config(**global_info))
    assert torch.equal(ours, verl)
    assert torch.equal(our_grad, verl_grad)
    assert {k: metrics[k] for k in verl_metrics} == verl_metrics
    assert metrics["actor/lambda_grpo/weight_min"] == metrics["actor/lambda_grpo/weight_max"] == 1.0
    assert all(key.startswith("actor/") and isinstance(value, float) for key, value in metrics.items())


def test_registered_under_lambda_grpo():
    assert get_policy_loss_fn("lambda_grpo") is compute_policy_loss_lambda_grpo


def _equal_mean_groups():
    # Two groups of 4 with the same mean length 6; order interleaved.
    return [4, 9, 8, 3, 6, 7, 6, 5], ["a", "b", "a", "b", "a", "b", "a", "b"]


def test_grpo_scheme_is_verl_seq_mean_token_mean_when_group_means_agree():
    """f_i = μ/|o_i| with Σ_j|o_j| = Nμ gives Σ_i (1/|o_i|) Σ_t ℓ_it / N: verl's seq-mean-token-mean."""
    lengths, groups = _equal_mean_groups()
    batch = make_batch(lengths)
    weights = response_weights(torch.tensor(lengths, dtype=torch.float64), groups, "grpo")
    info = dict(dp_size=1, batch_num_tokens=sum(lengths), global_batch_size=len(lengths))
    ours, our_grad, _ = run_loss(compute_policy_loss_lambda_grpo, batch, make_config(**info), sample_weights=weights)
    verl, verl_grad, _ = run_loss(compute_policy_loss_vanilla, batch, make_config("seq-mean-token-mean", **info))
    # verl divides each response by (|o_i| + 1e-8), hence a relative difference of about 1e-8/|o_i|.
    torch.testing.assert_close(ours, verl, rtol=1e-8, atol=0)
    torch.testing.assert_close(our_grad, verl_grad, rtol=1e-8, atol=1e-15)


def test_dr_grpo_scheme_is_verl_seq_mean_token_sum_norm_when_group_means_agree():
    """f_i = μ/L_max with Σ_j|o_j| = Nμ gives Σ_i Σ_t ℓ_it / (N·L_max): seq-mean-token-sum-norm, factor L_max."""
    lengths, groups = _equal_mean_groups()
    batch = make_batch(lengths)
    weights = response_weights(torch.tensor(lengths, dtype=torch.float64), groups, "dr_grpo", max_response_length=MAX_LEN)
    info = dict(dp_size=1, batch_num_tokens=sum(lengths), global_batch_size=len(lengths))
    ours, our_grad, _ = run_loss(compute_policy_loss_lambda_grpo, batch, make_config(**info), sample_weights=weights)
    verl_config = make_config("seq-mean-token-sum-norm", loss_scale_factor=MAX_LEN, **info)
    verl, verl_grad, _ = run_loss(compute_policy_loss_vanilla, batch, verl_config)
    torch.testing.assert_close(ours, verl, rtol=1e-12, atol=0)
    torch.testing.assert_close(our_grad, verl_grad, rtol=1e-12, atol=1e-15)


def _per_response_sums(batch):
    """S_i = Σ_t ℓ_it(A_i) per response, from verl's vanilla loss with token-sum on one row at a time."""
    old_log_prob, log_prob, advantages, mask = batch
    config = make_config("token-sum")
    return torch.stack(
        [
            compute_policy_loss_vanilla(old_log_prob[i : i + 1], log_prob[i : i + 1], advantages[i : i + 1],
                                        mask[i : i + 1], "token-sum", config)[0]
            for i in range(len(mask))
        ]
    )


@pytest.mark.parametrize("scheme", ["grpo", "dr_grpo"])
def test_schemes_follow_the_family_formula_and_differ_from_verl_modes_when_means_differ(scheme):
    """With unequal group means the family's weights are per group (μ_g), verl's modes are not."""
    lengths, groups = LENGTHS, GROUPS  # group means 19/4 and 38/4
    batch = make_batch(lengths)
    weights = response_weights(torch.tensor(lengths, dtype=torch.float64), groups, scheme, max_response_length=MAX_LEN)
    info = dict(dp_size=1, batch_num_tokens=sum(lengths), global_batch_size=len(lengths))
    ours, _, _ = run_loss(compute_policy_loss_lambda_grpo, batch, make_config(**info), sample_weights=weights)
    family = (weights * _per_response_sums(batch)).sum() / sum(lengths)
    torch.testing.assert_close(ours, family, rtol=1e-12, atol=0)
    mode = {"grpo": "seq-mean-token-mean", "dr_grpo": "seq-mean-token-sum-norm"}[scheme]
    verl, _, _ = run_loss(compute_policy_loss_vanilla, batch, make_config(mode, loss_scale_factor=MAX_LEN, **info))
    assert not torch.allclose(ours, verl, rtol=1e-3)


@pytest.mark.parametrize("normalization", ["softmax", "power"])
def test_gradient_in_lambda_matches_central_finite_difference(normalization):
    batch = make_batch(LENGTHS)
    config = make_config(dp_size=1, batch_num_tokens=sum(LENGTHS), global_batch_size=len(LENGTHS))

    def loss_at(lam):
        weights = response_weights(torch.tensor(LENGTHS, dtype=torch.float64), GROUPS, "lambda", lam=lam,
                                   normalization=normalization)
        return compute_policy_loss_lambda_grpo(*batch[:2], batch[2], batch[3], "token-mean", config,
                                               sample_weights=weights)[0]

    lam = torch.tensor(1.1, dtype=torch.float64, requires_grad=True)
    (gradient,) = torch.autograd.grad(loss_at(lam), lam)
    step = 1e-6
    numeric = (loss_at(1.1 + step) - loss_at(1.1 - step)) / (2 * step)
    assert gradient.item() == pytest.approx(numeric.item(), rel=1e-6)
    assert abs(gradient.item()) > 1e-6  # the test would be vacuous at a zero gradient


def _split_loss_and_grads(batch, lam, normalization, shards, global_info):
    """Sum of micro-batch losses and their gradients, each micro-batch weighted from its group fields.

    `shards` lists, per simulated data-parallel rank, its micro-batches as row-index lists. Gradients are
    averaged over ranks as FSDP averages them; losses are summed per rank and averaged over ranks as
    verl reports them.
    """
    old_log_prob, log_prob, advantages, mask = batch
    table, position = group_length_table(torch.tensor(LENGTHS, dtype=torch.float64), GROUPS, min_width=4)
    options = WeightOptions("lambda", normalization=normalization)
    rank_losses, log_prob_grad, lam_grad = [], torch.zeros_like(log_prob), torch.zeros_like(lam)
    for micro_batches in shards:
        rank_loss = 0.0
        for rows in micro_batches:
            rows = torch.tensor(rows)
            config = make_config(**global_info)
            weights = weights_from_group_lengths(table[rows], position[rows], options, lam)
            with sample_weights_bound(weights):  # the path verl's ppo_loss takes in the worker
                loss, _ = get_policy_loss_fn("lambda_grpo")(
                    old_log_prob[rows], log_prob[rows], advantages[rows], mask[rows], "token-mean", config
                )
            g_log_prob, g_lam = torch.autograd.grad(loss, (log_prob, lam))
            log_prob_grad += g_log_prob / len(shards)
            lam_grad += g_lam / len(shards)
            rank_loss = rank_loss + loss.detach()
        rank_losses.append(rank_loss)
    return torch.stack(rank_losses).mean(), log_prob_grad, lam_grad


@pytest.mark.parametrize("normalization", ["softmax", "power"])
def test_micro_batch_and_data_parallel_invariance(normalization):
    batch = make_batch(LENGTHS)
    lam = torch.tensor(-0.9, dtype=torch.float64, requires_grad=True)
    total_tokens = sum(LENGTHS)
    single = _split_loss_and_grads(batch, lam, normalization, [[list(range(8))]],
                                   dict(dp_size=1, batch_num_tokens=total_tokens, global_batch_size=8))
    # Both groups are split across micro-batches and across two ranks, in shuffled order.
    shards = [[[6, 1, 3], [0]], [[5, 2], [7, 4]]]
    split = _split_loss_and_grads(batch, lam, normalization, shards,
                                  dict(dp_size=2, batch_num_tokens=total_tokens, global_batch_size=8))
    for expected, actual in zip(single, split):
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-15)
    assert abs(single[2].item()) > 1e-6

    # Negative control: normalising each micro-batch by its own tokens is not invariant.
    local = _split_loss_and_grads(batch, lam, normalization, [[[6, 1, 3], [0]], [[5, 2], [7, 4]]], dict())
    assert not torch.allclose(local[0], single[0], rtol=1e-3)


def test_missing_sample_weights_says_how_to_enable_them():
    batch = make_batch(LENGTHS)
    with pytest.raises(MissingSampleWeightsError, match="python -m lambda_grpo.main"):
        compute_policy_loss_lambda_grpo(*batch, "token-mean", make_config())


def test_rejects_other_aggregations_and_misshaped_weights():
    batch = make_batch(LENGTHS)
    with pytest.raises(ValueError, match="loss_agg_mode='seq-mean-token-mean'"):
        compute_policy_loss_lambda_grpo(*batch, "seq-mean-token-mean", make_config(), sample_weights=torch.ones(8))
    with pytest.raises(ValueError, match="shape \\(8,\\)"):
        compute_policy_loss_lambda_grpo(*batch, "token-mean", make_config(), sample_weights=torch.ones(7))


def test_padding_only_micro_batch_reports_zero_weights():
    batch = make_batch([0, 0])
    _, _, metrics = run_loss(compute_policy_loss_lambda_grpo, batch, make_config(), sample_weights=torch.zeros(2))
    assert metrics["actor/lambda_grpo/weight_max"] == 0.0
