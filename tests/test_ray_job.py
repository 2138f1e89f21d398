"""lambda_grpo.ray_job: the config's ray_init meets a Ray job's runtime env, and a running cluster, as Ray allows.

Checked with Ray's own merge of a job's runtime env with the driver's (`_merge_runtime_env`, which `ray.init` runs
under `ray job submit` and which raises "Failed to merge the Job's runtime env" on a conflict), on the config the
entry point composes and the runtime env launch/submit sends.
"""

import copy
import json
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf
from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
from ray.runtime_env.runtime_env import _merge_runtime_env

from lambda_grpo.config import ConfigError, compose
from lambda_grpo.ray_job import drop_local_cluster_options, merge_job_env, prepare_ray_init

LAUNCH_RUNTIME_ENV = yaml.safe_load((Path(__file__).resolve().parents[1] / "launch" / "runtime_env.yaml").read_text())


def in_job(monkeypatch, env_vars: dict[str, str]) -> None:
    """This process as the driver of a Ray job with these runtime-env variables (as the job supervisor sets it)."""
    job_config = {"runtime_env": {"env_vars": env_vars, "working_dir": "gcs://_ray_pkg_x.zip"}}
    monkeypatch.setenv(RAY_JOB_CONFIG_JSON_ENV_VAR, json.dumps(job_config))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")


def driver_env(cfg) -> dict:
    return OmegaConf.to_container(cfg.ray_kwargs.ray_init.runtime_env, resolve=True)


@pytest.fixture(scope="module")
def tiny_config():
    return compose(["model_size=tiny_cpu"])


def test_the_job_keeps_the_plugin_variable_and_ray_merges(tiny_config, monkeypatch):
    """launch/runtime_env.yaml and the primary config both set VERL_USE_EXTERNAL_MODULES: Ray refused the job."""
    cfg = copy.deepcopy(tiny_config)
    job_env = {"runtime_env": {"env_vars": LAUNCH_RUNTIME_ENV["env_vars"]}}
    assert _merge_runtime_env(job_env["runtime_env"], driver_env(cfg)) is None  # what ray.init raised on
    in_job(monkeypatch, LAUNCH_RUNTIME_ENV["env_vars"])
    assert merge_job_env(cfg) == ["VERL_USE_EXTERNAL_MODULES"]
    merged = _merge_runtime_env(job_env["runtime_env"], driver_env(cfg))
    assert merged["env_vars"]["VERL_USE_EXTERNAL_MODULES"] == "lambda_grpo.plugin"


def test_outside_a_job_the_config_keeps_its_variables(tiny_config, monkeypatch):
    monkeypatch.delenv(RAY_JOB_CONFIG_JSON_ENV_VAR, raising=False)
    cfg = copy.deepcopy(tiny_config)
    assert merge_job_env(cfg) == []
    assert driver_env(cfg)["env_vars"]["VERL_USE_EXTERNAL_MODULES"] == "lambda_grpo.plugin"


def test_two_values_of_one_variable_are_refused(tiny_config, monkeypatch):
    cfg = copy.deepcopy(tiny_config)
    in_job(monkeypatch, {"VERL_USE_EXTERNAL_MODULES": "lambda_grpo.plugin,my_plugin"})
    with pytest.raises(ConfigError) as refused:
        merge_job_env(cfg)
    message = str(refused.value)
    assert message.startswith(
        "ray_kwargs.ray_init.runtime_env.env_vars: VERL_USE_EXTERNAL_MODULES='lambda_grpo.plugin'")
    assert "'lambda_grpo.plugin,my_plugin'" in message and "launch/runtime_env.yaml" in message


def test_a_variable_verl_passes_to_ray_init_is_refused_in_the_jobs_env(tiny_config, monkeypatch):
    """verl's get_ppo_ray_runtime_env always adds VERL_FULL_DETERMINISM: set in the job's env, Ray refused the job."""
    from verl.trainer.constants_ppo import get_ppo_ray_runtime_env

    cfg = copy.deepcopy(tiny_config)
    job_env = {**LAUNCH_RUNTIME_ENV["env_vars"], "VERL_FULL_DETERMINISM": "1"}
    in_job(monkeypatch, job_env)
    for key, value in job_env.items():  # the job's driver has its env
        monkeypatch.setenv(key, value)
    assert _merge_runtime_env({"env_vars": job_env}, get_ppo_ray_runtime_env(cfg)) is None  # what ray.init raises on
    with pytest.raises(ConfigError, match=r"sets VERL_FULL_DETERMINISM, which verl's run_ppo also passes"):
        merge_job_env(cfg)


def test_joining_a_cluster_leaves_out_the_local_cluster_resources(tiny_config, monkeypatch):
    """configs/platform/cpu.yaml declares 16 CPUs and 1 GPU for a local Ray, which ray.init refuses when joining."""
    cfg = copy.deepcopy(tiny_config)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(RAY_JOB_CONFIG_JSON_ENV_VAR, raising=False)
    assert drop_local_cluster_options(cfg) == {} and cfg.ray_kwargs.ray_init.num_gpus == 1
    in_job(monkeypatch, LAUNCH_RUNTIME_ENV["env_vars"])
    notices = prepare_ray_init(cfg)
    assert "num_cpus" not in cfg.ray_kwargs.ray_init and "num_gpus" not in cfg.ray_kwargs.ray_init
    assert cfg.ray_kwargs.ray_init.include_dashboard is False  # accepted by Ray when joining: kept
    assert notices[0].startswith("VERL_USE_EXTERNAL_MODULES: set by the Ray job's runtime env")
    assert "ray_kwargs.ray_init.num_cpus=16, ray_kwargs.ray_init.num_gpus=1" in notices[1]
    assert "--num-gpus" in notices[1]
