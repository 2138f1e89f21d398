"""What a run's `ray_kwargs.ray_init` may ask of the Ray cluster it starts on (verl glue, before `ray.init`).

verl's `run_ppo` starts Ray with `ray.init(**ray_kwargs.ray_init)`, whose runtime_env is verl's defaults merged
with `ray_kwargs.ray_init.runtime_env`. Ray refuses two things a config may hold:

- Under `ray job submit` (launch/submit), Ray merges the job's runtime env (launch/runtime_env.yaml) with the
  driver's and raises "Failed to merge the Job's runtime env ... because of a conflict" when both set the same
  environment variable, even to the same value (`ray.runtime_env.runtime_env._merge_runtime_env`). The primary
  config and launch/runtime_env.yaml both set VERL_USE_EXTERNAL_MODULES on purpose: the config for a run without
  a job (`python -m lambda_grpo.main`), the file for the job's own driver process and for the preflight, which
  sees only the job's env. `merge_job_env` keeps one copy: a variable the job already sets to the same value
  leaves the config's env (the job's env reaches every process of the job, on every node); one set to two
  different values is a `ConfigError` naming both, before Ray starts. verl adds variables of its own to the
  driver's runtime env (`verl.trainer.constants_ppo.get_ppo_ray_runtime_env`: VERL_FULL_DETERMINISM,
  VLLM_BATCH_INVARIANT, VERL_RL_INSIGHT_ENABLE always, PYTHONHASHSEED and the other determinism variables when set,
  TRANSFER_QUEUE_ENABLE with TransferQueue); one of those in the job's runtime env is a `ConfigError` too
  (`verl_env_clashes`), which says to set it in the config instead.
- Joining an existing cluster (RAY_ADDRESS, which Ray sets inside every job, `ray_init.address`, or a cluster
  `ray start` runs on this machine: `lambda_grpo.local_ray.cluster_address`), Ray refuses
  `num_cpus`, `num_gpus`, `resources`, `labels` and `object_store_memory`: they describe the local cluster that
  `ray.init` would start (configs/platform/cpu.yaml sets num_cpus and num_gpus for one). A cluster's nodes
  declare their own when they start (launch/start_head and launch/start_worker --num-cpus, --num-gpus).
  `drop_local_cluster_options` leaves them out and says so.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict

from lambda_grpo.config import ConfigError, ray_job_runtime_env
from lambda_grpo.local_ray import cluster_address

ENV_KEY = "ray_kwargs.ray_init.runtime_env.env_vars"

LOCAL_CLUSTER_OPTIONS = ("num_cpus", "num_gpus", "resources", "labels", "object_store_memory")
"""`ray.init` arguments that Ray refuses when it joins an existing cluster (ray/_private/worker.py, `init`)."""


def joins_existing_cluster(cfg: DictConfig) -> bool:
    """True when `ray.init` will connect to a running cluster instead of starting a local one."""
    return cluster_address(OmegaConf.to_container(cfg.ray_kwargs.ray_init, resolve=True) or {}) is not None


def merge_job_env(cfg: DictConfig) -> list[str]:
    """Drop from the config's Ray env vars those the enclosing Ray job sets to the same value; return their names.

    Raises ConfigError for a variable the job and the config set to different values. Outside a job, a no-op.
    """
    job_env = {str(key): str(value) for key, value in (ray_job_runtime_env().get("env_vars") or {}).items()}
    if verl_owned := verl_env_clashes(cfg, job_env):
        raise ConfigError(
            f"{ENV_KEY}: the job's runtime env (launch/submit --runtime-env, default launch/runtime_env.yaml) sets "
            f"{', '.join(verl_owned)}, which verl's run_ppo also passes to ray.init, and Ray refuses the job. Remove "
            f"it from that file and set it here instead, e.g. +{ENV_KEY}.{verl_owned[0]}=<value>"
        )
    env = cfg.ray_kwargs.ray_init.get("runtime_env", {}).get("env_vars") or {}
    shared = sorted(key for key in env if key in job_env)
    clashes = [f"{key}={env[key]!r} (the job's runtime env: {job_env[key]!r})"
               for key in shared if str(env[key]) != job_env[key]]
    if clashes:
        raise ConfigError(
            f"{ENV_KEY}: {', '.join(clashes)}: Ray refuses a variable that the job's runtime env "
            "(launch/submit --runtime-env, default launch/runtime_env.yaml) also sets. Set it in one place: "
            "remove it from that file, or drop the override"
        )
    with open_dict(cfg):
        for key in shared:
            del env[key]
    return shared


def verl_env_clashes(cfg: DictConfig, job_env: dict[str, str]) -> list[str]:
    """The job's variables that verl's run_ppo also puts into the driver's runtime env (module docstring)."""
    if not job_env:
        return []
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    verl_env = set(get_ppo_ray_runtime_env(cfg)["env_vars"])  # reads os.environ, which holds the job's env here
    if cfg.transfer_queue.get("enable"):
        verl_env.add("TRANSFER_QUEUE_ENABLE")
    return sorted(verl_env & set(job_env))


def drop_local_cluster_options(cfg: DictConfig) -> dict[str, object]:
    """When joining a running cluster, remove the `ray_init` options Ray refuses there; return what was removed."""
    if not joins_existing_cluster(cfg):
        return {}
    ray_init = cfg.ray_kwargs.ray_init
    dropped = {key: ray_init[key] for key in LOCAL_CLUSTER_OPTIONS if ray_init.get(key) is not None}
    with open_dict(cfg):
        for key in dropped:
            del ray_init[key]
    return dropped


def prepare_ray_init(cfg: DictConfig) -> list[str]:
    """Both adjustments; the notices to print (empty when nothing changed). Raises ConfigError on a clash."""
    notices = []
    if shared := merge_job_env(cfg):
        notices.append(f"{', '.join(shared)}: set by the Ray job's runtime env, which every process of the job "
                       f"gets; left out of {ENV_KEY}")
    if dropped := drop_local_cluster_options(cfg):
        shown = ", ".join(f"ray_kwargs.ray_init.{key}={value}" for key, value in dropped.items())
        notices.append(f"joining a running Ray cluster: {shown} describe a local one and are left out; the "
                       "cluster's nodes declare their own (launch/start_head, launch/start_worker: --num-cpus, "
                       "--num-gpus)")
    return notices
