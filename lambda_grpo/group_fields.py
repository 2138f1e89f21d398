"""Per-sample group fields that carry each prompt group to the loss (pure torch; no verl import).

The G responses of one prompt are scattered over micro-batches, mini-batches and data-parallel ranks
(verl's `balance_batch` reorders rows, padding appends rows, dynamic batching regroups them), so the loss
cannot see a group. The driver still sees the whole batch: it writes into every sample

    lambda_grpo_group_lengths  [B, n] float32  the generated lengths of all responses of the sample's group
                                               (uid), zero-padded to n = rollout.n columns
    lambda_grpo_position       [B]    int64    the column of the sample's own response in that row

from which the loss evaluates f_i(λ) exactly (`weights.lambda_weights`), whatever the split. Padding rows
(verl's `pad…` uids) have zero response masks, so length 0 and weight 0; an empty row takes no part in any
group's statistics, so each gets a row of its own and the many padding rows that share one `pad…` uid cannot
widen the table. A group with more non-empty responses than n (an agent loop that returns several outputs
per trajectory) is refused here, on the driver: start-up proved h > 0 and h^λ finite for groups of up to n
only, and a check inside the loss would fail on one rank while the others wait in a collective.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

import torch

from lambda_grpo.weights import group_length_table

GROUP_LENGTHS_KEY = "lambda_grpo_group_lengths"
POSITION_KEY = "lambda_grpo_position"


class GroupTooWideError(ValueError):
    """A prompt group has more non-empty responses than the configured group size."""


def group_fields(uids: Sequence[Hashable], response_mask: torch.Tensor, group_size: int) -> dict[str, torch.Tensor]:
    """The two group fields for a batch, from its uids and its right-padded response mask [B, T] as generated."""
    if response_mask.dim() != 2 or response_mask.shape[0] != len(uids):
        raise ValueError(
            f"response_mask must be [B, T] with B = {len(uids)} uids, got shape {tuple(response_mask.shape)}"
        )
    lengths = response_mask.sum(-1).to(torch.float32)
    groups = [uid if length > 0 else ("empty row", row) for row, (uid, length) in enumerate(zip(uids, lengths.tolist()))]
    uid, size = max(Counter(groups).items(), key=lambda item: item[1], default=(None, 0))
    if size > group_size:
        raise GroupTooWideError(
            f"prompt group {uid!r} has {size} non-empty responses, more than the configured group size {group_size}"
        )
    group_lengths, position = group_length_table(lengths, groups, min_width=group_size)
    return {GROUP_LENGTHS_KEY: group_lengths, POSITION_KEY: position}
