"""Diagnostics of a batch's response weights, logged every step (pure torch; no verl import).

Over the batch's non-empty responses i, grouped by prompt g, with n_i = |o_i| and f_i the weights:

    weight_min / weight_max / weight_mean   of f_i
    weight_entropy      mean over groups (G_g ≥ 2) of  −Σ_j p_j log p_j / log G_g,  p_j = f_j / Σ_{k∈g} f_k
                        1.0 = uniform within every group (DAPO, λ = 0); lower = more concentrated
    weight_length_corr  Pearson correlation of f_i with the response's in-group length z-score;
                        > 0 favours long responses, < 0 short ones, 0.0 when the weights do not vary.
                        Its sign is λ's; it reads ≈ ±1 for any λ ≠ 0, so it says nothing of strength:
    weight_long_short_ratio   mean over groups whose lengths differ of f(longest) / f(shortest)
                        (ties averaged): 1.0 = no preference, 2.0 = the longest response's tokens count
                        twice the shortest's; GRPO reads L_shortest/L_longest (< 1) here
    long_token_share_shift    Σ_{z_i>0} f_i n_i / Σ f_i n_i − Σ_{z_i>0} n_i / Σ n_i: the share of the batch's
                        token mass (its weight in the loss) that the weights move onto responses longer than
                        their group's mean, against uniform weights; 0 for DAPO, in (−1, 1)
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

    long = z > 0
    mass = weights * lengths
    return {
        "weight_min": weights.min().item(),
        "weight_max": weights.max().item(),
        "weight_mean": weights.mean().item(),
        "weight_entropy": entropy,
        "weight_length_corr": _pearson(weights, z),
        "weight_long_short_ratio": _long_short_ratio(weights, lengths, codes),
        "long_token_share_shift": (mass[long].sum() / mass.sum() - lengths[long].sum() / lengths.sum()).item(),
    }


def _long_short_ratio(weights: torch.Tensor, lengths: torch.Tensor, codes: torch.Tensor) -> float:
    """Mean over groups with differing lengths of mean f at the group's longest / mean f at its shortest."""
    groups = int(codes.max()) + 1
    longest = torch.full((groups,), -math.inf, dtype=lengths.dtype).scatter_reduce(0, codes, lengths, "amax")
    shortest = torch.full((groups,), math.inf, dtype=lengths.dtype).scatter_reduce(0, codes, lengths, "amin")
    at_longest, at_shortest = lengths == longest[codes], lengths == shortest[codes]
    weight_longest = torch.bincount(codes, weights * at_longest) / torch.bincount(codes, at_longest.double())
    weight_shortest = torch.bincount(codes, weights * at_shortest) / torch.bincount(codes, at_shortest.double())
    differing = longest > shortest
    if not bool(differing.any()):
        return 1.0
    return (weight_longest[differing] / weight_shortest[differing]).mean().item()


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    x = x - x.mean()
    y = y - y.mean()
    scale = math.sqrt(float(x.square().sum()) * float(y.square().sum()))
    return float((x * y).sum()) / scale if scale > 1e-12 else 0.0
