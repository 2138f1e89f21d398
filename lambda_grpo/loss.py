"""The `lambda_grpo` policy loss, registered in verl's policy-loss registry (verl glue).

    L = Σ_i f_i Σ_t ℓ_it(A_i) · dp / T          (verl's "token-mean" agg_loss, global normalisation)

ℓ_it is verl's own clipped surrogate (`compute_policy_loss_vanilla`: ratio clip, dual clip, rollout-IS
weights), T = `batch_num_tokens` counted over the global mini-batch by verl's engine and handed to the loss
in `config.global_batch_info`, f_i the per-response weights of `lambda_grpo.weights`.

Weighting a response by f_i is the same as scaling its advantage, ℓ(f·A) = f·ℓ(A) for f > 0, because
every branch of the clipped surrogate (min/max with the clipped ratio, the dual-clip bound, the sign test
on A) is positively homogeneous in A; by Euler's theorem the gradients in f (hence in λ) agree too. We
multiply the per-token loss, through the per-token weight verl's surrogate already applies
(`rollout_is_weights`, combined with any rollout-correction weights): its backward to f is one product
with ℓ, where scaled advantages would make every branch of the surrogate differentiate in A as well
(measured by benchmarks/loss_overhead.py). The surrogate, its clip metrics and the normalisation stay
verl's, and at f ≡ 1 (DAPO, λ = 0) the loss *is* verl's vanilla token-mean loss, bit for bit.

verl's `ppo_loss` calls a registered loss with a fixed set of tensors and no per-sample extras, so the
weights reach this loss in one of two ways:
- explicitly, `sample_weights=...` (tests, or any caller of its own);
- bound for the duration of one `ppo_loss` call with `sample_weights_bound(...)`: this is how the actor's
  loss path (`lambda_grpo.actor_loss`) calls verl's unchanged `ppo_loss`, so entropy and KL terms and the
  metric conventions stay verl's.
Without either, the loss raises: a silent fallback to unit weights would quietly train DAPO.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla, register_policy_loss

LOSS_NAME = "lambda_grpo"

_bound_sample_weights: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar(
    "lambda_grpo_sample_weights", default=None
)


class MissingSampleWeightsError(RuntimeError):
    """The `lambda_grpo` loss was called without per-response weights."""


@contextlib.contextmanager
def sample_weights_bound(sample_weights: torch.Tensor) -> Iterator[None]:
    """Make `sample_weights` [B] the weights of every `lambda_grpo` loss call inside the block."""
    token = _bound_sample_weights.set(sample_weights)
    try:
        yield
    finally:
        _bound_sample_weights.reset(token)


@register_policy_loss(LOSS_NAME)
def compute_policy_loss_lambda_grpo(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
    *,
    sample_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """verl's clipped surrogate weighted per response by f_i, aggregated by global token-mean.

    Args:
        old_log_prob, log_prob, advantages, response_mask: (bs, resp_len), as verl passes them.
        loss_agg_mode: must be "token-mean": the family's normaliser is the token count Σ_j |o_j|.
        config: the actor's `ActorConfig` (clip ratios, `global_batch_info`).
        rollout_is_weights: optional (bs, resp_len) rollout-correction weights, as in verl.
        sample_weights: (bs,) f_i > 0 (0 only for padding rows); may carry a gradient to λ. Falls back to the
            weights bound by `sample_weights_bound`; with neither, raises MissingSampleWeightsError.

    Returns:
        The loss (a share of the global-batch loss, as verl's losses return it) and `actor/…` metrics:
        verl's clip metrics plus `actor/lambda_grpo/weight_{min,max,mean}` over this micro-batch's
        non-empty responses.
    """
    if sample_weights is None:
        sample_weights = _bound_sample_weights.get()
    if sample_weights is None:
        raise MissingSampleWeightsError(
            "the 'lambda_grpo' policy loss needs per-response weights (sample_weights) and got none. "
            "Train through `python -m lambda_grpo.main`, which installs lambda_grpo.actor_loss as the "
            "actor's loss function (it computes the weights from the group fields written by the driver); "
            "a direct caller passes sample_weights=... or binds them with "
            "lambda_grpo.loss.sample_weights_bound(...)."
        )
    if loss_agg_mode != "token-mean":
        raise ValueError(
            f"the 'lambda_grpo' loss aggregates by global token-mean (its normaliser is Σ_j |o_j|); "
            f"got actor.loss_agg_mode={loss_agg_mode!r}. Set actor_rollout_ref.actor.loss_agg_mode=token-mean "
            "and choose the scheme with lambda_grpo.scheme instead."
        )
    if sample_weights.shape != advantages.shape[:1]:
        raise ValueError(
            f"sample_weights must have shape ({advantages.shape[0]},) like the batch, got {tuple(sample_weights.shape)}"
        )

    token_weights = sample_weights.to(advantages.dtype).unsqueeze(-1)
    if rollout_is_weights is not None:
        token_weights = rollout_is_weights * token_weights
    pg_loss, metrics = compute_policy_loss_vanilla(
        old_log_prob=old_log_prob,
        log_prob=log_prob,
        advantages=advantages,
        response_mask=response_mask,
        loss_agg_mode=loss_agg_mode,
        config=config,
        rollout_is_weights=token_weights,
    )
    metrics.update(_weight_metrics(sample_weights))
    return pg_loss, metrics


def _weight_metrics(sample_weights: torch.Tensor) -> dict[str, float]:
    """min / max / mean of f over this micro-batch's non-empty responses (f > 0; 0.0 if it has none).

    Every key is always present: verl aggregates metrics across ranks and micro-batches element-wise
    and refuses lists of unequal length.
    """
    weights = sample_weights.detach()
    weights = weights[weights > 0]
    if weights.numel() == 0:
        weights = torch.zeros(1, dtype=sample_weights.dtype, device=sample_weights.device)
    values = torch.stack([weights.min(), weights.max(), weights.mean()]).tolist()
    return {f"actor/lambda_grpo/weight_{name}": value for name, value in zip(("min", "max", "mean"), values)}
