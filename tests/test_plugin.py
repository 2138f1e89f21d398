"""The verl.plugins entry point registers the loss in every process that imports verl, Ray workers included."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

CHECK = (
    "import verl\n"
    "from verl.trainer.ppo.core_algos import get_policy_loss_fn\n"
    "print(get_policy_loss_fn('lambda_grpo').__module__)\n"
)


def test_fresh_process_finds_the_loss_after_import_verl_only():
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_MODULES", "VERL_USE_EXTERNAL_PLUGINS")}
    result = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "lambda_grpo.loss"


@pytest.mark.ray
def test_ray_worker_process_resolves_the_loss():
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
             runtime_env={"env_vars": {"VERL_USE_EXTERNAL_MODULES": ""}})
    try:
        @ray.remote
        def resolve() -> tuple[str, int]:
            import verl  # noqa: F401  (loads the verl.plugins entry points, as every worker does)
            from verl.trainer.ppo.core_algos import get_policy_loss_fn

            return get_policy_loss_fn("lambda_grpo").__module__, os.getpid()

        module, pid = ray.get(resolve.remote(), timeout=120)
        assert module == "lambda_grpo.loss" and pid != os.getpid()
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
