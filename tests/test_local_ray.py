"""lambda_grpo.local_ray: a device or CPU request that the Ray started on this machine cannot serve is an error
in seconds (verl would wait forever); joining a cluster (RAY_ADDRESS, a Ray job, `ray start`) is left alone."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from lambda_grpo import local_ray
from lambda_grpo.config import compose
from lambda_grpo.config_values import ConfigError
from lambda_grpo.local_ray import check_local_ray, cluster_address

from startup_helpers import short_temp_dir


@pytest.fixture
def ray_temp_dir():
    with short_temp_dir() as folder:
        yield folder


@pytest.fixture
def no_cluster(ray_temp_dir, monkeypatch):
    """No RAY_ADDRESS, no `ray start` cluster (an empty Ray temp dir), no visible GPU: a laptop."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return [f"+ray_kwargs.ray_init._temp_dir={ray_temp_dir}"]


def test_cuda_without_gpus_and_without_a_cluster_is_an_error(no_cluster):
    with pytest.raises(ConfigError) as error:
        check_local_ray(compose(no_cluster))
    message = str(error.value)
    assert message.startswith("trainer.device: cuda needs trainer.n_gpus_per_node × trainer.nnodes = 8 GPUs, "
                              "and this machine has 0;")
    assert "model_size=tiny_cpu" in message and "RAY_ADDRESS" in message


def test_a_gpu_less_driver_that_joins_a_cluster_is_not_judged(no_cluster, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # also what `ray job submit` sets for its entrypoint
    check_local_ray(compose(no_cluster))
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", '{"runtime_env": {"working_dir": "gcs://_ray_pkg_1.zip"}}')
    check_local_ray(compose([*no_cluster, "trainer.default_local_dir=/shared/ckpt"]))


def test_a_cluster_started_on_this_machine_is_joined(no_cluster, ray_temp_dir):
    (ray_temp_dir / "ray_current_cluster").write_text("10.0.0.1:6379")
    assert cluster_address({"_temp_dir": str(ray_temp_dir)}) == "10.0.0.1:6379"
    check_local_ray(compose(no_cluster))


def test_address_local_starts_a_local_ray_even_with_ray_address(no_cluster, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    with pytest.raises(ConfigError, match="^trainer.device: cuda needs"):
        check_local_ray(compose([*no_cluster, "+ray_kwargs.ray_init.address=local"]))


def test_address_auto_without_a_running_ray_is_an_error(no_cluster, monkeypatch):
    from ray._private import services

    monkeypatch.setattr(services, "find_gcs_addresses", lambda: [])  # other users' Ray processes on this machine
    with pytest.raises(ConfigError, match="^ray_kwargs.ray_init.address: auto finds no running Ray instance"):
        check_local_ray(compose([*no_cluster, "+ray_kwargs.ray_init.address=auto"]))


def test_an_eight_gpu_machine_needs_the_cpus_verl_reserves(no_cluster, monkeypatch):
    monkeypatch.setattr(local_ray, "local_device_count", lambda resource: 8 if resource == "GPU" else 0)
    monkeypatch.setattr(local_ray, "local_cpu_count", lambda: 16)
    with pytest.raises(ConfigError) as error:
        check_local_ray(compose(no_cluster))
    assert str(error.value).startswith("ray_kwargs.ray_init.num_cpus: this run's local Ray would have 16 CPUs, and "
                                       "verl reserves at least 34 (3 per device × 8, TransferQueue's controller and 8 "
                                       "storage units, 1 to place each worker)")
    monkeypatch.setattr(local_ray, "local_cpu_count", lambda: 34)
    check_local_ray(compose(no_cluster))
    check_local_ray(compose([*no_cluster, "ray_kwargs.ray_init.num_cpus=34"]))
    with pytest.raises(ConfigError, match="^trainer.device: cuda needs trainer.n_gpus_per_node × trainer.nnodes = 16"):
        check_local_ray(compose([*no_cluster, "trainer.nnodes=2"]))


def test_a_ray_gpu_count_below_the_request_is_an_error(no_cluster, monkeypatch):
    monkeypatch.setattr(local_ray, "local_device_count", lambda resource: 8)
    with pytest.raises(ConfigError, match=r"^ray_kwargs.ray_init.num_gpus: this run's local Ray would offer 4 GPUs"):
        check_local_ray(compose([*no_cluster, "+ray_kwargs.ray_init.num_gpus=4", "ray_kwargs.ray_init.num_cpus=64"]))


def test_the_cpu_platform_counts_its_logical_gpus_and_cpus(no_cluster):
    tiny = [*no_cluster, "model_size=tiny_cpu"]
    check_local_ray(compose(tiny))
    with pytest.raises(ConfigError, match=r"^ray_kwargs.ray_init.num_gpus: this run's local Ray would offer 1 GPUs, "
                                          r"but verl reserves trainer.n_gpus_per_node × trainer.nnodes = 2 \(logical"):
        check_local_ray(compose([*tiny, "trainer.n_gpus_per_node=2"]))
    with pytest.raises(ConfigError, match="^ray_kwargs.ray_init.num_cpus: this run's local Ray would have 5 CPUs"):
        check_local_ray(compose([*tiny, "ray_kwargs.ray_init.num_cpus=5"]))
    check_local_ray(compose([*tiny, "ray_kwargs.ray_init.num_cpus=6"]))


def test_a_ray_temp_dir_too_long_for_its_sockets_is_an_error(no_cluster, monkeypatch, ray_temp_dir):
    tiny = ["model_size=tiny_cpu", "+ray_kwargs.ray_init._temp_dir=/tmp/" + "x" * 60]
    with pytest.raises(ConfigError, match=r"^ray_kwargs.ray_init._temp_dir: Ray's temp dir /tmp/x{60} .* is too long"):
        check_local_ray(compose(tiny))
    monkeypatch.setenv("RAY_TMPDIR", "/tmp/" + "y" * 60)  # a cluster's long $TMPDIR, without _temp_dir
    with pytest.raises(ConfigError, match=r"Ray's temp dir /tmp/y{60}/ray \(from _temp_dir, RAY_TMPDIR or TMPDIR\)"):
        check_local_ray(compose(["model_size=tiny_cpu"]))
    check_local_ray(compose(["model_size=tiny_cpu", f"+ray_kwargs.ray_init._temp_dir={ray_temp_dir}"]))


def test_the_counts_come_from_rays_own_detection(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_ray.local_device_count("GPU") == 0
    assert local_ray.local_device_count("NO_SUCH_ACCELERATOR") == 0
    assert local_ray.local_cpu_count() >= 1


def test_the_upstream_reservations_are_what_the_check_counts():
    """Fails when verl or TransferQueue change what they reserve (then update CPUS_PER_DEVICE & co)."""
    from transfer_queue.controller import TransferQueueController
    from transfer_queue.storage.simple_storage import SimpleStorageUnit
    from verl.single_controller.ray.base import RayResourcePool, ResourcePoolManager

    (colocate,) = [f.default for f in dataclasses.fields(ResourcePoolManager) if f.name == "max_colocate_count"]
    assert colocate == local_ray.CPUS_PER_DEVICE
    assert "max_colocate_count=self.max_colocate_count" in inspect.getsource(ResourcePoolManager.create_resource_pool)
    assert 'bundle = {"CPU": self.max_colocate_count}' in inspect.getsource(RayResourcePool.get_placement_groups)
    for actor in (TransferQueueController, SimpleStorageUnit):
        assert actor._default_options["num_cpus"] == local_ray.TRANSFER_QUEUE_CONTROLLER_CPUS
