"""Response weights f_i of the unified GRPO loss family (pure torch: no verl, no ray).

Every scheme below shares one loss, differing only in the per-response weight f_i:

    L = - Σ_i f_i Σ_t ℓ_it / Σ_j |o_j|                                        [P, R, I]

with ℓ_it the clipped PPO surrogate of token t of response o_i and Σ_j |o_j| the number of valid tokens
of the (global) batch. For the G_g responses of one prompt group g, with μ_g = mean_j |o_j|:

    "dapo"     f_i = 1                                   token-mean (DAPO's aggregation)    [P]
    "grpo"     f_i = μ_g / |o_i|                          sequence-mean of token-means       [S]
    "dr_grpo"  f_i = μ_g / L_max                          constant normaliser (Dr. GRPO)     [S, I]
    "lambda"   z_i = (|o_i| − μ_g) / (σ_g + eps)          σ_g: unbiased (ddof=1) std          [S, R]
               h_i = 1 + r·z_i                            r = 1/9 in the paper                [R]
               g_i = h_i^λ                                λ: one learnable global scalar      [S]
               f_i = G_g · exp(g_i) / Σ_{j∈g} exp(g_j)    normalization="softmax"            [S, T]
               f_i = G_g · g_i / Σ_{j∈g} g_j              normalization="power" (other reading) [R]

λ = 0 gives g ≡ 1 and f ≡ 1 exactly: DAPO. λ > 0 moves weight towards longer responses of a group, λ < 0
towards shorter ones. Tags: [P] paper, [R] its reviews, [S] summaries, [T] third-party code, [I] inferred;
see README "What λ-GRPO is".

Conventions shared by all schemes:
- A zero-length response (a padding row) gets f = 0 and is left out of its group's statistics; G_g counts
  the group's non-empty responses.
- Singleton groups and zero-variance groups get z = 0 (so h = 1 and f = 1).
- h ≤ 0 is impossible while r·(G−1)/√G < 1 (|z| ≤ (G−1)/√G for the unbiased std); `check_lift_positive`
  rejects configurations where it could happen, at configuration time.

Two entry points compute the same numbers:
- `response_weights(lengths, group_ids, ...)`: the whole batch is at hand (driver, tests, benchmarks).
- `weights_from_group_lengths(group_lengths, position, ...)`: each row carries the lengths of its whole
  group and its own position in it. This is what a loss sees in a micro-batch, where the other members of
  a group sit in other micro-batches or on other ranks (`group_length_table` builds those rows).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

SCHEMES = ("dapo", "grpo", "dr_grpo", "lambda")
NORMALIZATIONS = ("softmax", "power")
PAPER_R = 1.0 / 9.0

GroupIds = Sequence[Hashable] | torch.Tensor


class OptionError(ValueError):
    """An invalid option value; `field` names the option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class WeightOptions:
    """The options of one weight scheme; validated on construction (see the module docstring).

    Attributes:
        scheme: one of SCHEMES.
        r: lift slope of the "lambda" scheme, h = 1 + r·z.
        normalization: "softmax" or "power" (the "lambda" scheme only).
        eps: added to the group std before dividing.
        max_response_length: L_max of "dr_grpo" (required there, ignored elsewhere).
        max_group_size: the largest group the configuration can produce (rollout.n); when given,
            `check_lift_positive` proves h > 0 for every group up front.
    """

    scheme: str = "lambda"
    r: float = PAPER_R
    normalization: str = "softmax"
    eps: float = 1e-6
    max_response_length: int | None = None
    max_group_size: int | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise OptionError("scheme", f"unknown weight scheme {self.scheme!r}; choose one of {SCHEMES}")
        if self.normalization not in NORMALIZATIONS:
            raise OptionError(
                "normalization", f"unknown normalization {self.normalization!r}; choose one of {NORMALIZATIONS}"
            )
        if not (math.isfinite(self.r) and self.r >= 0):
            raise OptionError("r", f"r must be a finite number >= 0, got {self.r!r}")
        if not (math.isfinite(self.eps) and self.eps >= 0):
            raise OptionError("eps", f"eps must be a finite number >= 0, got {self.eps!r}")
        if self.scheme == "dr_grpo" and (self.max_response_length is None or self.max_response_length <= 0):
            raise OptionError(
                "max_response_length",
                "the dr_grpo scheme needs max_response_length (its constant normaliser L_max), "
                f"got {self.max_response_length!r}",
            )
        if self.scheme == "lambda" and self.max_group_size is not None:
            try:
                check_lift_positive(self.r, self.max_group_size)
            except ValueError as error:
                raise OptionError("r", str(error)) from None


