"""`python -m lambda_grpo.main`: start-up failures come in seconds, before Ray, from any directory, as one line
naming the key, the value and the fix."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from startup_helpers import run_inputs, short_temp_dir


def run_main(*overrides, cwd, env=None):
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "lambda_grpo.main", *overrides], cwd=cwd, capture_output=True,
                            text=True, timeout=120, env=env)
    return result, time.monotonic() - start


@pytest.mark.parametrize(("override", "line"), [
    ("algo=gspo", "algo: no option 'gspo' (no algo/gspo.yaml)"),
    ("trainer.nnode=2", "trainer.nnode: no such key; did you mean trainer.nnodes?"),
])
def test_overrides_that_do_not_compose_fail_fast_in_one_line(tmp_path, override, line):
    result, seconds = run_main(override, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]  # one line: not Hydra's several
    assert result.stderr.startswith(f"lambda_grpo: invalid config: {line}")
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


@pytest.fixture
def inputs(tmp_path) -> Iterator[list[str]]:
    """verl-schema data files and a checkpoint dir in tmp_path, and an empty Ray temp dir (no cluster to join)."""
    with short_temp_dir() as ray_temp_dir:
        yield [*run_inputs(tmp_path), f"+ray_kwargs.ray_init._temp_dir={ray_temp_dir}"]


def laptop_env() -> dict[str, str]:
    """No GPU visible and no Ray cluster to join, whatever machine runs the test."""
    return {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["lambda_grpo.lambda_trainable=no"], "lambda_grpo.lambda_trainable: must be true or false (got the string "
                                              "'no'); write lambda_grpo.lambda_trainable=false, unquoted"),
        (["data.val_files={tmp}/empty.parquet"], "data.val_files: {tmp}/empty.parquet is empty (0 bytes); prepare it"),
        ([], "trainer.device: cuda needs trainer.n_gpus_per_node × trainer.nnodes = 8 GPUs, and this machine has 0; "),
    ],
    ids=["raw-value", "data-file", "cuda-without-gpus"],
)
def test_a_bad_config_is_one_line_in_seconds_before_ray(tmp_path, inputs, overrides, line):
    (tmp_path / "empty.parquet").write_bytes(b"")
    args = [*inputs, *(o.format(tmp=tmp_path) for o in overrides)]
    result, seconds = run_main(*args, cwd=tmp_path, env=laptop_env())
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "ray init kwargs" not in result.stdout  # verl's line before ray.init
    ours = [text for text in result.stderr.splitlines() if text.startswith("lambda_grpo:")]
    assert ours == [result.stderr.strip().splitlines()[-1]]
    assert ours[0].startswith(f"lambda_grpo: invalid config: {line.format(tmp=tmp_path)}"), ours
    assert seconds < 60


def test_warnings_print_one_line_each_before_the_run(tmp_path, inputs):
    result, _ = run_main(*inputs, "algo=grpo", "lambda_grpo.lambda_lr=0.5", cwd=tmp_path,
                         env=laptop_env())  # the missing GPUs stop it after the warnings, before Ray
    lines = [text for text in result.stderr.splitlines() if text.startswith("lambda_grpo:")]
    assert lines[0] == ("lambda_grpo: warning: lambda_grpo.lambda_lr=0.5 has no effect with lambda_grpo.scheme=grpo "
                        "(only the lambda scheme has z, h and λ); drop it, or use algo=lambda_grpo")
    assert lines[1].startswith("lambda_grpo: invalid config: trainer.device: cuda needs") and len(lines) == 2
