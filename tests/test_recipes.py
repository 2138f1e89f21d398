"""Recipes are thin calls of the entry point: their overrides compose, and "$@" reaches the job last."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lambda_grpo.config import compose, validate

RECIPES = sorted(p for p in (Path(__file__).resolve().parents[1] / "recipes").glob("*.sh") if p.name != "lib.sh")
FAKE_PYTHON = "#!/bin/sh\nexec {python} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"\n"


@pytest.fixture(scope="module")
def fake_bin(tmp_path_factory):
    """A PATH folder whose python3 prints the arguments it was called with, as JSON."""
    folder = tmp_path_factory.mktemp("bin")
    script = folder / "python3"
    script.write_text(FAKE_PYTHON.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return folder


def run_recipe(recipe, fake_bin, *args, **env):
    environment = dict(os.environ, PATH=f"{fake_bin}:{os.environ['PATH']}", DATA_DIR="/data/prepared", **env)
    return subprocess.run([str(recipe), *args], env=environment, capture_output=True, text=True, timeout=60)


def test_every_experiment_of_the_paper_has_a_recipe():
    names = {recipe.name for recipe in RECIPES}
    for size in ("qwen2_5_1_5b", "qwen2_5_3b", "qwen2_5_7b"):
        for algo in ("lambda_grpo", "grpo", "dapo"):
            assert f"{algo}-{size}-1n8g.sh" in names
    assert {"dr_grpo-qwen2_5_1_5b-1n8g.sh", "lambda_grpo_fixed-qwen2_5_1_5b-1n8g.sh"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_recipe_passes_overrides_through_and_composes(recipe, fake_bin):
    result = run_recipe(recipe, fake_bin, "trainer.total_epochs=1", "actor_rollout_ref.rollout.n=4")
    assert result.returncode == 0, result.stderr
    argv = json.loads(result.stdout)
    assert argv[:2] == ["-m", "lambda_grpo.main"]
    assert argv[2:4] == ["data.train_files=/data/prepared/train.parquet", "data.val_files=/data/prepared/val.parquet"]
    assert argv[-2:] == ["trainer.total_epochs=1", "actor_rollout_ref.rollout.n=4"]  # the caller's, last
    size, algo = recipe.name.split("-")[1], recipe.name.split("-")[0].replace("_fixed", "")
    assert f"model_size={size}" in argv and f"algo={algo}" in argv

    validate(compose(argv[2:]), check_paths=False)  # the data files are the user's; their checks: test_config.py


def test_fixed_lambda_recipe_freezes_lambda(fake_bin):
    recipe = next(r for r in RECIPES if r.name.startswith("lambda_grpo_fixed"))
    argv = json.loads(run_recipe(recipe, fake_bin, LAMBDA="-2.5").stdout)
    assert "lambda_grpo.lambda_trainable=false" in argv and "lambda_grpo.lambda_init=-2.5" in argv


def test_unknown_launcher_is_refused(fake_bin):
    result = run_recipe(RECIPES[0], fake_bin, LAUNCHER="slurm")
    assert result.returncode == 2 and "LAUNCHER must be 'local' or 'cluster'" in result.stderr


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.name)
def test_recipe_says_how_to_install_the_gpu_stack(recipe):
    assert "make install-gpu" in recipe.read_text()


def test_the_7b_long_response_recipe_splits_sequences_with_ulysses(fake_bin):
    from lambda_grpo.config import sequence_parallel_size

    (recipe,) = [r for r in RECIPES if "ulysses" in r.name]
    cfg = compose(json.loads(run_recipe(recipe, fake_bin).stdout)[2:])
    assert cfg.actor_rollout_ref.model.path == "Qwen/Qwen2.5-7B" and sequence_parallel_size(cfg) == 4
    assert cfg.data.max_response_length == 16384 and cfg.actor_rollout_ref.ref.ulysses_sequence_parallel_size == 4
    assert cfg.actor_rollout_ref.model.use_remove_padding  # Ulysses splits remove-padding's packed sequences
