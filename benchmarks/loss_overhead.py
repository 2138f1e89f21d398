"""Cost of the whole λ-GRPO loss path against plain token-mean, forward + backward, side by side.

    python benchmarks/loss_overhead.py [--device cuda] [--sizes 64x512,1024x4096] [--repeats 10]

λ path:   f = response_weights(lengths, group_ids, "lambda", λ)  (λ a 0-d parameter)
          → clipped surrogate with advantages·f → global token-mean → backward to log-probs and λ
baseline: the same surrogate with unit weights (verl's token-mean, i.e. DAPO) → backward to log-probs
Both run on the same tensors, interleaved, after warm-up; the table reports the fastest of the repeats
(the run least disturbed by other processes) of each and their ratio.

The surrogate is verl's own (`lambda_grpo.loss` around `compute_policy_loss_vanilla`) when verl imports,
else benchmarks/torch_surrogate.py, the same arithmetic in plain torch, so this runs unchanged on a GPU
machine that has torch but neither verl nor ray. The script says which one it used.
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


def make_inputs(responses: int, max_len: int, device: torch.device) -> dict[str, torch.Tensor]:
    generator = torch.Generator(device="cpu").manual_seed(0)
    lengths = torch.randint(max_len // 8, max_len + 1, (responses,), generator=generator)
    mask = torch.arange(max_len).unsqueeze(0) < lengths.unsqueeze(1)
    old_log_prob = -torch.rand(responses, max_len, generator=generator) * 2
    log_prob = old_log_prob + (torch.rand(responses, max_len, generator=generator) - 0.5) * 0.4
    advantages = torch.randn(responses, 1, generator=generator).expand(responses, max_len).contiguous()
    group_ids = torch.arange(responses) // GROUP_SIZE
    tensors = dict(lengths=lengths, mask=mask, old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages,
                   group_ids=group_ids[torch.randperm(responses, generator=generator)])  # groups interleaved
    return {name: value.to(device) for name, value in tensors.items()}


def surrogate_backend() -> tuple[str, Callable, Callable]:
    """(name, baseline(inputs, log_prob), lambda_path(inputs, log_prob, weights)) returning scalar losses."""
    try:
        from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla
        from verl.workers.config import ActorConfig, PolicyLossConfig

        from lambda_grpo.loss import compute_policy_loss_lambda_grpo
    except ImportError:
        from torch_surrogate import clipped_surrogate_token_mean

        def baseline(x, log_prob):
            return clipped_surrogate_token_mean(x["old_log_prob"], log_prob, x["advantages"], x["mask"])

        def lambda_path(x, log_prob, weights):  # weights the per-token loss, as lambda_grpo.loss does
            return clipped_surrogate_token_mean(x["old_log_prob"], log_prob, x["advantages"], x["mask"],
                                                rollout_is_weights=weights[:, None])

        return "benchmarks/torch_surrogate.py (verl not importable here)", baseline, lambda_path

    config = ActorConfig(strategy="fsdp", rollout_n=GROUP_SIZE, ppo_micro_batch_size_per_gpu=1,
                         policy_loss=PolicyLossConfig(loss_mode="lambda_grpo"))

    def baseline(x, log_prob):
        return compute_policy_loss_vanilla(x["old_log_prob"], log_prob, x["advantages"], x["mask"], "token-mean",
                                           config)[0]

    def lambda_path(x, log_prob, weights):
        return compute_policy_loss_lambda_grpo(x["old_log_prob"], log_prob, x["advantages"], x["mask"], "token-mean",
                                               config, sample_weights=weights)[0]

    return "verl 0.9.1 compute_policy_loss_vanilla (lambda_grpo.loss)", baseline, lambda_path


def timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(responses: int, max_len: int, device: torch.device, repeats: int, backend) -> tuple[float, float]:
    _, baseline, lambda_path = backend
    x = make_inputs(responses, max_len, device)
    lam = torch.tensor(0.7, device=device, requires_grad=True)

    def run_baseline():
        log_prob = x["log_prob"].detach().requires_grad_(True)
        baseline(x, log_prob).backward()

    def run_lambda():
        log_prob = x["log_prob"].detach().requires_grad_(True)
        weights = response_weights(x["lengths"], x["group_ids"], "lambda", lam=lam)
        lambda_path(x, log_prob, weights).backward()

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
    print(f"device: {name}; torch {torch.__version__}; surrogate: {backend[0]}")
    print(f"{'responses x tokens':>20} {'token-mean ms':>14} {'λ-GRPO ms':>10} {'ratio':>7}")
    for size in args.sizes.split(","):
        responses, max_len = (int(v) for v in size.lower().split("x"))
        base, lam = measure(responses, max_len, device, args.repeats, backend)
        print(f"{size:>20} {base * 1e3:>14.2f} {lam * 1e3:>10.2f} {lam / base:>7.3f}", flush=True)


if __name__ == "__main__":
    main()
