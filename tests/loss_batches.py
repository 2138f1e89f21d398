"""Micro-batches as verl 0.9.1's engine hands them to the actor's loss function, without a model.

`Rows` holds a global mini-batch as padded per-token tensors (log-probs a leaf that requires grad), with the
padding rows verl's `upsample_batch_to_divisible_size` appends (zero response mask, one `pad…` uid) and
empty responses. `micro_batch(rows, indices, ...)` cuts a TensorDict for some of its rows, in the V1 layout
(nested jagged per-token fields, as TransferQueue returns them) or the padded one, with
`batch_num_tokens` / `dp_size` / `global_batch_size` attached as `FSDPEngine.forward_backward_batch` and
`_update_actor` attach them, and the flat model output `ppo_loss` unpads. `run_split` runs a loss over
micro-batches on simulated data-parallel ranks and combines them as verl does.

Importable from tests as `import loss_batches` (pyproject's pytest `pythonpath` includes tests/).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence

import torch
from tensordict import TensorDict
from verl.utils import tensordict_utils as tu
from verl.workers.config import ActorConfig, PolicyLossConfig

from lambda_grpo.group_fields import group_fields

PROMPT_LEN = 2
PAD_UID = f"pad{uuid.UUID(int=7).hex}"


@dataclasses.dataclass
class Rows:
    """A global mini-batch: lengths [B], uids, and padded (B, L) tensors; log_prob is the differentiated leaf."""

    lengths: torch.Tensor
    uids: list[str]
    old_log_prob: torch.Tensor
    log_prob: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    is_weights: torch.Tensor | None
    group_width: int

    @property
    def tokens(self) -> int:
        return int(self.mask.sum())

    def subset(self, indices: Sequence[int]) -> Rows:
        """These rows only, as a batch of their own (the same tensors; log_prob a new leaf)."""
        index = torch.tensor(list(indices), dtype=torch.long)
        return Rows(self.lengths[index], [self.uids[i] for i in indices], self.old_log_prob[index],
                    self.log_prob[index].detach().requires_grad_(True), self.advantages[index], self.mask[index],
                    None if self.is_weights is None else self.is_weights[index], self.group_width)


def make_rows(
    lengths: Sequence[int],
    uids: Sequence[str],
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    is_weights: bool = False,
    on_policy: bool = False,
    group_width: int = 4,
) -> Rows:
    """Random log-probs whose ratios fall in every clip region, one advantage per response (GRPO)."""
    generator = torch.Generator().manual_seed(seed)
    batch, width = len(lengths), max(max(lengths), 1)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    old = -(torch.rand(batch, width, generator=generator, dtype=dtype) * 2 + 0.05)
    shift = torch.zeros_like(old) if on_policy else (torch.rand(batch, width, generator=generator, dtype=dtype) - 0.5)
    log_prob = (old + shift * 0.9).clamp(max=-1e-3).requires_grad_(True)
    advantages = torch.randn(batch, 1, generator=generator, dtype=dtype).expand(batch, width).clone()
    weights = torch.rand(batch, width, generator=generator, dtype=dtype) * 1.5 + 0.25 if is_weights else None
    return Rows(torch.tensor(lengths), list(uids), old * mask, log_prob, advantages * mask,
                mask, weights, group_width)


def actor_config(loss_mode: str = "vanilla", loss_agg_mode: str = "token-mean", **kwargs) -> ActorConfig:
    """verl's ActorConfig for one surrogate, with knobs that make clip_cov / kl_cov / dro act on tiny batches."""
    policy_loss = PolicyLossConfig(loss_mode=loss_mode, clip_cov_ratio=0.2, clip_cov_lb=-10.0, clip_cov_ub=10.0,
                                   kl_cov_ratio=0.2, dro_beta=0.5)
    return ActorConfig(strategy="fsdp2", rollout_n=4, ppo_micro_batch_size_per_gpu=1, clip_ratio=0.2,
                       loss_agg_mode=loss_agg_mode, use_kl_loss=False, entropy_coeff=0.0, policy_loss=policy_loss,
                       **kwargs)


