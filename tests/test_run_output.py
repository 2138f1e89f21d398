"""lambda_grpo.run_output: in a driver process that prints like verl and Ray do, the console gets the header, the
milestones, tagged lines, step lines and the summary (or the error), and the run's log file gets everything.

Each case runs a driver in a subprocess (RunOutput redirects its process's file descriptors 1 and 2), which
prints what a real run prints, from Python, from a child process and on stderr, and appends verl file-logger
records as the trainer does. The real run is covered by tests/test_console_e2e.py.
"""

import subprocess
import sys

from lambda_grpo.run_output import LineFollower

DRIVER = r'''
import json, os, sys, time
from lambda_grpo import run_files
from lambda_grpo.config import compose
from lambda_grpo.run_output import RunOutput

cfg = compose(["model_size=tiny_cpu", f"trainer.default_local_dir={sys.argv[1]}"])
paths = run_files.prepare(cfg, "20261130-120000")
output = RunOutput(cfg, paths)
output.start()
try:
    print("ray init kwargs: {'num_cpus': 16, ...}")
    print("2026-11-30 05:27:12,040\tINFO worker.py:2038 -- Started a local Ray instance.")
    print("\x1b[36m(LambdaGRPOTaskRunner pid=7)\x1b[0m {'actor_rollout_ref': {'actor': {'clip_ratio': 0.2}}}")
    os.system("echo '(vLLMHttpServer pid=9) WARNING from a child process'; echo 'child stderr' >&2")
    print("\x1b[36m(LambdaGRPOTaskRunner pid=7)\x1b[0m [lambda_grpo] λ = 0 at step 0", file=sys.stderr)
    with open(paths.metrics, "a") as metrics:
        for step in (1, 2, 3):
            data = {"critic/score/mean": 0.25 * step, "response_length/mean": 6.0 + step, "actor/lambda": 0.01 * step,
                    "actor/lambda_grad": -0.5, "timing_s/step": 2.5, "actor/entropy": 4.0}
            metrics.write(json.dumps({"step": step, "data": data}) + "\n")
            metrics.flush()
            print(f"(LambdaGRPOTaskRunner pid=7) step:{step} - " + " - ".join(f"k{i}:{i}" for i in range(100)))
            time.sleep(0.3)
    if sys.argv[2] == "raise":
        raise RuntimeError("the trainer stopped: λ differs across actor ranks")
    if sys.argv[2] == "interrupt":
        raise KeyboardInterrupt
except BaseException as error:
    sys.exit(output.fail(error))
output.finish()
'''


def drive(tmp_path, outcome):
    result = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "run"), outcome], capture_output=True,
                            text=True, timeout=180)
    log = (tmp_path / "run" / "logs" / "20261130-120000.log").read_text()
    return result, log


def test_console_has_the_run_and_the_log_has_everything(tmp_path):
    result, log = drive(tmp_path, "finish")
    assert result.returncode == 0, result.stdout + result.stderr
    console = result.stdout
    assert result.stderr == ""
    assert console.startswith("lambda_grpo-tiny_cpu · lambda_grpo")
    assert "Ray started (a local instance)" in console and "λ = 0 at step 0" in console
    steps = [line for line in console.splitlines() if line.startswith("step ")]
    assert steps[0].startswith("step 1/3  reward 0.250  len 7.0  λ +0.0100  ∂λ -5.0e-01  2.5 s/step  ETA 0:05")
    assert [line.split()[1] for line in steps] == ["1/3", "2/3", "3/3"]
    assert "finished after" in console and "λ         +0.0100 (step 1) → +0.0300 (step 3)" in console
    assert "reward    0.250 (step 1) → 0.750 (step 3)" in console
    assert "lambda.png response_length.png entropy.png reward.png" in console
    for flood in ("ray init kwargs", "clip_ratio", "WARNING from a child process", "child stderr", "step:1 -"):
        assert flood not in console and flood in log
    assert "[lambda_grpo] λ = 0 at step 0" in log
    assert len(console.splitlines()) < 40
    assert sorted(path.name for path in (tmp_path / "run" / "plots").glob("*.png")) == [
        "entropy.png", "lambda.png", "response_length.png", "reward.png"]


def test_a_failed_run_shows_the_error_the_summary_and_the_log(tmp_path):
    result, log = drive(tmp_path, "raise")
    assert result.returncode == 1
    console = result.stdout
    assert "RuntimeError: the trainer stopped: λ differs across actor ranks" in console
    assert "FAILED after" in console and "3 steps logged (steps 1–3)" in console
    assert str(tmp_path / "run" / "logs" / "20261130-120000.log") in console.splitlines()[-1]
    assert "Traceback (most recent call last)" in log and "λ differs across actor ranks" in log
    assert (tmp_path / "run" / "plots" / "lambda.png").is_file()  # the curves up to the failure


def test_ctrl_c_ends_with_the_summary_and_status_130(tmp_path):
    result, _ = drive(tmp_path, "interrupt")
    assert result.returncode == 130
    assert "interrupted after" in result.stdout and "Traceback" not in result.stdout


def test_the_follower_reads_complete_new_lines_and_survives_truncation(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 9, "data": {}}\n')  # an earlier start's record in a reused file: not this start's
    follower = LineFollower(path)
    assert follower.new_lines() == []
    path.write_text('{"step": 1')  # verl truncates the file on start, then writes
    assert follower.new_lines() == []  # no line until it is complete
    with path.open("a") as file:
        file.write(', "data": {}}\n{"step": 2, "data": {}}\n')
    assert follower.new_lines() == ['{"step": 1, "data": {}}', '{"step": 2, "data": {}}']
    assert follower.new_lines() == []
    assert LineFollower(tmp_path / "not yet there.jsonl").new_lines() == []
