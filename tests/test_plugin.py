"""The verl.plugins entry point loads in every process that imports verl, Ray workers included, and
registers the CPU platform there (λ-GRPO itself registers no policy loss: lambda_grpo.loss)."""

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

CHECK = (
    "import sys, verl\n"
    "from verl.plugin.platform import PlatformRegistry\n"
    "print('lambda_grpo.plugin' in sys.modules, PlatformRegistry.get('cpu').__module__)\n"
)


def test_fresh_process_loads_the_plugin_on_import_verl_only():
    env = {k: v for k, v in os.environ.items() if k not in ("VERL_USE_EXTERNAL_MODULES", "VERL_USE_EXTERNAL_PLUGINS")}
    result = subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "True lambda_grpo.cpu_platform"


@pytest.mark.ray
def test_ray_worker_process_loads_the_plugin():
    import ray

    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False,
             runtime_env={"env_vars": {"VERL_USE_EXTERNAL_MODULES": ""}})
    try:
        @ray.remote
        def loaded() -> tuple[bool, int]:
            import verl  # noqa: F401  (loads the verl.plugins entry points, as every worker does)

            return "lambda_grpo.plugin" in sys.modules, os.getpid()

        plugin_loaded, pid = ray.get(loaded.remote(), timeout=120)
        assert plugin_loaded and pid != os.getpid()
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