def check_lift_positive(r: float, max_group_size: int) -> None:
    """Raise ValueError unless h = 1 + r·z > 0 for every group of up to `max_group_size` responses.

    With the unbiased std, |z_i| ≤ (G−1)/√G within a group of G, so h > 0 is guaranteed iff
    r·(G−1)/√G < 1 (for r = 1/9: any G ≤ 81). The bound grows with G, so the largest group decides.
    """
    if max_group_size < 1:
        raise ValueError(f"max_group_size must be >= 1, got {max_group_size}")
    bound = r * (max_group_size - 1) / math.sqrt(max_group_size)
    if bound >= 1.0:
        largest_safe = max((g for g in range(1, max_group_size + 1) if r * (g - 1) / math.sqrt(g) < 1.0), default=1)
        raise ValueError(
            f"r={r:g} with groups of {max_group_size} responses allows h = 1 + r·z <= 0 "
            f"(r·(G−1)/√G = {bound:.3f} >= 1), where h^λ is undefined; lower r below "
            f"{math.sqrt(max_group_size) / (max_group_size - 1):.4f} or use groups of at most {largest_safe}"
        )


def group_length_table(
    lengths: torch.Tensor, group_ids: GroupIds, min_width: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row, the lengths of all responses of its group, and the row's own position there.

    Args:
        lengths: [B] valid response lengths (int or float), rows in any order.
        group_ids: B hashable prompt ids (a sequence, or a 1-d tensor); groups may be interleaved.
        min_width: the table has max(min_width, largest group) columns; a fixed width (e.g. rollout.n)
            keeps the shape of the table the same from batch to batch.

    Returns:
        group_lengths: [B, W] float, row i = lengths of i's group in first-appearance order, zero-padded.
        position: [B] int64, group_lengths[i, position[i]] == lengths[i].
    """
    lengths = _as_length_tensor(lengths)
    codes = group_codes(group_ids, len(lengths), lengths.device)
    order = torch.argsort(codes, stable=True)
    sorted_codes = codes[order]
    counts = torch.bincount(codes)
    starts = torch.cumsum(counts, 0) - counts
    position_sorted = torch.arange(len(codes), device=codes.device) - starts[sorted_codes]
    width = max(int(counts.max()) if len(counts) else 0, min_width)
    table = torch.zeros(len(counts), width, dtype=lengths.dtype, device=lengths.device)
    table[sorted_codes, position_sorted] = lengths[order]
    position = torch.empty_like(codes)
    position[order] = position_sorted
    return table[codes], position


def weights_from_group_lengths(
    group_lengths: torch.Tensor,
    position: torch.Tensor,
    options: WeightOptions,
    lam: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """f_i for every row, from its group's lengths (zeros = absent) and its own position in the group.

    Args:
        group_lengths: [B, W] lengths of the row's whole group, zero-padded (see `group_length_table`).
        position: [B] int64 column of the row's own response.
        options: the scheme and its options.
        lam: λ, a float or a 0-d tensor; with requires_grad the result is differentiable in it.

    Returns:
        [B] weights in the floating dtype of `group_lengths` (or λ's, if wider); 0 for empty responses.
    """
    if group_lengths.dim() != 2 or position.shape != group_lengths.shape[:1]:
        raise ValueError(
            f"group_lengths must be [B, W] and position [B]; got {tuple(group_lengths.shape)} "
            f"and {tuple(position.shape)}"
        )
    dtype = _compute_dtype(group_lengths, lam)
    lengths = group_lengths.to(dtype)
    present = lengths > 0
    group_size = present.sum(-1)
    own_length = lengths.gather(1, position.long().unsqueeze(1)).squeeze(1)
    own_present = own_length > 0
    group_mean = lengths.sum(-1) / group_size.clamp(min=1)

    if options.scheme == "dapo":
        weights = torch.ones_like(own_length)
    elif options.scheme == "grpo":
        weights = group_mean / torch.where(own_present, own_length, torch.ones_like(own_length))
    elif options.scheme == "dr_grpo":
        weights = group_mean / options.max_response_length
    else:
        weights = _lambda_weights(lengths, present, group_size, group_mean, position, options, lam, dtype)
    return torch.where(own_present, weights, torch.zeros_like(weights))


def response_weights(
    lengths: torch.Tensor,
    group_ids: GroupIds,
    scheme: str,
    lam: float | torch.Tensor = 0.0,
    r: float = PAPER_R,
    normalization: str = "softmax",
    eps: float = 1e-6,
    max_response_length: int | None = None,
) -> torch.Tensor:
    """f_i of `scheme` for a whole batch of responses (formulas in the module docstring).

    Args:
        lengths: [B] valid response lengths, any order; 0 marks a padding row (weight 0).
        group_ids: B hashable prompt ids (sequence or tensor); groups may be interleaved, incomplete or
            of size 1.
        scheme: "dapo", "grpo", "dr_grpo" or "lambda".
        lam: λ of the "lambda" scheme; float or 0-d tensor (differentiable when it requires grad).
        r, normalization, eps: options of the "lambda" scheme.
        max_response_length: L_max of "dr_grpo".

    Returns:
        [B] weights, summing to G_g within each group for the "lambda" and "dapo" schemes.
    """
    options = WeightOptions(scheme, r, normalization, eps, max_response_length)
    group_lengths, position = group_length_table(lengths, group_ids)
    return weights_from_group_lengths(group_lengths, position, options, lam)


def _lambda_weights(
    lengths: torch.Tensor,
    present: torch.Tensor,
    group_size: torch.Tensor,
    group_mean: torch.Tensor,
    position: torch.Tensor,
    options: WeightOptions,
    lam: float | torch.Tensor,
    dtype: torch.dtype,
) -> torch.Tensor:
    """G_g·softmax_g(h^λ) or G_g·h^λ/Σ_g h^λ at the row's own position (all statistics per row's group)."""
    deviation = torch.where(present, lengths - group_mean.unsqueeze(1), torch.zeros_like(lengths))
    variance = deviation.square().sum(-1) / (group_size - 1).clamp(min=1)
    z = deviation / (variance.sqrt() + options.eps).unsqueeze(1)
    lift = 1 + options.r * z
    _check_lift_values(lift, present, options.r, lengths.shape[1])

    lam = torch.as_tensor(lam, dtype=dtype, device=lengths.device)
    powered = torch.pow(lift, lam)
    if options.normalization == "softmax":
        shift = powered.masked_fill(~present, -math.inf).amax(-1, keepdim=True).detach()
        scores = torch.where(present, torch.exp(powered - shift), torch.zeros_like(powered))
    else:
        scores = torch.where(present, powered, torch.zeros_like(powered))
    own_score = scores.gather(1, position.long().unsqueeze(1)).squeeze(1)
    # G·s_i/Σs rather than G·(s_i/Σs): at λ = 0 every s is exactly 1 and this is exactly 1.
    return group_size.to(dtype) * own_score / scores.sum(-1).clamp(min=torch.finfo(dtype).tiny)


def _check_lift_values(lift: torch.Tensor, present: torch.Tensor, r: float, width: int) -> None:
    """Raise if some h ≤ 0; skipped (no device sync) when the group width already proves h > 0."""
    if width <= 1 or r * (width - 1) / math.sqrt(width) < 1.0:
        return
    if bool(((lift <= 0) & present).any()):
        raise ValueError(
            f"h = 1 + r·z <= 0 for some response (r={r:g}, groups of up to {width}): h^λ is undefined; "
            "lower r (see weights.check_lift_positive)"
        )


def _compute_dtype(group_lengths: torch.Tensor, lam: float | torch.Tensor) -> torch.dtype:
    dtype = group_lengths.dtype if group_lengths.is_floating_point() else torch.get_default_dtype()
    if isinstance(lam, torch.Tensor) and lam.is_floating_point():
        dtype = torch.promote_types(dtype, lam.dtype)
    return dtype


def _as_length_tensor(lengths: torch.Tensor) -> torch.Tensor:
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be a 1-d tensor [B], got shape {tuple(lengths.shape)}")
    if lengths.is_floating_point():
        if not bool(torch.isfinite(lengths).all()):
            raise ValueError("lengths must be finite")
    else:
        lengths = lengths.to(torch.get_default_dtype())
    if bool((lengths < 0).any()):
        raise ValueError("lengths must be >= 0 (0 marks a padding row)")
    return lengths


def group_codes(group_ids: GroupIds, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Map B hashable ids to int64 codes 0..K−1 (first-appearance order for sequences)."""
    if isinstance(group_ids, torch.Tensor) and group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-d, got shape {tuple(group_ids.shape)}")
    if len(group_ids) != batch_size:
        raise ValueError(f"lengths has {batch_size} rows but group_ids has {len(group_ids)}")
    if isinstance(group_ids, torch.Tensor):
        return torch.unique(group_ids, return_inverse=True)[1].to(device=device, dtype=torch.int64)
    code_of: dict[Hashable, int] = {}
    codes = [code_of.setdefault(group_id, len(code_of)) for group_id in group_ids]
    return torch.tensor(codes, dtype=torch.int64, device=device)
