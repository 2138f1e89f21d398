"""One data-parallel rank of the λ synchronisation tests (run as a script by tests/test_learnable_lambda.py).

Each rank trains a tiny linear "policy" with the λ-weighted loss on its own rows of one global batch,
averages the model's gradients as FSDP does, and steps `LambdaAdamW`, which must average λ's gradient
itself. Rank r writes its λ after every step to <out>/rank<r>.json.

    python tests/lambda_sync_worker.py --scenario train --steps 6 --out DIR   (env RANK, WORLD_SIZE, MASTER_*)

Scenarios:
    train      plain training; world size 1 gives the single-process reference on the whole batch
    nonfinite  rank 1 poisons λ's gradient with NaN at step 2
    resume     train `--steps`, save the optimizer state per rank, rebuild everything, load, train on
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from lambda_grpo.learnable_lambda import LambdaAdamW
from lambda_grpo.weights import WeightOptions, group_length_table, lambda_weights

BATCH, MAX_LEN, FEATURES, GROUP = 16, 10, 5, 4


def global_batch(step: int) -> dict[str, torch.Tensor]:
    """The same global batch on every rank: 4 interleaved groups of 4, lengths and rewards vary."""
    generator = torch.Generator().manual_seed(1000 + step)
    lengths = torch.randint(1, MAX_LEN + 1, (BATCH,), generator=generator)
    uids = torch.arange(BATCH) % GROUP
    table, position = group_length_table(lengths.double(), uids, min_width=GROUP)
    advantages = torch.randn(BATCH, 1, generator=generator, dtype=torch.float64).expand(BATCH, MAX_LEN)
    return {
        "mask": torch.arange(MAX_LEN).unsqueeze(0) < lengths.unsqueeze(1),
        "features": torch.randn(BATCH, MAX_LEN, FEATURES, generator=generator, dtype=torch.float64),
        "advantages": advantages.clone(),
        "table": table,
        "position": position,
    }


def local_loss(policy: torch.nn.Linear, optimizer: LambdaAdamW, batch: dict, rank: int, world: int):
    """This rank's share of the global loss −Σ_i f_i Σ_t r_it A_i · dp / T over rows rank, rank+world, …

    (verl's normalisation: the global token count T, times dp because FSDP averages; groups are split
    over ranks, the weights come from each row's group fields. The surrogate is the unclipped ratio
    objective, which keeps this worker free of verl's imports: λ's synchronisation is what is tested.)
    """
    rows = torch.arange(rank, BATCH, world)
    total_tokens = batch["mask"].sum()
    ratio = torch.exp(policy(batch["features"][rows]).squeeze(-1))
    weights = lambda_weights(
        batch["table"][rows], batch["position"][rows], WeightOptions("lambda"), optimizer.lam
    )
    per_token = -batch["advantages"][rows] * weights.unsqueeze(-1) * ratio
    return (per_token * batch["mask"][rows]).sum() / total_tokens * world


def build(lr: float = 0.05) -> tuple[torch.nn.Linear, LambdaAdamW]:
    torch.manual_seed(0)
    policy = torch.nn.Linear(FEATURES, 1, bias=False, dtype=torch.float64)
    optimizer = LambdaAdamW(policy.parameters(), lr=1e-2, lambda_lr=lr, lambda_init=0.3)
    return policy, optimizer


def train(policy, optimizer, steps: range, rank: int, world: int, poison_step: int | None = None) -> list[float]:
    trajectory = []
    for step in steps:
        optimizer.zero_grad()
        local_loss(policy, optimizer, global_batch(step), rank, world).backward()
        for parameter in policy.parameters():  # FSDP averages the model's gradients over ranks
            if world > 1:
                dist.all_reduce(parameter.grad)
                parameter.grad /= world
        if step == poison_step and rank == 1:
            optimizer.lam.grad = torch.full_like(optimizer.lam, float("nan"))
        optimizer.step()
        trajectory.append(float(optimizer.lam))
    return trajectory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=["train", "nonfinite", "resume"], required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)

    policy, optimizer = build()
    result: dict = {}
    if args.scenario == "train":
        result["lambda"] = train(policy, optimizer, range(args.steps), rank, world)
    elif args.scenario == "nonfinite":
        result["lambda"] = train(policy, optimizer, range(args.steps), rank, world, poison_step=2)
        result["skipped"] = optimizer.lambda_skipped
    else:
        first = train(policy, optimizer, range(args.steps), rank, world)
        checkpoint = args.out / f"optim_rank{rank}.pt"
        torch.save({"optimizer": optimizer.state_dict(), "policy": policy.state_dict()}, checkpoint)
        policy, optimizer = build(lr=0.05)
        optimizer.lam.data.fill_(123.0)  # a fresh process would start from init; prove the load overwrites it
        saved = torch.load(checkpoint, weights_only=False)
        policy.load_state_dict(saved["policy"])
        optimizer.load_state_dict(saved["optimizer"])
        result["lambda"] = first + train(policy, optimizer, range(args.steps, 2 * args.steps), rank, world)
    (args.out / f"rank{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
