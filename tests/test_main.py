"""`python -m lambda_grpo.main`: start-up failures come in seconds, from any directory, naming the key."""

import subprocess
import sys
import time


def run_main(*overrides, cwd):
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "lambda_grpo.main", *overrides], cwd=cwd, capture_output=True,
                            text=True, timeout=120)
    return result, time.monotonic() - start


def test_unknown_algo_fails_fast_naming_the_group(tmp_path):
    result, seconds = run_main("algo=gspo", cwd=tmp_path)
    assert result.returncode != 0 and "algo/gspo" in result.stderr
    assert seconds < 60  # seconds, not after model loading (no Ray, no model)


def test_missing_data_fails_fast_with_exit_2(tmp_path):
    result, seconds = run_main("model_size=qwen2_5_7b", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "lambda_grpo: invalid config: data.train_files: required but not set" in result.stderr
    assert seconds < 60


def test_composed_config_prints_from_any_directory(tmp_path):
    result, _ = run_main("model_size=qwen2_5_3b", "algo=grpo", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "scheme: grpo" in result.stdout and "path: Qwen/Qwen2.5-3B" in result.stdout
