"""The surrogate table says what verl 0.9.1's policy losses actually do with `rollout_is_weights`.

Each row of `lambda_grpo.surrogates` is checked against verl's own loss function: the accepted losses are
linear in the weights, token by token; the refused ones are not (geo_mean) or ignore them (bypass_mode);
sapo alone ignores `loss_agg_mode`; and the value of each loss has the sign the table's λ column relies on.
"""

import pytest
import torch
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, get_policy_loss_fn

from lambda_grpo.surrogates import (
    LAMBDA_FROM_LOSS,
    LAMBDA_FROM_RATIO_OBJECTIVE,
    REFUSED,
    SEQ_MEAN_TOKEN_MEAN,
    SURROGATES,
    UnsupportedSurrogate,
    surrogate_for,
)
from loss_batches import actor_config, make_rows

ROWS = dict(lengths=[5, 12, 3, 9, 7, 11, 1, 6], uids=list("pqpqpqpq"))


def call(loss_mode, rows, weights=None, loss_agg_mode="token-mean", log_prob=None):
    """verl's registered loss on padded tensors, as ppo_loss calls it (global RNG fixed for clip_cov)."""
    config = actor_config(loss_mode, loss_agg_mode)
    config.global_batch_info.update(dp_size=1, batch_num_tokens=rows.tokens, global_batch_size=len(rows.lengths))
    torch.manual_seed(0)
    return get_policy_loss_fn(loss_mode)(
        old_log_prob=rows.old_log_prob, log_prob=rows.log_prob if log_prob is None else log_prob,
        advantages=rows.advantages, response_mask=rows.mask, loss_agg_mode=loss_agg_mode, config=config,
        rollout_is_weights=weights,
    )[0]


def test_every_verl_loss_is_classified():
    """A verl upgrade that registers a new policy loss must be looked at before it is accepted."""
    builtin = {name for name, fn in POLICY_LOSS_REGISTRY.items() if fn.__module__.startswith("verl.")}
    assert builtin == set(SURROGATES) | set(REFUSED)


@pytest.mark.parametrize("loss_mode", sorted(SURROGATES))
def test_accepted_losses_multiply_the_weights_per_token_linearly(loss_mode):
    rows = make_rows(**ROWS)
    generator = torch.Generator().manual_seed(3)
    first, second = (torch.rand(rows.mask.shape, generator=generator, dtype=torch.float64) + 0.1 for _ in range(2))
    together = call(loss_mode, rows, first + 2.5 * second)
    torch.testing.assert_close(together, call(loss_mode, rows, first) + 2.5 * call(loss_mode, rows, second),
                               rtol=1e-12, atol=1e-14)
    # Zeroing one response's weights removes exactly that response (nothing else reads the weights).
    only_row_2 = torch.zeros_like(first)
    only_row_2[2] = first[2]
    without_row_2 = first - only_row_2
    torch.testing.assert_close(call(loss_mode, rows, first),
                               call(loss_mode, rows, only_row_2) + call(loss_mode, rows, without_row_2),
                               rtol=1e-12, atol=1e-14)


def test_geo_mean_is_not_additive_nor_global_and_bypass_mode_ignores_the_weights():
    rows = make_rows(**ROWS)
    generator = torch.Generator().manual_seed(4)
    first, second = (torch.rand(rows.mask.shape, generator=generator, dtype=torch.float64) + 0.1 for _ in range(2))
    assert not torch.allclose(call("geo_mean", rows, first + second),
                              call("geo_mean", rows, first) + call("geo_mean", rows, second), rtol=1e-3)
    # A plain mean over the rows at hand: the global token and row counts never enter it.
    config = actor_config("geo_mean")
    config.global_batch_info.update(dp_size=4, batch_num_tokens=10 * rows.tokens, global_batch_size=99)
    elsewhere = get_policy_loss_fn("geo_mean")(rows.old_log_prob, rows.log_prob, rows.advantages, rows.mask,
                                               "token-mean", config, first)[0]
    assert torch.equal(elsewhere, call("geo_mean", rows, first))
    assert torch.equal(call("bypass_mode", rows, first), call("bypass_mode", rows, 3 * first))


@pytest.mark.parametrize("loss_mode", sorted(SURROGATES))
def test_only_sapo_hard_codes_its_aggregation(loss_mode):
    rows = make_rows(**ROWS)
    token_mean, seq_mean = (call(loss_mode, rows, loss_agg_mode=mode) for mode in ("token-mean", SEQ_MEAN_TOKEN_MEAN))
    fixed = SURROGATES[loss_mode].aggregation == SEQ_MEAN_TOKEN_MEAN
    assert torch.equal(token_mean, seq_mean) is fixed


@pytest.mark.parametrize("loss_mode", sorted(SURROGATES))
def test_lambda_column_follows_the_sign_of_the_loss_value(loss_mode):
    """On-policy (r = 1) an objective-valued loss is −(positive)·A per token, a REINFORCE-form one is A·(−log π)
    (its value has the objective's opposite sign). One response with A > 0: the sign tells them apart."""
    rows = make_rows([6], ["p"], on_policy=True)
    rows.advantages = rows.advantages.abs()
    value = call(loss_mode, rows)
    expected = {LAMBDA_FROM_LOSS: -1.0, LAMBDA_FROM_RATIO_OBJECTIVE: 1.0}[SURROGATES[loss_mode].lambda_objective]
    assert torch.sign(value).item() == expected


def test_refusals_and_custom_losses_name_the_reason():
    with pytest.raises(UnsupportedSurrogate, match="'geo_mean'.*torch.mean"):
        surrogate_for("geo_mean")
    with pytest.raises(UnsupportedSurrogate, match="'bypass_mode'.*ignores rollout_is_weights"):
        surrogate_for("bypass_mode")
    with pytest.raises(UnsupportedSurrogate, match="lambda_grpo.custom_surrogates"):
        surrogate_for("my_plugin_loss")
    custom = surrogate_for("my_plugin_loss", ["my_plugin_loss"])
    assert (custom.aggregation, custom.lambda_objective) == (None, LAMBDA_FROM_RATIO_OBJECTIVE)
    with pytest.raises(UnsupportedSurrogate):
        surrogate_for("geo_mean", ["geo_mean"])  # a refusal is not overridden by vouching for it
