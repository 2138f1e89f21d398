"""End to end on CPU: λ-GRPO in verl's asynchronous `colocate_async` trainer with LoRA adapters, through
`python -m lambda_grpo.main model_size=tiny_cpu`: λ trains beside the adapters, moves, is checkpointed with the
optimizer state and restored by a second start, and each step's first update starts from the λ the previous
step left (README "Which λ weighted which batch"). One 2-step run and a 1-step resume share every check
(~85 s each on 2 cores). `separate_async` and Ulysses SP cannot run on CPU (README "Trainer modes,
parallelism, LoRA"); their closest tests are tests/test_trainer.py, tests/test_verl_api.py and
tests/test_sequence_parallel.py.
"""

import json

import pytest
import torch

from e2e_helpers import is_finite_number, run_lambda_grpo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CHECKPOINTS = "checkpoints/lambda_grpo/lambda_grpo-tiny_cpu"
LORA = ("actor_rollout_ref.model.lora_rank=8", "actor_rollout_ref.model.lora_alpha=16",
        "actor_rollout_ref.model.target_modules=all-linear")
COLOCATE_ASYNC = ("algo=lambda_grpo", "trainer.v1.trainer_mode=colocate_async", *LORA,
                  # A reward that grows with length: λ's first update is positive (tests/test_cpu_pipeline.py).
                  "+reward.custom_reward_function.reward_kwargs.preference=long")


def run(workdir, cache, *overrides):
    result = run_lambda_grpo(workdir, list(overrides), cache, timeout_s=720)
    log = result.log_text()
    assert result.returncode == 0, f"exit {result.returncode}; log {result.log_path}\n{log[-5000:]}"
    return result, log


def test_colocate_async_with_lora_trains_lambda_checkpoints_and_resumes(tmp_path):
    cache = tmp_path / "tiny_cache"
    first, log = run(tmp_path, cache, *COLOCATE_ASYNC, "trainer.total_training_steps=2")
    rows = first.metrics
    assert [row["step"] for row in rows] == [1, 2], rows
    assert "trainer mode colocate_async" in log
    for row in rows:
        assert is_finite_number(row["actor/lambda"]) and is_finite_number(row["actor/lambda_grad"])
        assert row["actor/lambda_grpo/lambda_updates"] == 1 and row["actor/lambda_grpo/lambda_skipped_steps"] == 0
    assert rows[0]["actor/lambda"] > 0 and rows[0]["actor/lambda_grad"] < 0  # the direction of the reward
    assert any(row["actor/pg_loss"] != 0 for row in rows) and any(row["actor/grad_norm"] > 0 for row in rows)
    # Which λ weighted which batch: step 2 trained on responses sampled before step 1's update (staleness 1,
    # verl's warm-up batch of colocate_async), weighted by λ after step 1's update.
    assert rows[0]["actor/lambda_grpo/lambda_start"] == 0.0
    assert rows[1]["training/off_policy/trajectory_staleness/max"] == 1
    assert rows[1]["actor/lambda_grpo/lambda_start"] == rows[0]["actor/lambda"]

    step2 = tmp_path / CHECKPOINTS / "global_step_2"
    optimizer_state = torch.load(step2 / "actor" / "optim_world_size_1_rank_0.pt", weights_only=False)
    assert optimizer_state["lambda_grpo"]["value"].item() == pytest.approx(rows[1]["actor/lambda"], abs=1e-9)
    assert optimizer_state["lambda_grpo"]["updates"] == 2
    # λ's parameter group beside the adapters: Adam state exists for the LoRA matrices (the frozen base weights
    # get no gradient, hence no state) and for λ, the last group's one parameter.
    assert json.loads((step2 / "actor" / "lora_train_meta.json").read_text())["r"] == 8
    model_state = torch.load(step2 / "actor" / "model_world_size_1_rank_0.pt", weights_only=False)
    lora_matrices = sum("lora_" in name for name in model_state)
    *_, lambda_group = optimizer_state["param_groups"]
    assert lambda_group["lambda_grpo"] and len(lambda_group["params"]) == 1
    trained = {index for index, state in optimizer_state["state"].items() if "exp_avg" in state}
    assert lora_matrices > 0 and len(trained) == lora_matrices + 1 and lambda_group["params"][0] in trained

    second, log = run(tmp_path, cache, *COLOCATE_ASYNC, "trainer.total_training_steps=3")
    (row,) = second.metrics
    assert row["step"] == 3
    assert f"[lambda_grpo] λ = {rows[1]['actor/lambda']:.6g} at step 2" in log  # resumed with the saved λ
    assert row["actor/lambda_grpo/lambda_start"] == rows[1]["actor/lambda"]
    assert row["actor/lambda"] != rows[1]["actor/lambda"] and is_finite_number(row["actor/lambda_grad"])
    step3 = json.loads((tmp_path / CHECKPOINTS / "global_step_3" / "lambda_grpo.json").read_text())
    assert step3["updates"] == 3 and step3["lambda"] == row["actor/lambda"]
