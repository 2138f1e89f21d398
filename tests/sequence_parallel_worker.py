"""One rank of the dp × sp test (run as a script by tests/test_sequence_parallel.py), verl's Ulysses step on CPU.

What verl 0.9.1's FSDP engine does on the ranks of one sequence-parallel (SP) group, without flash-attn: every
rank of the group holds the same micro-batches (its data-parallel group's rows); the packed sequence of a
micro-batch is padded to a multiple of sp and each rank runs the model on its slice
(`ulysses_pad_and_slice_inputs`); the per-token log-probs are all-gathered back with verl's own
`gather_outputs_and_unpad`, whose backward scales the gradient by sp; every rank then computes the *whole*
micro-batch's loss, here lambda_grpo's actor loss with verl's `batch_num_tokens` all-reduced over the
data-parallel group and `dp_size` = world / sp. FSDP averages the model's gradients over all ranks;
`LambdaAdamW` averages λ's over all ranks. The model is token-wise (log π_t = −softplus(x_t · w)), so a
rank's slice is a real share of the computation and its gradient reaches w only through it.

    python tests/sequence_parallel_worker.py --sp 2 --out DIR   (env RANK, WORLD_SIZE, MASTER_*; world = dp × sp)

world 1 (sp 1) is the single-rank reference: the whole mini-batch in one micro-batch. Rank r writes, per
surrogate, λ and w after every step and its own λ gradient before the first all-reduce to <out>/rank<r>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from loss_batches import PAD_UID, PROMPT_LEN, actor_config, make_rows, micro_batch
from verl.utils.ulysses import gather_outputs_and_unpad

from lambda_grpo.actor_loss import actor_loss
from lambda_grpo.learnable_lambda import LambdaAdamW
from lambda_grpo.surrogates import surrogate_for
from lambda_grpo.weights import WeightOptions

FEATURES, STEPS, MICRO_BATCHES_PER_RANK = 3, 3, 2
# 4 groups of 4 interleaved over the ranks (one response empty), then 2 padding rows as verl appends them.
LENGTHS = [5, 9, 1, 7, 3, 0, 8, 2, 6, 4, 9, 5, 2, 7, 0, 0]
UIDS = [f"g{i % 4}" for i in range(14)] + [PAD_UID, PAD_UID]


def flat_features(rows: list[int], widths: list[int]) -> torch.Tensor:
    """Features of each position of the rows' packed prompt + response sequences (the same on every rank)."""
    generator = torch.Generator().manual_seed(7)
    table = torch.randn(len(LENGTHS), PROMPT_LEN + max(LENGTHS) + 1, FEATURES, generator=generator, dtype=torch.float64)
    return torch.cat([table[row, : PROMPT_LEN + width] for row, width in zip(rows, widths)])


def log_probs(weight: torch.Tensor, features: torch.Tensor, sp_group, sp: int) -> torch.Tensor:
    """The packed sequence's log-probs: each SP rank computes its slice, verl gathers them (module docstring)."""
    if sp == 1:
        return -torch.nn.functional.softplus(features @ weight)
    pad = -features.shape[0] % sp
    padded = torch.cat([features, features.new_zeros(pad, FEATURES)])
    chunk = padded.shape[0] // sp
    rank = dist.get_rank(sp_group)
    local = -torch.nn.functional.softplus(padded[rank * chunk:(rank + 1) * chunk] @ weight)
    return gather_outputs_and_unpad(local, gather_dim=0, unpad_dim=0, padding_size=pad, group=sp_group)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sp", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    sp, dp = args.sp, world // args.sp
    dp_group = sp_group = None
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
        mesh = dist.device_mesh.init_device_mesh("cpu", (dp, sp), mesh_dim_names=("dp", "sp"))
        dp_group, sp_group = mesh.get_group("dp"), mesh.get_group("sp")
    dp_rank = rank // sp

    rows = make_rows(LENGTHS, UIDS, seed=3)
    mine = list(range(dp_rank, len(LENGTHS), dp))  # groups split over data-parallel ranks
    micro = [mine] if world == 1 else [mine[i::MICRO_BATCHES_PER_RANK] for i in range(MICRO_BATCHES_PER_RANK)]
    local_tokens = torch.tensor(float(rows.mask[mine].sum()), dtype=torch.float64)
    if world > 1:  # FSDPEngine.forward_backward_batch: counted over the data-parallel group, once per token
        dist.all_reduce(local_tokens, group=dp_group)

    result = {}
    for loss_mode in ("vanilla", "cispo"):
        loss_fn = functools.partial(actor_loss, config=actor_config(loss_mode), options=WeightOptions("lambda"),
                                    surrogate=surrogate_for(loss_mode))
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.randn(FEATURES, dtype=torch.float64) * 0.3)
        optimizer = LambdaAdamW([weight], lr=0.05, lambda_lr=0.05, lambda_init=0.3)
        trace = {"lambda": [], "weight": [], "local_lambda_grad": None}
        for _ in range(STEPS):
            optimizer.zero_grad()
            for indices in micro:
                data, output = micro_batch(rows, indices, dp_size=dp, batch_num_tokens=int(local_tokens))
                widths = [max(int(rows.lengths[i]), 1) for i in indices]
                output = {"log_probs": log_probs(weight, flat_features(indices, widths), sp_group, sp)}
                assert output["log_probs"].shape == micro_batch(rows, indices)[1]["log_probs"].shape
                loss, _ = loss_fn(model_output=output, data=data)
                loss.backward()
            if trace["local_lambda_grad"] is None:
                trace["local_lambda_grad"] = float(optimizer.lam.grad)
            if world > 1:  # FSDP: the model's gradients averaged over every rank of its (dp × sp) mesh
                dist.all_reduce(weight.grad)
                weight.grad /= world
            optimizer.step()
            trace["lambda"].append(float(optimizer.lam))
            trace["weight"].append(weight.detach().tolist())
        result[loss_mode] = trace
    (args.out / f"rank{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
