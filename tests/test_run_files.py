"""lambda_grpo.run_files: the run's folder, verl's loggers pointed into it, the config, plots and the checkpoint."""

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from lambda_grpo import run_files
from lambda_grpo.config import compose

START = "20261130-120000"


def prepared(tmp_path, *overrides):
    cfg = compose(["model_size=tiny_cpu", f"trainer.default_local_dir={tmp_path / 'run'}", *overrides])
    return cfg, run_files.prepare(cfg, START)


def test_each_start_gets_its_config_log_and_metrics_in_the_run_folder(tmp_path):
    cfg, paths = prepared(tmp_path)
    run = tmp_path / "run"
    assert paths.run_dir == run and paths.plots == run / "plots"
    assert paths.config == run / "configs" / f"{START}.yaml" and paths.log == run / "logs" / f"{START}.log"
    assert paths.metrics == run / "metrics" / f"{START}.jsonl"
    assert cfg.ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH == str(paths.metrics)
    assert paths.log.parent.is_dir() and paths.metrics.parent.is_dir()
    # The config file is the composed config, resolved, as trained.
    written = OmegaConf.load(paths.config)
    assert written == OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    assert written.trainer.total_training_steps == 3 and not OmegaConf.is_interpolation(written.trainer,
                                                                                          "default_local_dir")


def test_the_file_logger_is_added_when_missing(tmp_path):
    cfg, _ = prepared(tmp_path, "trainer.logger=[console]")
    assert list(cfg.trainer.logger) == ["console", "file"]


def test_tracking_backends_write_into_the_run_folder_unless_chosen(tmp_path, monkeypatch):
    cfg, paths = prepared(tmp_path, "trainer.logger=[console,file,tensorboard,wandb]")
    env = cfg.ray_kwargs.ray_init.runtime_env.env_vars
    assert env.TENSORBOARD_DIR == str(paths.run_dir / "tensorboard") and env.WANDB_DIR == str(paths.run_dir)
    monkeypatch.setenv("TENSORBOARD_DIR", "/elsewhere/tb")
    cfg, _ = prepared(tmp_path, "trainer.logger=[console,file,tensorboard]")
    assert "TENSORBOARD_DIR" not in cfg.ray_kwargs.ray_init.runtime_env.env_vars
    cfg, _ = prepared(tmp_path)
    assert not {"TENSORBOARD_DIR", "WANDB_DIR"} & set(cfg.ray_kwargs.ray_init.runtime_env.env_vars)


def test_a_metrics_file_chosen_through_verls_variables_is_kept(tmp_path, monkeypatch):
    chosen = tmp_path / "mine.jsonl"
    cfg, paths = prepared(tmp_path, f"+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH={chosen}")
    assert paths.metrics == chosen and run_files.metrics_sources(paths) == [chosen]
    monkeypatch.setenv("VERL_FILE_LOGGER_ROOT", str(tmp_path / "root"))
    cfg, paths = prepared(tmp_path)
    assert paths.metrics == tmp_path / "root" / "lambda_grpo" / "lambda_grpo-tiny_cpu.jsonl"


def test_history_merges_every_start_and_plots_are_drawn(tmp_path):
    _, paths = prepared(tmp_path)
    assert run_files.history(paths) == {}
    earlier = paths.metrics.parent / "20261129-080000.jsonl"
    earlier.write_text("".join(json.dumps({"step": s, "data": {"actor/lambda": 0.01 * s, "critic/score/mean": 0.1}})
                               + "\n" for s in (1, 2, 3)))
    paths.metrics.write_text(json.dumps({"step": 4, "data": {"actor/lambda": 0.05, "critic/score/mean": 0.2}}) + "\n")
    history = run_files.history(paths)
    assert history["actor/lambda"] == [(1, 0.01), (2, 0.02), (3, 0.03), (4, 0.05)]
    drawn = run_files.draw_plots(history, "λ-GRPO", paths.plots)
    assert sorted(path.name for path in drawn) == ["lambda.png", "reward.png"]
    assert all(path.read_bytes()[:4] == b"\x89PNG" for path in drawn)


TRACKING_EXAMPLE = """
import os
import sys
from verl.utils.tracking import Tracking
from lambda_grpo import run_files
from lambda_grpo.config import compose

cfg = compose(["model_size=tiny_cpu", f"trainer.default_local_dir={sys.argv[1]}", *sys.argv[2:]])
run_files.prepare(cfg, run_files.start_stamp())
os.environ.update(cfg.ray_kwargs.ray_init.runtime_env.env_vars)  # what every Ray process of the run gets
tracking = Tracking(cfg.trainer.project_name, cfg.trainer.experiment_name, list(cfg.trainer.logger), config={})
for step in (1, 2, 3):
    tracking.log({"actor/lambda": 0.01 * step, "critic/score/mean": 0.25 * step, "actor/entropy": 4.0}, step)
tracking.finish()
"""


def test_tensorboard_example_of_the_readme_is_read_by_plots(tmp_path):
    """README "Experiment tracking": trainer.logger=[console,file,tensorboard] writes <run dir>/tensorboard through
    verl's own Tracking, and `python -m lambda_grpo.plots` draws from it the same curves as from the metrics."""
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-c", TRACKING_EXAMPLE, str(run), "trainer.logger=[console,file,tensorboard]"],
                   check=True, capture_output=True, timeout=120)
    from lambda_grpo.plots import read_run

    tensorboard, metrics = read_run([run / "tensorboard"]), read_run([run / "metrics"])
    assert [step for step, _ in tensorboard["actor/lambda"]] == [1, 2, 3]
    assert [value for _, value in tensorboard["actor/lambda"]] == pytest.approx([0.01, 0.02, 0.03], rel=1e-6)
    assert metrics["actor/lambda"] == [(1, 0.01), (2, 0.02), (3, 0.03)]
    out = subprocess.run([sys.executable, "-m", "lambda_grpo.plots", "--out-dir", str(tmp_path / "plots"),
                          "--run", f"tiny={run / 'tensorboard'}"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(path.name for path in (tmp_path / "plots").glob("*.png")) == ["entropy.png", "lambda.png",
                                                                               "reward.png"]


def test_wandb_offline_writes_into_the_run_folder_without_network(tmp_path):
    """README "Experiment tracking": WANDB_MODE=offline trainer.logger=[console,file,wandb] keeps the wandb run in
    <run dir>/wandb, to upload later with `wandb sync`."""
    run = tmp_path / "run"
    # An unreachable proxy: a network call would fail (offline mode makes none).
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HTTPS_PROXY": "http://0.0.0.0:9"}
    subprocess.run([sys.executable, "-c", TRACKING_EXAMPLE, str(run), "trainer.logger=[console,file,wandb]"],
                   check=True, capture_output=True, timeout=180, env=env)
    (offline_run,) = (run / "wandb").glob("offline-run-*")
    assert list(offline_run.glob("run-*.wandb"))
