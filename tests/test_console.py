"""lambda_grpo.console: the header, start-up milestones, step and validation lines, and the summary."""

from pathlib import Path

import pytest

from lambda_grpo import console
from lambda_grpo.config import compose
from lambda_grpo.console import PHASES, TOTAL_STEPS, Progress, RunPaths, header_lines, summary_lines, tagged_message

VERL = Path(__import__("verl").__file__).parent
RAY = Path(__import__("ray").__file__).parent

RUN = Path("/runs/x")
PATHS = RunPaths(run_dir=RUN, config=RUN / "configs" / "s.yaml", metrics=RUN / "metrics" / "s.jsonl",
                 log=RUN / "logs" / "s.log", plots=RUN / "plots")

STEP = {
    "critic/score/mean": 0.3125,
    "response_length/mean": 7.4,
    "response_length/clip_ratio": 0.125,
    "actor/lambda": 0.01,
    "actor/lambda_grad": -0.0123,
    "actor/lambda_grpo/batch_weight_max": 1.25,
    "timing_s/step": 3.0,
    "actor/entropy": 4.2,
}


def test_header_says_what_is_trained_on_what_and_where_the_files_go():
    cfg = compose(["model_size=qwen2_5_7b", "algo=lambda_grpo", "data.train_files=/d/train.parquet",
                   "data.val_files=[/d/a.parquet,/d/b.parquet]", "trainer.nnodes=2"])
    text = "\n".join(header_lines(cfg, PATHS))
    assert len(text.splitlines()) <= 15
    for expected in ("lambda_grpo-qwen2_5_7b", "arXiv 2510.06870", "model     Qwen/Qwen2.5-7B",
                     "λ learned from 0 (lr 0.01, bounds [-10, 10])", "r = 0.1111", "train /d/train.parquet",
                     "val /d/a.parquet (+1 more)", "1024 prompts × 8 responses per step", "2 nodes × 8 GPUs",
                     "15 epochs of the training data", "checkpoint every 20 steps", "validation every 10 steps and "
                     "before training", str(PATHS.run_dir), str(PATHS.config), str(PATHS.metrics), str(PATHS.log)):
        assert expected in text, expected


@pytest.mark.parametrize(("algo", "expected"), [("grpo", "GRPO: f_i = μ̄/|o_i|"), ("dapo", "DAPO: f_i = 1"),
                                                ("dr_grpo", "Dr. GRPO: f_i = μ̄/L_max")])
def test_header_names_the_baselines_without_lambda(algo, expected):
    text = "\n".join(header_lines(compose(["model_size=tiny_cpu", f"algo={algo}"]), PATHS))
    assert f"algo      {expected}" in text and "λ learned" not in text
    assert "3; checkpoint every 20 steps and at the end; no validation" in text
    assert "1 node × 1 CPU process" in text


def test_header_of_a_fixed_lambda():
    cfg = compose(["model_size=tiny_cpu", "lambda_grpo.lambda_trainable=false", "lambda_grpo.lambda_init=1.5"])
    assert "λ fixed at 1.5" in "\n".join(header_lines(cfg, PATHS))


def test_step_line_shows_the_displayed_metrics_and_the_eta():
    progress = Progress(total_steps=11)
    (first,) = progress.record_lines(1, {**STEP, "timing_s/step": 20.0})
    assert first == ("step  1/11  reward 0.312  len 7.4  clip 0.12  λ +0.0100  ∂λ -1.2e-02  f max 1.25  20.0 s/step"
                     "  ETA 3:20")
    (second,) = progress.record_lines(2, STEP)
    # The first step of a start (worker warm-up) is left out of the ETA once there are later ones: 9 × 3 s.
    assert second.endswith("3.0 s/step  ETA 0:27")
    (validation_step,) = progress.record_lines(3, {**STEP, "timing_s/testing": 7.0})
    assert validation_step.endswith("10.0 s/step  ETA 0:52")  # (3 + 10) / 2 × 8 steps left


def test_step_line_prefers_the_strength_metric_and_leaves_out_what_a_run_does_not_log():
    dapo = {key: value for key, value in STEP.items() if not key.startswith("actor/lambda")}
    line = Progress().step_line(4, {**dapo, "actor/lambda_grpo/weight_long_short_ratio": 0.8})
    assert line.startswith("step 4  reward") and "long/short 0.80" in line
    assert "λ" not in line and "f max" not in line and "ETA" not in line  # no λ, no total: no ETA


def test_validation_scores_get_their_own_line():
    progress = Progress(total_steps=3)
    lines = progress.record_lines(0, {"val-core/math500/acc/mean@1": 0.4, "val-core/aime24/acc/mean@4": 0.0333,
                                      "val-aux/math500/reward/mean@1": 0.5})
    assert lines == ["validation at step 0: aime24 0.033 · math500 0.400"]
    assert progress.durations == []  # a validation-only record is no training step


