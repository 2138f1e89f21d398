"""λ-GRPO's policy loss on one micro-batch: per-response weights through verl's `rollout_is_weights` (verl glue).

    L = Σ_i f_i Σ_t w_it·ℓ_it · dp / T   (+ verl's entropy and KL terms, unchanged: token-mean)

ℓ_it is the token loss of the user's surrogate (`actor.policy_loss.loss_mode`, lambda_grpo.surrogates), w_it
the real rollout-correction IS weights (1 without `algorithm.rollout_correction`), T = `batch_num_tokens` and
dp = `dp_size` as verl's engine counts them over the global mini-batch, f_i the per-response weights of
`lambda_grpo.weights` (with λ's graph, when λ is learned).

One explicit data path: `weighted_ppo_loss` writes c_i·w_it into a copy of the micro-batch's
`rollout_is_weights` field, c_i = f_i·κ_i, and calls verl's own `ppo_loss` unchanged, which hands the field to
the surrogate; every accepted surrogate multiplies it into its per-token loss before `agg_loss`. κ_i undoes
the aggregation a surrogate hard-codes, so the `algo` group decides the aggregation on every surrogate:

    token-mean            κ_i = 1                         (every surrogate but sapo; start-up fixes the mode)
    seq-mean-token-mean   κ_i = (|o_i| + 1e-8)·N / T      (sapo: its Σ_t/(|o_i|+1e-8)/N becomes Σ_t/T)

c_i is formed in float64 and cast to the token dtype once, so f ≡ 1 on a token-mean surrogate writes
exactly 1.0: λ = 0 and algo=dapo are verl's own surrogate bit for bit, with or without IS weights.

For REINFORCE-form surrogates (lambda_grpo.surrogates) the weights enter the surrogate detached, and λ's
gradient comes from a term of value exactly 0,

    J − sg(J),   J = Σ_i c_i Σ_t w_it·(−A_it·r_it) · dp / T,   r_it = exp(clamp(log π − log π_old, ±20))

with log π detached: the importance-weighted policy objective of the same tensors (verl's ratio clamp), so
the policy's loss value and gradient stay the surrogate's own and λ follows the objective.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import agg_loss
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import no_padding_2_padding

from lambda_grpo.surrogates import LAMBDA_FROM_RATIO_OBJECTIVE, SEQ_MEAN_TOKEN_MEAN, TOKEN_MEAN, Surrogate
from lambda_grpo.weights import seq_mean_denominator

IS_WEIGHTS_KEY = "rollout_is_weights"


def weighted_ppo_loss(
    config: Any,
    model_output: dict[str, torch.Tensor],
    data: TensorDict,
    dp_group: Any = None,
    *,
    row_weights: torch.Tensor,
    surrogate: Surrogate,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl's `ppo_loss` on `data` with each response's token losses weighted by `row_weights` (f_i).

    Args:
        config: the actor's `ActorConfig`; `policy_loss.loss_mode` is `surrogate.loss_mode`.
        model_output, data, dp_group: as verl's engine passes them to `ppo_loss`.
        row_weights: [B] f_i ≥ 0 (0 for empty rows); may carry a gradient to λ.
        surrogate: how the configured surrogate carries the weight.

    Returns:
        `ppo_loss`'s loss (this micro-batch's share of the global-batch loss) and its metrics.
    """
    mask = padded(data["response_mask"]).bool()
    if row_weights.shape != mask.shape[:1]:
        raise ValueError(f"row_weights must have shape ({mask.shape[0]},) like the batch, got {tuple(row_weights.shape)}")
    token_dtype = data["old_log_probs"].dtype
    per_row = row_weights.double() * aggregation_rescale(
        surrogate.aggregation or config.loss_agg_mode, mask.sum(-1), *token_and_row_counts(data, mask)
    )
    weights = per_row.to(token_dtype).unsqueeze(-1).expand(mask.shape)
    if IS_WEIGHTS_KEY in data.keys():
        weights = padded(data[IS_WEIGHTS_KEY]).to(token_dtype) * weights
    objective_from_ratio = surrogate.lambda_objective == LAMBDA_FROM_RATIO_OBJECTIVE and weights.requires_grad
    micro_batch = data.copy()
    micro_batch[IS_WEIGHTS_KEY] = weights.detach() if objective_from_ratio else weights
    loss, metrics = ppo_loss(config, model_output, micro_batch, dp_group)
    if objective_from_ratio:
        loss = loss + ratio_objective_lambda_term(model_output, data, mask, weights)
    return loss, metrics


def aggregation_rescale(mode: str, lengths: torch.Tensor, tokens: float, rows: float) -> torch.Tensor:
    """κ_i [B] float64 turning the surrogate's aggregation `mode` into token-mean over T (module docstring)."""
    if mode == TOKEN_MEAN:
        return torch.ones(lengths.shape, dtype=torch.float64, device=lengths.device)
    if mode == SEQ_MEAN_TOKEN_MEAN:
        return seq_mean_denominator(lengths) * rows / tokens
    raise ValueError(
        f"the surrogate aggregates by {mode!r}; λ-GRPO's weights need token-mean "
        "(set actor_rollout_ref.actor.loss_agg_mode=token-mean and choose the aggregation with algo=...)"
    )


def token_and_row_counts(data: TensorDict, mask: torch.Tensor) -> tuple[float, float]:
    """(T, N) of the global mini-batch as verl's agg_loss uses them: `batch_num_tokens` and
    `global_batch_size` from the engine, or, when absent (a single process), the micro-batch's valid tokens
    and non-empty rows."""
    tokens = _non_tensor(data, "batch_num_tokens")
    rows = _non_tensor(data, "global_batch_size")
    tokens = float(mask.sum()) if tokens is None else float(tokens)
    rows = float((mask.sum(-1) > 0).sum()) if rows is None else float(rows)
    return max(tokens, 1.0), max(rows, 1.0)


def ratio_objective_lambda_term(
    model_output: dict[str, torch.Tensor], data: TensorDict, mask: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """J − sg(J) for the importance-weighted policy objective J (module docstring): value 0, gradient ∂J/∂λ."""
    log_prob = no_padding_2_padding(model_output["log_probs"], data).detach()
    old_log_prob = padded(data["old_log_probs"])
    advantages = padded(data["advantages"])
    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0))
    tokens = _non_tensor(data, "batch_num_tokens")
    objective = agg_loss(
        -advantages * ratio * weights, mask, TOKEN_MEAN, dp_size=_non_tensor(data, "dp_size") or 1,
        batch_num_tokens=tokens,
    )
    return objective - objective.detach()


def padded(tensor: torch.Tensor) -> torch.Tensor:
    """A per-token field as a right-padded tensor (TransferQueue hands them back nested)."""
    return tensor.to_padded_tensor(0) if tensor.is_nested else tensor


def _non_tensor(data: TensorDict, key: str) -> Any:
    return data[key] if key in data.keys() else None
