"""Diagnostics of a batch's response weights, logged every step (pure torch; no verl import).

    weight_min / weight_max / weight_mean   over non-empty responses
    weight_entropy      mean over groups (G_g ≥ 2) of  −Σ_j p_j log p_j / log G_g,  p_j = f_j / Σ_{k∈g} f_k
                        1.0 = uniform within every group (DAPO, λ = 0); lower = more concentrated
    weight_length_corr  Pearson correlation of f_i with the response's in-group length z-score,
                        over non-empty responses; > 0 favours long responses, < 0 short ones,
                        0.0 when the weights do not vary (DAPO)
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import torch

from lambda_grpo.weights import group_codes


def weight_diagnostics(
    weights: torch.Tensor, lengths: torch.Tensor, group_ids: Sequence[Hashable] | torch.Tensor
) -> dict[str, float]:
    """The statistics of the module docstring, for weights f [B] of responses with lengths [B]."""
    present = lengths > 0
    if not bool(present.any()):
        return {}
    weights = weights.detach().double()[present]
    lengths = lengths.double()[present]
    codes = group_codes(group_ids, len(present))[present.cpu()].to(weights.device)
    codes = torch.unique(codes, return_inverse=True)[1]

    count = torch.bincount(codes).double()
    mean_length = torch.bincount(codes, lengths) / count
    deviation = lengths - mean_length[codes]
    std_length = (torch.bincount(codes, deviation.square()) / (count - 1).clamp(min=1)).sqrt()
    z = torch.where(std_length[codes] > 0, deviation / std_length[codes], torch.zeros_like(deviation))

    share = weights / torch.bincount(codes, weights)[codes].clamp(min=torch.finfo(weights.dtype).tiny)
    plogp = torch.where(share > 0, share * share.log(), torch.zeros_like(share))
    group_entropy = -torch.bincount(codes, plogp)
    multi = count >= 2
    entropy = (group_entropy[multi] / count[multi].log()).mean().item() if bool(multi.any()) else 1.0

    return {
        "weight_min": weights.min().item(),
        "weight_max": weights.max().item(),
        "weight_mean": weights.mean().item(),
        "weight_entropy": entropy,
        "weight_length_corr": _pearson(weights, z),
    }


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x = x - x.mean()
    y = y - y.mean()
    scale = math.sqrt(float(x.square().sum()) * float(y.square().sum()))
    return float((x * y).sum()) / scale if scale > 1e-12 else 0.0
