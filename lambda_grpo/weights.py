"""Response weights f_i of the unified GRPO loss family (pure torch: no verl, no ray).

Every scheme below shares one loss, differing only in the per-response weight f_i:

    L = Σ_i f_i Σ_t ℓ_it / T          T = Σ_j |o_j|, the valid tokens of the global mini-batch    [P, R, I]

with ℓ_it the token loss of response o_i's token t (the policy surrogate's). For the fixed members,
μ̄ = T / N is the mini-batch's mean response length, N its number of rows (verl's `global_batch_size`,
which counts the zero-mask padding rows verl appends); with it each fixed member *is* one of verl's
aggregation modes, on any split of the mini-batch over micro-batches and ranks (T and N are global):

    "dapo"     f_i = 1                      verl's token-mean: Σ_i Σ_t ℓ_it / T                    [P]
    "grpo"     f_i = μ̄ / (|o_i| + 1e-8)     verl's seq-mean-token-mean: Σ_i (Σ_t ℓ_it/(|o_i|+1e-8)) / N,
                                            GRPO's mean over responses of per-response token means [S, I]
    "dr_grpo"  f_i = μ̄ / L_max              verl's seq-mean-token-sum-norm with loss_scale_factor = L_max:
                                            Σ_i Σ_t ℓ_it / (N·L_max), Dr. GRPO's constant normaliser [S, I]

(the 1e-8 is verl's own, so the equality is exact). λ-GRPO weighs responses within their prompt group g of
G_g non-empty responses, μ_g and σ_g the group's length mean and unbiased (ddof=1) std:

    "lambda"   z_i = (|o_i| − μ_g) / (σ_g + eps)                                                    [S, R]
               h_i = 1 + r·z_i                            r = 1/9 in the paper                      [R]
               g_i = h_i^λ                                λ: one learnable global scalar            [S]
               f_i = G_g · exp(g_i) / Σ_{j∈g} exp(g_j)    normalization="softmax"                   [S, T]
               f_i = G_g · g_i / Σ_{j∈g} g_j              normalization="power" (other reading)     [R]

λ = 0 gives g ≡ 1 and f ≡ 1 exactly: DAPO. λ > 0 moves weight towards longer responses of a group, λ < 0
towards shorter ones. Tags: [P] paper, [R] its reviews, [S] summaries, [T] third-party code, [I] inferred;
see README "What λ-GRPO is".

Conventions shared by all schemes:
- An empty response (zero length: a padding row, a failed or rejected rollout) gets f = 0 and contributes
  exactly 0 to λ's gradient; it is left out of its group's statistics (G_g counts non-empty responses).
  Every masked entry is replaced by a safe value *before* pow/exp, so no 0·inf reaches the backward pass.
- Singleton groups and zero-variance groups get z = 0 (so h = 1 and f = 1).
- h ≤ 0 is impossible while r·(G−1)/√G < 1 (|z| ≤ (G−1)/√G for the unbiased std), and h^λ stays finite in
  float32 while |λ| ≤ `max_safe_lambda(r, G)`; `check_lift_positive` and `check_lambda_range` refuse the
  configurations that break either, at start-up.

Entry points:
- `response_weights(lengths, group_ids, scheme, ...)`: the whole batch is at hand (driver, tests, benchmarks).
- `lambda_weights(group_lengths, position, options, λ)`: each row carries the lengths of its whole group and
  its own position in it; this is what a loss sees in a micro-batch, where the other members of a group sit
  in other micro-batches or on other ranks (`group_length_table` builds those rows).
- `fixed_weights(lengths, options, mean_length)`: the fixed members, from each row's own length and μ̄.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

SCHEMES = ("dapo", "grpo", "dr_grpo", "lambda")
NORMALIZATIONS = ("softmax", "power")
PAPER_R = 1.0 / 9.0

# verl's agg_loss divides each response's token sum by (|o_i| + 1e-8) in seq-mean-token-mean.
SEQ_MEAN_EPS = 1e-8

# ln of float32's largest finite value (≈ 88.72): h^λ must stay below it.
FLOAT32_LOG_MAX = math.log(torch.finfo(torch.float32).max)

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
        eps: > 0, added to the group std before dividing (an all-equal group would otherwise give 0/0).
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
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise OptionError(
                "eps", f"eps must be a finite number > 0 (a group of equal lengths has σ = 0: z = 0/eps), got {self.eps!r}"
            )
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


def lift_bound(r: float, group_size: int) -> float:
    """The largest |h − 1| = r·|z| a group of `group_size` responses can produce: r·(G−1)/√G (unbiased std)."""
    return r * (group_size - 1) / math.sqrt(group_size) if group_size > 1 else 0.0


def check_lift_positive(r: float, max_group_size: int) -> None:
    """Raise ValueError unless h = 1 + r·z > 0 for every group of up to `max_group_size` responses.

    With the unbiased std, |z_i| ≤ (G−1)/√G within a group of G, so h > 0 is guaranteed iff
    r·(G−1)/√G < 1 (for r = 1/9: any G ≤ 82). The bound grows with G, so the largest group decides.
    """
    if max_group_size < 1:
        raise ValueError(f"max_group_size must be >= 1, got {max_group_size}")
    bound = lift_bound(r, max_group_size)
    if bound >= 1.0:
        largest_safe = max((g for g in range(1, max_group_size + 1) if lift_bound(r, g) < 1.0), default=1)
        raise ValueError(
            f"r={r:g} with groups of {max_group_size} responses allows h = 1 + r·z <= 0 "
            f"(r·(G−1)/√G = {bound:.3f} >= 1), where h^λ is undefined; lower r below "
            f"{math.sqrt(max_group_size) / (max_group_size - 1):.4f} or use groups of at most {largest_safe}"
        )


def max_safe_lambda(r: float, max_group_size: int) -> float:
    """The largest |λ| for which h^λ, and its λ-derivative summed over a group, stay finite in float32.

    h ranges over [1 − b, 1 + b] with b = `lift_bound(r, G)`, so |ln h| ≤ ℓ = max(ln(1 + b), −ln(1 − b)) and
    h^λ ≤ e^{|λ|·ℓ}. The softmax's backward sums G terms h_j^λ·ln h_j (|ln h| < 1 here), so

        |λ| ≤ (ln(float32 max) − ln G) / ℓ          (inf when r = 0 or G = 1: h ≡ 1)

    keeps every forward and backward value finite. Requires b < 1 (`check_lift_positive`).
    """
    bound = lift_bound(r, max_group_size)
    if bound == 0.0:
        return math.inf
    largest_log_lift = max(math.log1p(bound), -math.log1p(-bound))
    return (FLOAT32_LOG_MAX - math.log(max_group_size)) / largest_log_lift


def check_lambda_range(bounds: tuple[float, float], r: float, max_group_size: int) -> None:
    """Raise ValueError if λ may leave the range where h^λ stays finite in float32 (`max_safe_lambda`)."""
    limit = max_safe_lambda(r, max_group_size)
    low, high = bounds
    if max(-low, high) > limit:
        bound = lift_bound(r, max_group_size)
        raise ValueError(
            f"bounds {[low, high]} let h^λ overflow float32 for groups of {max_group_size} with r={r:g} "
            f"(h ∈ [{1 - bound:.4f}, {1 + bound:.4f}]): every loss would be NaN and training would stop "
            f"learning; keep both bounds within ±{math.floor(limit * 100) / 100:g} for these settings"
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


def lambda_weights(
    group_lengths: torch.Tensor,
    position: torch.Tensor,
    options: WeightOptions,
    lam: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """λ-GRPO's f_i for every row, from its group's lengths (zeros = absent) and its own position in the group.

    Args:
        group_lengths: [B, W] lengths of the row's whole group, zero-padded (see `group_length_table`).
        position: [B] int64 column of the row's own response.
        options: a "lambda" scheme's options.
        lam: λ, a float or a 0-d tensor; with requires_grad the result is differentiable in it.

    Returns:
        [B] weights in the floating dtype of `group_lengths` (or λ's, if wider); exactly 0, with exactly 0
        gradient, for empty responses.
    """
    if options.scheme != "lambda":
        raise ValueError(f"lambda_weights computes the lambda scheme, got scheme={options.scheme!r}")
    if group_lengths.dim() != 2 or position.shape != group_lengths.shape[:1]:
        raise ValueError(
            f"group_lengths must be [B, W] and position [B]; got {tuple(group_lengths.shape)} "
            f"and {tuple(position.shape)}"
        )
    dtype = _compute_dtype(group_lengths, lam)
    lengths = group_lengths.to(dtype)
    present = lengths > 0
    group_size = present.sum(-1)
    group_mean = lengths.sum(-1) / group_size.clamp(min=1)
    # Absent entries get deviation 0, so z = 0 and h = 1 there: h^λ = 1 and d(h^λ)/dλ = ln(1) = 0.
    deviation = torch.where(present, lengths - group_mean.unsqueeze(1), torch.zeros_like(lengths))
    variance = deviation.square().sum(-1) / (group_size - 1).clamp(min=1)
    lift = 1 + options.r * deviation / (variance.sqrt() + options.eps).unsqueeze(1)
    _check_lift_values(lift, present, options.r, lengths.shape[1])

    powered = torch.pow(lift, torch.as_tensor(lam, dtype=dtype, device=lengths.device))
    if options.normalization == "softmax":
        # Shift by the group's largest present g (0 for a group with none): never ±inf, so exp stays finite
        # in both branches of the `where` and the backward pass sees no 0·inf.
        largest = torch.where(present, powered, torch.full_like(powered, -math.inf)).amax(-1, keepdim=True)
        shift = torch.where(present.any(-1, keepdim=True), largest, torch.zeros_like(largest)).detach()
        exponent = torch.where(present, powered - shift, torch.zeros_like(powered))
        scores = torch.where(present, torch.exp(exponent), torch.zeros_like(powered))
    else:
        scores = torch.where(present, powered, torch.zeros_like(powered))
    own_score = scores.gather(1, position.long().unsqueeze(1)).squeeze(1)
    # G·s_i/Σs rather than G·(s_i/Σs): at λ = 0 every s is exactly 1 and this is exactly 1.
    weights = group_size.to(dtype) * own_score / scores.sum(-1).clamp(min=torch.finfo(dtype).tiny)
    own_present = lengths.gather(1, position.long().unsqueeze(1)).squeeze(1) > 0
    return torch.where(own_present, weights, torch.zeros_like(weights))


def fixed_weights(lengths: torch.Tensor, options: WeightOptions, mean_length: float) -> torch.Tensor:
    """f_i of a fixed member (dapo, grpo, dr_grpo) from each row's own length and μ̄ (module docstring).

    Args:
        lengths: [B] the rows' valid lengths (the loss mask's counts, which verl's aggregation uses).
        options: a "dapo", "grpo" or "dr_grpo" scheme's options.
        mean_length: μ̄ = T / N of the (global) mini-batch.

    Returns:
        [B] float64 weights, 0 for empty rows.
    """
    if options.scheme not in ("dapo", "grpo", "dr_grpo"):
        raise ValueError(f"fixed_weights computes dapo, grpo or dr_grpo, got scheme={options.scheme!r}")
    denominator = seq_mean_denominator(lengths)
    lengths = torch.as_tensor(lengths).to(torch.float64)
    if options.scheme == "dapo":
        weights = torch.ones_like(lengths)
    elif options.scheme == "grpo":
        weights = mean_length / denominator
    else:
        weights = torch.full_like(lengths, mean_length / options.max_response_length)
    return torch.where(lengths > 0, weights, torch.zeros_like(weights))


def seq_mean_denominator(lengths: torch.Tensor) -> torch.Tensor:
    """|o_i| + 1e-8 exactly as verl's seq-mean-token-mean evaluates it, as float64 [B].

    verl adds 1e-8 to the integer token count, which gives torch's default float dtype: in float32 the 1e-8
    vanishes for |o_i| ≥ 1. Reproducing the expression keeps grpo ≡ seq-mean-token-mean to the last bit.
    """
    counts = torch.as_tensor(lengths).round().to(torch.int64)
    return (counts + SEQ_MEAN_EPS).to(torch.float64)


def response_weights(
    lengths: torch.Tensor,
    group_ids: GroupIds,
    scheme: str,
    lam: float | torch.Tensor = 0.0,
    r: float = PAPER_R,
    normalization: str = "softmax",
    eps: float = 1e-6,
    max_response_length: int | None = None,
    mean_length: float | None = None,
) -> torch.Tensor:
    """f_i of `scheme` for a whole batch of responses (formulas in the module docstring).

    Args:
        lengths: [B] valid response lengths, any order; 0 marks an empty row (weight 0).
        group_ids: B hashable prompt ids (sequence or tensor); groups may be interleaved, incomplete or
            of size 1.
        scheme: "dapo", "grpo", "dr_grpo" or "lambda".
        lam: λ of the "lambda" scheme; float or 0-d tensor (differentiable when it requires grad).
        r, normalization, eps: options of the "lambda" scheme.
        max_response_length: L_max of "dr_grpo".
        mean_length: μ̄ of "grpo"/"dr_grpo"; default Σ lengths / B (every row counted, as verl's N counts
            padding rows).

    Returns:
        [B] weights; within each group they sum to G_g for the "lambda" and "dapo" schemes.
    """
    options = WeightOptions(scheme, r, normalization, eps, max_response_length)
    lengths = _as_length_tensor(lengths)
    if scheme != "lambda":
        if mean_length is None:
            mean_length = float(lengths.sum()) / max(len(lengths), 1)
        return fixed_weights(lengths, options, mean_length)
    group_lengths, position = group_length_table(lengths, group_ids)
    return lambda_weights(group_lengths, position, options, lam)


def _check_lift_values(lift: torch.Tensor, present: torch.Tensor, r: float, width: int) -> None:
    """Raise if some h ≤ 0; skipped (no device sync) when the group width already proves h > 0."""
    if lift_bound(r, width) < 1.0:
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
        raise ValueError("lengths must be >= 0 (0 marks an empty row)")
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
