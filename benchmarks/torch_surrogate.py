"""verl 0.9.1's clipped PPO surrogate with token-mean aggregation, in plain torch.

Only for `loss_overhead.py` on machines without verl (a GPU box with torch alone): the same arithmetic as
`verl.trainer.ppo.core_algos.compute_policy_loss_vanilla` + `agg_loss(..., "token-mean")` (ratio clamp of
the log-ratio to ±20, clip to [1−ε, 1+ε], dual clip at c = 3 for negative advantages, masked sum over the
global token count × dp). tests/test_benchmarks.py checks it against verl's functions, value and gradient.
"""

from __future__ import annotations

import torch


def clipped_surrogate_token_mean(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_ratio: float = 0.2,
    clip_ratio_c: float = 3.0,
    batch_num_tokens: int | None = None,
    dp_size: int = 1,
    rollout_is_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Σ_{i,t} M·w·max(−A·r, −A·clip(r, 1−ε, 1+ε)) (dual-clipped for A < 0) / T × dp, tensors (bs, len).

    w = rollout_is_weights (broadcastable to (bs, len)) multiplies the per-token loss, as in verl.
    """
    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0))
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_ratio, 1 + clip_ratio)
    pessimistic = torch.maximum(unclipped, clipped)
    dual_clipped = torch.min(-advantages * clip_ratio_c, pessimistic)
    per_token = torch.where(advantages < 0, dual_clipped, pessimistic)
    if rollout_is_weights is not None:
        per_token = per_token * rollout_is_weights
    tokens = response_mask.sum() if batch_num_tokens is None else batch_num_tokens
    return (per_token * response_mask).sum() / tokens * dp_size
