"""End to end on CPU: the README's main job, `python -m lambda_grpo.main model_size=tiny_cpu algo=lambda_grpo`, as a
person sees it: a short console (header, milestones, one line per step, summary) and a run folder with the config,
the full log, the metrics and the plots. One run, about 2 minutes on 2 cores.
"""

import pytest
from omegaconf import OmegaConf

from e2e_helpers import run_lambda_grpo

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MAX_CONSOLE_LINES = 150
"""Issue 13's bound on the README's main job (it printed 1,183 lines before the console was written)."""

RUN_DIR = "checkpoints/lambda_grpo/lambda_grpo-tiny_cpu"


def test_readme_main_job_prints_a_short_console_and_keeps_everything_in_the_run_folder(tmp_path):
    result = run_lambda_grpo(tmp_path, ["algo=lambda_grpo"], tmp_path / "tiny_cache", timeout_s=720)
    console = [line for line in result.console_text().splitlines() if not line.startswith("[e2e]")]
    text = "\n".join(console)
    assert result.returncode == 0, f"exit {result.returncode}\n{text[-5000:]}"
    assert len(console) <= MAX_CONSOLE_LINES, text

    run_dir = tmp_path / RUN_DIR
    header = console.index(next(line for line in console if line.startswith("lambda_grpo-tiny_cpu · lambda_grpo")))
    for label in ("model", "algo", "data", "devices", "run dir", "config", "metrics", "log"):
        assert any(line.startswith(f"  {label} ") for line in console[header:header + 15]), label
    for milestone in ("Ray started", "trainer workers ready", "rollout and reward workers ready"):
        assert milestone in text

    # One line per step, showing the values verl logged.
    steps = [line for line in console if line.startswith("step ")]
    assert [line.split()[1] for line in steps] == ["1/3", "2/3", "3/3"]
    for line, row in zip(steps, result.metrics, strict=True):
        assert f"λ {row['actor/lambda']:+.4f}" in line and f"reward {row['critic/score/mean']:.3f}" in line
        assert f"len {row['response_length/mean']:.1f}" in line and "s/step" in line and "ETA" in line

    # The summary ends the console.
    summary = console[console.index(next(line for line in console if line.startswith("finished after"))):]
    first, last = result.metrics[0]["actor/lambda"], result.metrics[-1]["actor/lambda"]
    assert f"  λ         {first:+.4f} (step 1) → {last:+.4f} (step 3)" in summary
    assert f"  checkpoint {run_dir / 'global_step_3'}" in summary
    assert summary[-1] == f"  log       {result.run_log_path}"

    # Nothing is lost: the config as trained, everything verl and Ray printed, the plots.
    (config,) = (run_dir / "configs").glob("*.yaml")
    assert OmegaConf.load(config).trainer.total_training_steps == 3
    log = result.run_log_path.read_text()
    assert "'actor_rollout_ref': {" in log  # verl's TaskRunner prints the composed config
    assert "step:3 - " in log  # verl's own console logger line
    assert "Platform override from VERL_PLATFORM: cpu" in log  # a Ray worker's output
    assert sorted(path.name for path in (run_dir / "plots").glob("*.png")) == [
        "entropy.png", "lambda.png", "response_length.png", "reward.png"]
    print(f"[e2e] console lines: {len(console)}; run log lines: {len(log.splitlines())}; wall {result.wall_s:.0f} s")