def micro_batch(
    rows: Rows,
    indices: Sequence[int],
    *,
    nested: bool = True,
    dp_size: int = 1,
    global_batch_size: int | None = None,
    batch_num_tokens: int | None = None,
) -> tuple[TensorDict, dict[str, torch.Tensor]]:
    """(data, model_output) for the rows `indices`; global info defaults to the whole of `rows`."""
    index = torch.tensor(list(indices), dtype=torch.long)
    lengths = rows.lengths[index]
    mask = rows.mask[index].long()
    fields = group_fields(rows.uids, rows.mask, rows.group_width)  # the driver sees the whole batch
    per_token = {"response_mask": mask, "old_log_probs": rows.old_log_prob[index], "advantages": rows.advantages[index]}
    if rows.is_weights is not None:
        per_token["rollout_is_weights"] = rows.is_weights[index]
    tensors = {key: value[index] for key, value in fields.items()}
    if nested:
        # verl's V1 layout: per-token fields jagged by response length (a padding row keeps 1 masked token).
        widths = [max(int(length), 1) for length in lengths]
        for key, value in per_token.items():
            tensors[key] = torch.nested.as_nested_tensor([row[:w] for row, w in zip(value, widths)], layout=torch.jagged)
        tensors["prompts"] = torch.nested.as_nested_tensor([torch.ones(PROMPT_LEN, dtype=torch.long)] * len(index),
                                                           layout=torch.jagged)
        tensors["responses"] = torch.nested.as_nested_tensor([torch.ones(w, dtype=torch.long) for w in widths],
                                                             layout=torch.jagged)
        flat = _flat_log_probs(rows.log_prob[index], widths)
    else:
        tensors.update(per_token)
        tensors["prompts"] = torch.ones(len(index), PROMPT_LEN, dtype=torch.long)
        tensors["responses"] = torch.ones_like(mask)
        tensors["attention_mask"] = torch.cat([torch.ones(len(index), PROMPT_LEN, dtype=torch.long), mask], dim=1)
        flat = _flat_log_probs(rows.log_prob[index], [int(length) for length in lengths])
    data = tu.get_tensordict(tensors, non_tensor_dict={
        "dp_size": dp_size,
        "batch_num_tokens": rows.tokens if batch_num_tokens is None else batch_num_tokens,
        "global_batch_size": len(rows.lengths) if global_batch_size is None else global_batch_size,
    })
    return data, {"log_probs": flat}


def _flat_log_probs(log_prob: torch.Tensor, response_widths: Sequence[int]) -> torch.Tensor:
    """The engine's flat (rmpad) per-position log-probs: response token t of a row sits at prompt_len − 1 + t."""
    pieces = []
    for row, width in zip(log_prob, response_widths):
        pieces += [row.new_zeros(PROMPT_LEN - 1), row[:width], row.new_zeros(1)]
    return torch.cat(pieces)


LossFn = Callable[..., tuple[torch.Tensor, dict]]


def run_split(
    loss_fn: LossFn,
    rows: Rows,
    shards: Sequence[Sequence[Sequence[int]]],
    wrt: Sequence[torch.Tensor],
    nested: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The reported loss and the gradients of `wrt`, over `shards` (per rank, its micro-batches' row indices).

    Each micro-batch loss is differentiated and accumulated as verl's engine does (no 1/num_micro scaling);
    gradients are averaged over ranks as FSDP averages them, and the reported loss is the mean over ranks of
    each rank's summed micro-batch losses (verl's SUM metric aggregation).
    """
    dp_size = len(shards)
    grads = [torch.zeros_like(tensor) for tensor in wrt]
    rank_losses = []
    for micro_batches in shards:
        rank_loss = torch.zeros((), dtype=rows.log_prob.dtype)
        for indices in micro_batches:
            data, model_output = micro_batch(rows, indices, nested=nested, dp_size=dp_size)
            loss, _ = loss_fn(model_output=model_output, data=data)
            for total, grad in zip(grads, torch.autograd.grad(loss, list(wrt), allow_unused=True)):
                if grad is not None:
                    total += grad / dp_size
            rank_loss = rank_loss + loss.detach()
        rank_losses.append(rank_loss)
    return torch.stack(rank_losses).mean(), grads
