"""The loss-overhead benchmark runs (with and without verl) and its plain-torch surrogate is verl's."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla
from verl.workers.config import ActorConfig, PolicyLossConfig

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from torch_surrogate import clipped_surrogate_token_mean  # noqa: E402


@pytest.mark.parametrize("global_info", [{}, {"dp_size": 2, "batch_num_tokens": 70}])
def test_plain_torch_surrogate_is_verls_vanilla_token_mean(global_info):
    generator = torch.Generator().manual_seed(0)
    mask = torch.arange(12)[None] < torch.randint(1, 13, (6, 1), generator=generator)
    old = -torch.rand(6, 12, generator=generator, dtype=torch.float64) * 2
    new = (old + (torch.rand(6, 12, generator=generator, dtype=torch.float64) - 0.5)).requires_grad_(True)
    advantages = torch.randn(6, 12, generator=generator, dtype=torch.float64)
    config = ActorConfig(strategy="fsdp", rollout_n=2, ppo_micro_batch_size_per_gpu=1,
                         policy_loss=PolicyLossConfig(loss_mode="vanilla"))
    config.global_batch_info.update(global_info)
    weights = torch.rand(6, 1, generator=generator, dtype=torch.float64)
    verl_loss = compute_policy_loss_vanilla(old, new, advantages, mask, "token-mean", config,
                                            rollout_is_weights=weights)[0]
    ours = clipped_surrogate_token_mean(old, new, advantages, mask, **global_info, rollout_is_weights=weights)
    assert torch.equal(ours, verl_loss)
    assert torch.equal(torch.autograd.grad(ours, new)[0], torch.autograd.grad(verl_loss, new)[0])


ROW = re.compile(r"^\s*8x16\s+[\d.]+\s+[\d.]+\s+([\d.]+)$", re.M)


@pytest.mark.parametrize("block_verl", [False, True])
def test_benchmark_prints_its_ratio_table(block_verl):
    script = BENCHMARKS / "loss_overhead.py"
    prelude = "import sys; sys.modules['verl'] = None; " if block_verl else ""  # import verl -> ImportError
    code = f"{prelude}import runpy; sys.argv = ['x', '--sizes', '8x16', '--repeats', '2']; runpy.run_path({str(script)!r}, run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", "import sys; " + code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert ("torch_surrogate.py" in result.stdout) is block_verl
    assert float(ROW.search(result.stdout).group(1)) > 0


def test_reward_benchmark_prints_its_ratio_and_the_table_check(tmp_path):
    """benchmarks/reward_throughput.py end to end on a few samples and a two-case table (not a timing test)."""
    cases = Path(__file__).with_name("reward_cases.jsonl").read_text().splitlines()[:2]
    (tmp_path / "cases.jsonl").write_text("\n".join(cases) + "\n")
    arguments = ["--count", "24", "--repeats", "1", "--runs", "1", "--target-ratio", "0"]
    script = BENCHMARKS / "reward_throughput.py"
    command = [sys.executable, str(script), *arguments, "--cases", str(tmp_path / "cases.jsonl")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r"^synthetic seed 0\s+24\s+\d+%\s+\d+\s+\d+\s+[\d.]+x\s+0$", result.stdout, re.M), result.stdout
    assert "test table: 2 of 2 verdicts identical []" in result.stdout