def test_total_steps_and_start_up_milestones_come_from_the_log():
    progress = Progress()
    assert progress.start_up_line("(TaskRunner pid=1) INFO:2026-11-30 05:27:38,068:Total training steps: 105") is None
    assert progress.total_steps == 105
    resumed = progress.start_up_line("(TaskRunner pid=1) INFO:Resuming from /c/global_step_3, setting global step to 3")
    assert resumed == "resuming from /c/global_step_3 (step 3)"
    assert progress.start_up_line("(TaskRunner pid=1) some other line") is None


# The start-up messages the console reads, as verl 0.9.1 and Ray write them: a renamed message fails here.
UPSTREAM_MESSAGES = [
    (RAY / "_private" / "worker.py", "Started a local Ray instance."),
    (RAY / "_private" / "worker.py", "Connected to Ray cluster."),
    (VERL / "trainer" / "ppo" / "v1" / "trainer_base.py", "actor and ref model engine initialized"),
    (VERL / "trainer" / "ppo" / "v1" / "trainer_base.py", "all initialize finished, ready to fit"),
    (VERL / "trainer" / "ppo" / "v1" / "trainer_base.py", "Training from scratch"),
    (VERL / "trainer" / "ppo" / "v1" / "trainer_base.py",
     "Resuming from {global_step_folder}, setting global step to {self.global_steps}"),
    (VERL / "trainer" / "ppo" / "v1" / "trainer_base.py", "Total training steps: {self.total_training_steps}"),
]


@pytest.mark.parametrize(("source", "message"), UPSTREAM_MESSAGES, ids=[m for _, m in UPSTREAM_MESSAGES])
def test_start_up_messages_are_verl_and_rays_own(source, message):
    assert message in source.read_text()
    line = message.replace("{global_step_folder}", "/c/global_step_7").replace("{self.global_steps}", "7")
    line = line.replace("{self.total_training_steps}", "105")
    assert any(pattern.search(line) for pattern in [phase.pattern for phase in PHASES] + [TOTAL_STEPS])


@pytest.mark.parametrize("line", [
    "\x1b[36m(LambdaGRPOTaskRunner pid=21423)\x1b[0m [lambda_grpo] λ = 0.03 at step 3",
    "(LambdaGRPOTaskRunner pid=21423, ip=10.0.0.2) [lambda_grpo] λ = 0.03 at step 3",
    "[lambda_grpo] λ = 0.03 at step 3",
])
def test_tagged_lines_lose_rays_prefix_and_the_tag(line):
    assert tagged_message(line) == "λ = 0.03 at step 3"


def test_untagged_lines_stay_in_the_log():
    assert tagged_message("(vLLMHttpServer pid=1) WARNING 11-30 [cpu.py:224] Triton is not installed.") is None
    assert tagged_message("[lambda_grpo.tiny_assets] building the tiny Qwen2 model") is None


def test_summary_shows_first_and_last_over_the_run_and_how_to_resume():
    history = {"actor/lambda": [(1, 0.01), (2, 0.02), (4, 0.035)], "critic/score/mean": [(1, 0.1), (4, 0.5)]}
    lines = summary_lines("FAILED", 125.0, history, Path("/runs/x/global_step_4"), PATHS, [PATHS.plots / "lambda.png"])
    text = "\n".join(lines)
    assert lines[0] == "FAILED after 2:05: 3 steps logged (steps 1–4)"
    assert "λ         +0.0100 (step 1) → +0.0350 (step 4)" in text
    assert "reward    0.100 (step 1) → 0.500 (step 4)" in text and "length" not in text
    assert "checkpoint /runs/x/global_step_4" in text and "run the same command again" in text
    assert f"plots     {PATHS.plots}/ lambda.png" in text and str(PATHS.log) in text
    with_validation = {"timing_s/step": [(1, 3.0), (2, 3.0)], "val-core/math500/acc/mean@1": [(0, 0.2), (2, 0.3)]}
    assert summary_lines("finished", 1.0, with_validation, None, PATHS, [])[0].endswith("2 steps logged (steps 1–2)")
    finished = "\n".join(summary_lines("finished", 1.0, {}, None, PATHS, "none (no step logged)"))
    assert "no step logged" in finished and "checkpoint none" in finished and "run the same command" not in finished


@pytest.mark.parametrize(("seconds", "text"), [(7, "0:07"), (725, "12:05"), (10930, "3:02:10"), (-1, "0:00")])
def test_clock(seconds, text):
    assert console.clock(seconds) == text
