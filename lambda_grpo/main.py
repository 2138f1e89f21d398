"""Train Qwen2.5 with λ-GRPO, or a GRPO / DAPO / Dr. GRPO baseline, on verl 0.9.1's trainer.

    python -m lambda_grpo.main model_size=qwen2_5_7b algo=lambda_grpo \\
        data.train_files=$HOME/data/math/train.parquet data.val_files=$HOME/data/math/test.parquet
    python -m lambda_grpo.main model_size=tiny_cpu algo=lambda_grpo     # a few steps on any CPU machine
    launch/submit model_size=qwen2_5_7b algo=lambda_grpo trainer.nnodes=2  # a Ray cluster (ray job submit)

Config groups: model_size=qwen2_5_1_5b|qwen2_5_3b|qwen2_5_7b|tiny_cpu|tiny_gpu, algo=lambda_grpo|grpo|dapo|dr_grpo;
every verl key stays overridable as with `python -m verl.trainer.main_ppo`. Before Ray starts, in seconds,
the config, its data files, model directories and checkpoint directory are validated
(lambda_grpo.config.validate), and, when this run starts its own Ray (no RAY_ADDRESS, no cluster to join),
that this machine has the devices and CPUs verl will reserve (lambda_grpo.local_ray). A failure prints one
line, `lambda_grpo: invalid config: <key>: <problem> (got <value>); <fix>`, and exits with status 2; legal
but pointless settings print `lambda_grpo: warning: ...` and the run goes on.
"""

from __future__ import annotations

import os
import sys
import time
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lambda_grpo.config import (
    CONFIG_MODULE,
    CONFIG_NAME,
    ConfigError,
    apply_choices,
    compose_with_choices,
    config_dir,
    validate,
)
from lambda_grpo.local_ray import check_local_ray
from lambda_grpo.local_ray_token import secure_local_token

# The configs beside the code (a checkout, a Ray job's uploaded working dir), else the packaged copy.
CONFIG_PATH = str(config_dir() or f"pkg://{CONFIG_MODULE}")


def main() -> None:
    """The command line's overrides must compose (else one line, exit 2); then Hydra runs `train`.

    Hydra prints its own composition errors over several lines (and advises a `+` for a misspelt key);
    composing first turns them into one line with a did-you-mean. Hydra's flags (--cfg, --help, -m)
    go to Hydra untouched.
    """
    overrides = sys.argv[1:]
    if not any(argument.startswith("-") for argument in overrides):
        try:
            compose_with_choices(overrides)
        except ConfigError as error:
            _refuse(error)
    train()


@hydra.main(config_path=CONFIG_PATH, config_name=CONFIG_NAME, version_base=None)
def train(cfg: DictConfig) -> None:
    """Validate (warnings printed, errors one line and exit 2), check this machine, then run."""
    choices = HydraConfig.get().runtime.choices
    apply_choices(cfg, choices)
    try:
        for warning in validate(cfg, choices=choices):
            print(f"lambda_grpo: warning: {_one_line(warning)}", file=sys.stderr)
        check_local_ray(cfg)
    except ConfigError as error:
        _refuse(error)
    run(cfg)


def _refuse(error: ConfigError) -> NoReturn:
    print(f"lambda_grpo: invalid config: {_one_line(error)}", file=sys.stderr)
    sys.exit(2)


def _one_line(message: object) -> str:
    return "; ".join(line.strip() for line in str(message).splitlines() if line.strip())


def run(cfg: DictConfig) -> None:
    """Train with a validated config: verl's run_ppo with the λ-GRPO TaskRunner."""
    _require_loss_registered()
    _activate_platform(cfg)
    _log_metrics_beside_checkpoints(cfg)
    # Before verl's ray.init: a local cluster's token file is created private (Ray's own is mode 644).
    if notice := secure_local_token(cfg.ray_kwargs.ray_init.get("address")):
        print(f"[lambda_grpo] {notice}")
    from verl.trainer.main_ppo import run_ppo

    from lambda_grpo.trainer import LambdaGRPOTaskRunner

    run_ppo(cfg, task_runner_class=LambdaGRPOTaskRunner)


def _require_loss_registered() -> None:
    """verl swallows plugin import errors: make sure ours loaded before any Ray process starts."""
    import verl  # noqa: F401  (loads the verl.plugins entry points)
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY

    if "lambda_grpo" not in POLICY_LOSS_REGISTRY:
        raise RuntimeError(
            "the 'lambda_grpo' loss is not registered after `import verl`: the package's verl.plugins entry "
            "point did not load. Reinstall lambda_grpo (pip install -e .) and run `python -c 'import lambda_grpo.plugin'` "
            "to see the import error."
        )


def _log_metrics_beside_checkpoints(cfg: DictConfig) -> None:
    """Point verl's `file` logger at <checkpoint dir>/metrics/<start time>.jsonl (unless the user chose).

    verl's default is <cwd>/<project_name>/<experiment>.jsonl, which lands inside this package's folder
    when run from a checkout, and its logger truncates the file on every start, so a resumed run would
    erase the history of the first: each start gets its own file, next to the checkpoints it resumes.
    """
    loggers = cfg.trainer.logger
    loggers = [loggers] if isinstance(loggers, str) else list(loggers)
    env_vars = cfg.ray_kwargs.ray_init.runtime_env.env_vars
    chosen = ("VERL_FILE_LOGGER_PATH", "VERL_FILE_LOGGER_ROOT")
    if "file" not in loggers or any(key in os.environ or key in env_vars for key in chosen):
        return
    folder = os.path.join(os.path.abspath(os.path.expanduser(cfg.trainer.default_local_dir)), "metrics")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + ".jsonl")
    with open_dict(cfg):
        env_vars.VERL_FILE_LOGGER_PATH = path
    print(f"[lambda_grpo] metrics (verl file logger): {path}")


def _activate_platform(cfg: DictConfig) -> None:
    """Export the environment a non-CUDA platform needs, here and in every Ray process."""
    if cfg.trainer.device != "cpu":
        return
    from lambda_grpo.cpu_platform import activate_cpu_platform

    env = activate_cpu_platform()
    with open_dict(cfg):
        cfg.ray_kwargs.ray_init.runtime_env.env_vars.update(env)


if __name__ == "__main__":
    main()
