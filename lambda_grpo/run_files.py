"""A run's folder: where each start's config, log, metrics and the tracking backends' files go, and its plots.

The run's folder is `trainer.default_local_dir` (checkpoints/<project>/<experiment> by default), where verl puts
the checkpoints a restart resumes from. Each start of the run adds, named by its start time (UTC):

    configs/<start>.yaml    the composed config, resolved, exactly as trained
    logs/<start>.log        everything verl, Ray and vLLM print (lambda_grpo.run_output sends it there)
    metrics/<start>.jsonl   verl's `file` logger, one record per step (verl truncates its file on every
                            start, so each start gets its own; lambda_grpo.plots reads the folder in order)
and the run keeps
    plots/*.png             the training curves of every start so far (lambda_grpo.plots), drawn at the end
    tensorboard/            verl's `tensorboard` logger, when trainer.logger lists it
    wandb/                  verl's `wandb` logger's local files, when trainer.logger lists it

A metrics file, tensorboard or wandb folder chosen through verl's own environment variables (VERL_FILE_LOGGER_PATH,
VERL_FILE_LOGGER_ROOT, TENSORBOARD_DIR, WANDB_DIR), in the shell or in ray_kwargs.ray_init.runtime_env.env_vars,
is left as chosen.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from lambda_grpo.console import RunPaths
from lambda_grpo.plots import Series, draw, figures, read_run

FILE_LOGGER = "file"
"""verl's metrics-JSONL backend; the console's step lines and the plots read it, so every run has it."""


def start_stamp() -> str:
    """The name of this start's files: its UTC start time, sortable."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def _loggers(cfg: DictConfig) -> list[str]:
    loggers = cfg.trainer.logger
    return [loggers] if isinstance(loggers, str) else list(loggers or [])


def _env(cfg: DictConfig) -> DictConfig:
    return cfg.ray_kwargs.ray_init.runtime_env.env_vars


def _chosen(cfg: DictConfig, names: Iterable[str]) -> str | None:
    """The first of verl's variables `names` set in this shell or in the Ray runtime env, else None."""
    env = _env(cfg)
    for name in names:
        value = env.get(name) if name in env else os.environ.get(name)
        if value:
            return str(value)
    return None


def prepare(cfg: DictConfig, start: str) -> RunPaths:
    """Create the run's folder, point verl's loggers into it (adding the `file` logger if it is missing), write the
    config, and return the paths of this start. Mutates `cfg` (trainer.logger and the runtime env's variables)."""
    run_dir = Path(os.path.abspath(os.path.expanduser(cfg.trainer.default_local_dir)))
    loggers = _loggers(cfg)
    with open_dict(cfg):
        if FILE_LOGGER not in loggers:
            loggers.append(FILE_LOGGER)
            cfg.trainer.logger = loggers
        env = _env(cfg)
        metrics = _metrics_file(cfg, run_dir, start)
        env.VERL_FILE_LOGGER_PATH = str(metrics)
        for logger, variable, folder in (("tensorboard", "TENSORBOARD_DIR", "tensorboard"), ("wandb", "WANDB_DIR", "")):
            if logger in loggers and not _chosen(cfg, [variable]):
                env[variable] = str(run_dir / folder)
    paths = RunPaths(run_dir=run_dir, config=run_dir / "configs" / f"{start}.yaml", metrics=metrics,
                     log=run_dir / "logs" / f"{start}.log", plots=run_dir / "plots")
    for folder in (paths.config.parent, paths.metrics.parent, paths.log.parent):
        folder.mkdir(parents=True, exist_ok=True)
    paths.config.write_text(OmegaConf.to_yaml(cfg, resolve=True), encoding="utf-8")
    return paths


def _metrics_file(cfg: DictConfig, run_dir: Path, start: str) -> Path:
    """This start's JSONL: the user's choice (verl's variables), else <run dir>/metrics/<start>.jsonl."""
    chosen = _chosen(cfg, ["VERL_FILE_LOGGER_PATH"])
    if chosen:
        return Path(os.path.abspath(os.path.expanduser(chosen)))
    root = _chosen(cfg, ["VERL_FILE_LOGGER_ROOT"])
    if root:  # verl's FileLogger: <root>/<project_name>/<experiment_name>.jsonl
        folder = Path(os.path.abspath(os.path.expanduser(root))) / str(cfg.trainer.project_name)
        return folder / f"{cfg.trainer.experiment_name}.jsonl"
    return run_dir / "metrics" / f"{start}.jsonl"


def metrics_sources(paths: RunPaths) -> list[Path]:
    """What holds the whole run's metrics: the metrics folder (every start) when this start's file is in it."""
    default_folder = paths.run_dir / "metrics"
    return [default_folder] if paths.metrics.parent == default_folder else [paths.metrics]


def history(paths: RunPaths) -> Series:
    """Every metric of the run so far, every start merged (later starts win on repeated steps); {} if none."""
    sources = [source for source in metrics_sources(paths) if source.is_file() or any(source.glob("*.jsonl"))]
    return read_run(sources) if sources else {}


def draw_plots(series: Series, name: str, out_dir: Path) -> list[Path]:
    """The training curves of one run (lambda_grpo.plots' figures) as PNGs in `out_dir`."""
    drawn = figures({name: series})
    if drawn:
        out_dir.mkdir(parents=True, exist_ok=True)
    return [draw(figure, out_dir) for figure in drawn]

