"""Cost of the whole λ-GRPO loss path against plain token-mean, forward + backward, side by side.

    python benchmarks/loss_overhead.py [--device cuda] [--sizes 64x512,1024x4096] [--repeats 10]

λ path:   the actor's loss function on a micro-batch TensorDict as verl's engine hands it over
          (`lambda_grpo.actor_loss.row_weights`: f(λ) from the group fields, λ a 0-d parameter;
          `lambda_grpo.loss.weighted_ppo_loss`: f into rollout_is_weights, verl's `ppo_loss` with the vanilla
          surrogate) → backward to log-probs and λ
baseline: verl's own `ppo_loss` on the same micro-batch (vanilla, token-mean: DAPO) → backward to log-probs
Both run on the same tensors, interleaved, after warm-up; the table reports the fastest of the repeats
(the run least disturbed by other processes) of each and their ratio.

Without verl (a GPU box with torch alone) both sides fall back to benchmarks/torch_surrogate.py, the same
clipped-surrogate arithmetic in plain torch, with f(λ) from `lambda_grpo.weights` as per-token weights on the
λ side; the script says which one it used.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # runs from a checkout without installing the package

from lambda_grpo.weights import response_weights  # noqa: E402

GROUP_SIZE = 8
PROMPT_LEN = 4


def make_inputs(responses: int, max_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    lengths = torch.randint(max_len // 8, max_len + 1, (responses,), generator=generator)
    mask = torch.arange(max_len).unsqueeze(0) < lengths.unsqueeze(1)
    old_log_prob = -torch.rand(responses, max_len, generator=generator) * 2
    log_prob = old_log_prob + (torch.rand(responses, max_len, generator=generator) - 0.5) * 0.4
    advantages = torch.randn(responses, 1, generator=generator).expand(responses, max_len).contiguous()
    group_ids = torch.arange(responses) // GROUP_SIZE
    tensors = dict(lengths=lengths, mask=mask, old_log_prob=old_log_prob * mask, log_prob=log_prob,
                   advantages=advantages * mask,
                   group_ids=group_ids[torch.randperm(responses, generator=generator)])  # groups interleaved
    return {name: value.to(device) for name, value in tensors.items()}


def surrogate_backend() -> tuple[str, Callable, Callable]:
    """(name, prepare(inputs) -> state, run(state, log_prob, lam | None) -> scalar loss); lam None = baseline."""
    try:
        from verl.utils import tensordict_utils as tu
        from verl.workers.config import ActorConfig, PolicyLossConfig
        from verl.workers.utils.losses import ppo_loss

        from lambda_grpo.actor_loss import row_weights
        from lambda_grpo.group_fields import group_fields
        from lambda_grpo.loss import weighted_ppo_loss
        from lambda_grpo.surrogates import surrogate_for
        from lambda_grpo.weights import WeightOptions
    except ImportError:
        from torch_surrogate import clipped_surrogate_token_mean

        def run_plain(x, log_prob, lam):
            weights = None if lam is None else response_weights(x["lengths"], x["group_ids"], "lambda", lam=lam)[:, None]
            return clipped_surrogate_token_mean(x["old_log_prob"], log_prob, x["advantages"], x["mask"],
                                                rollout_is_weights=weights)

        return "benchmarks/torch_surrogate.py (verl not importable here)", lambda x: x, run_plain

    config = ActorConfig(strategy="fsdp", rollout_n=GROUP_SIZE, ppo_micro_batch_size_per_gpu=1, use_kl_loss=False,
                         entropy_coeff=0.0, policy_loss=PolicyLossConfig(loss_mode="vanilla"))
    options, surrogate = WeightOptions("lambda"), surrogate_for("vanilla")

    def prepare(x):
        mask = x["mask"].long()
        rows = len(mask)
        data = tu.get_tensordict({
            "prompts": torch.ones(rows, PROMPT_LEN, dtype=torch.long, device=mask.device), "responses": mask,
            "attention_mask": torch.cat([torch.ones_like(mask[:, :PROMPT_LEN]), mask], dim=1), "response_mask": mask,
            "old_log_probs": x["old_log_prob"], "advantages": x["advantages"],
            **group_fields(x["group_ids"].tolist(), mask.cpu(), GROUP_SIZE),
        }, non_tensor_dict={"dp_size": 1, "batch_num_tokens": int(mask.sum()), "global_batch_size": rows})
        # Where each response token's log-prob sits in the engine's flat (unpadded) model output.
        sequence_starts = torch.cumsum(PROMPT_LEN + x["lengths"], 0) - (PROMPT_LEN + x["lengths"])
        flat_index = (sequence_starts.unsqueeze(1) + PROMPT_LEN - 1 + torch.arange(mask.shape[1], device=mask.device))
        return {"data": data.to(mask.device), "flat_index": flat_index[x["mask"]],
                "flat_size": int((PROMPT_LEN + x["lengths"]).sum()), "mask": x["mask"]}

    def run_verl(state, log_prob, lam):
        flat = log_prob.new_zeros(state["flat_size"]).scatter(0, state["flat_index"], log_prob[state["mask"]])
        if lam is None:
            return ppo_loss(config, {"log_probs": flat}, state["data"])[0]
        return weighted_ppo_loss(config, {"log_probs": flat}, state["data"],
                                 row_weights=row_weights(state["data"], options, lam), surrogate=surrogate)[0]

    return "verl 0.9.1 ppo_loss, vanilla surrogate (lambda_grpo.actor_loss / lambda_grpo.loss)", prepare, run_verl


def timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(responses: int, max_len: int, device: torch.device, repeats: int, backend) -> tuple[float, float]:
    _, prepare, run = backend
    x = make_inputs(responses, max_len, device)
    state = prepare(x)
    lam = torch.tensor(0.7, device=device, requires_grad=True)

    def run_baseline():
        run(state, x["log_prob"].detach().requires_grad_(True), None).backward()

    def run_lambda():
        run(state, x["log_prob"].detach().requires_grad_(True), lam).backward()

    for _ in range(2):
        run_baseline(), run_lambda()
    base_times, lambda_times = [], []
    for _ in range(repeats):  # interleaved, so drift of the machine hits both alike
        base_times.append(timed(run_baseline, device))
        lambda_times.append(timed(run_lambda, device))
    return min(base_times), min(lambda_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--sizes", default="64x512,256x1024,1024x1024,1024x4096",
                        help="comma-separated RESPONSESxTOKENS (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=10, help="timed repetitions per size (default: %(default)s)")
    args = parser.parse_args()
    device = torch.device(args.device)
    backend = surrogate_backend()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; loss path: {backend[0]}")
    print(f"{'responses x tokens':>20} {'token-mean ms':>14} {'λ-GRPO ms':>10} {'ratio':>7}")
    for size in args.sizes.split(","):
        responses, max_len = (int(v) for v in size.lower().split("x"))
        base, lam = measure(responses, max_len, device, args.repeats, backend)
        print(f"{size:>20} {base * 1e3:>14.2f} {lam * 1e3:>10.2f} {lam / base:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
