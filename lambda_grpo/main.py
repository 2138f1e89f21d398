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

import sys
from typing import NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from lambda_grpo import run_files
from lambda_grpo.complete_checkpoints import ResumeError, prepare_resume
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
from lambda_grpo.ray_job import prepare_ray_init
from lambda_grpo.run_output import RunOutput
from lambda_grpo.watchdog import Watchdog, sigterm_fault

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
    """Train with a validated config: verl's run_ppo with the λ-GRPO TaskRunner, behind the run's console.

    The console shows the header, start-up progress, one line per step and the summary; everything verl, Ray
    and vLLM print goes to <trainer.default_local_dir>/logs/<start>.log (lambda_grpo.run_output). A failed
    run ends with the end of its traceback and the summary on the console, and exit status 1 (130 on Ctrl-C).
    Before Ray starts, verl's checkpoint tracker is made to name the latest complete checkpoint
    (lambda_grpo.complete_checkpoints); while it runs, a watchdog stops it as soon as one of its Ray actors dies,
    or on SIGTERM (lambda_grpo.watchdog), naming the cause.
    """
    _activate_platform(cfg)
    try:  # after the platform's variables are in the config: a clash with the job's env is found among them too
        notices = prepare_ray_init(cfg)
    except ConfigError as error:
        _refuse(error)
    # Before verl's ray.init: a local cluster's token file is created private (Ray's own is mode 644).
    if notice := secure_local_token(cfg.ray_kwargs.ray_init.get("address")):
        print(f"[lambda_grpo] {notice}")
    paths = run_files.prepare(cfg, run_files.start_stamp())
    try:
        notices.append(prepare_resume(paths.run_dir, cfg.trainer.resume_mode, cfg.trainer.get("resume_from_path")))
    except ResumeError as error:
        print(f"lambda_grpo: {_one_line(error)}", file=sys.stderr)
        sys.exit(2)
    output = RunOutput(cfg, paths)
    output.start()
    for notice in filter(None, notices):  # into the log, and to the console through its tag
        print(f"[lambda_grpo] {notice}")
    watchdog = Watchdog().start()
    watchdog.stop_on_sigterm()
    try:
        _require_plugin_loaded()
        from verl.trainer.main_ppo import run_ppo

        from lambda_grpo.trainer import LambdaGRPORemoteTaskRunner

        run_ppo(cfg, task_runner_class=LambdaGRPORemoteTaskRunner)
    except BaseException as error:  # noqa: BLE001  (every way a run ends reaches the console)
        sys.exit(output.fail(error, watchdog.stop(run_failed=True) or sigterm_fault(error)))
    watchdog.stop()
    output.finish()


def _require_plugin_loaded() -> None:
    """verl swallows plugin import errors: make sure ours loaded before any Ray process starts."""
    import verl  # noqa: F401  (loads the verl.plugins entry points)

    if "lambda_grpo.plugin" not in sys.modules:
        raise RuntimeError(
            "lambda_grpo's verl.plugins entry point did not load on `import verl`. Reinstall lambda_grpo "
            "(pip install -e .) and run `python -c 'import lambda_grpo.plugin'` to see the import error."
        )


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
