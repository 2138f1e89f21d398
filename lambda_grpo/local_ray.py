"""Can the Ray that `python -m lambda_grpo.main` starts on this machine serve the run? Checked before it starts.

verl's `run_ppo` calls `ray.init(**ray_kwargs.ray_init)`. With RAY_ADDRESS set (as inside `ray job
submit`), `ray_init.address` set, or a cluster started with `ray start` on this machine, that joins the
cluster: this machine's devices then say nothing (a GPU-less head or login node submits to GPU workers),
and `launch/submit --preflight` checks the cluster. Otherwise it starts a one-node Ray here, with the
accelerators Ray detects (or `ray_init.num_gpus`) and the CPUs it detects (or `ray_init.num_cpus`).
verl then reserves, and waits forever without a message when they are missing:

- trainer.n_gpus_per_node × trainer.nnodes accelerators (`RAY_RESOURCE[trainer.device]`; logical Ray
  GPUs on the CPU platform, which declares them with `ray_init.num_gpus`);
- CPUs: CPUS_PER_DEVICE per accelerator bundle (verl's `ResourcePoolManager`), one for TransferQueue's
  controller and one per SimpleStorage unit, plus one free to place each further actor (agent-loop and
  reward workers reserve a CPU only while being placed).

And the Ray it starts needs Unix socket paths under its temp dir (`ray_init._temp_dir`, else RAY_TMPDIR,
TMPDIR or /tmp, plus /ray) within the kernel's 107 bytes; a long cluster $TMPDIR fails Ray's start-up with
a traceback.

Ray's own detection (`ray._private`) is used, so the count honours CUDA_VISIBLE_DEVICES and cgroup CPU
limits exactly as the Ray it predicts; these private touch points live here only (tests/test_local_ray.py
fails when they move).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lambda_grpo.config_values import ConfigError, read

RAY_RESOURCE = {"cuda": "GPU", "npu": "NPU", "cpu": "GPU"}
"""The Ray resource verl's worker groups reserve one of per trainer process, by trainer.device."""

CPUS_PER_DEVICE = 3
"""CPUs in each of verl 0.9.1's placement-group bundles (`ResourcePoolManager.max_colocate_count`)."""

TRANSFER_QUEUE_CONTROLLER_CPUS = 1
"""CPUs TransferQueue's controller actor reserves (`@ray.remote(num_cpus=1)`); each storage unit as many."""


def cluster_address(ray_init: Mapping[str, Any]) -> str | None:
    """The Ray cluster `ray.init(**ray_init)` would join, or None when it would start one on this machine."""
    from ray._private import services

    address = ray_init.get("address")
    if address == "local":
        return None
    try:
        return services.get_ray_address_from_environment(address, ray_init.get("_temp_dir"))
    except ConnectionError:
        raise ConfigError(
            f"ray_kwargs.ray_init.address: {address} finds no running Ray instance on this machine; start one "
            "(launch/start_head), set RAY_ADDRESS, or drop the key to start a local Ray"
        ) from None


def local_device_count(resource: str) -> int:
    """How many `resource` accelerators (GPU, NPU) a Ray started here would detect; 0 for unknown kinds."""
    from ray._private import accelerators

    manager = accelerators.get_accelerator_manager_for_resource(resource)
    if manager is None:
        return 0
    count = manager.get_current_node_num_accelerators()
    visible = manager.get_current_process_visible_accelerator_ids()
    return min(count, len(visible)) if visible is not None else count


def local_cpu_count() -> int:
    """The CPUs a Ray started here would detect (cgroup limits included)."""
    from ray._private.utils import get_num_cpus

    return int(get_num_cpus())


def check_local_ray(cfg: DictConfig) -> None:
    """Raise ConfigError when this run starts its own Ray and this machine cannot serve what verl reserves."""
    ray_init = OmegaConf.to_container(cfg.ray_kwargs.ray_init, resolve=True) or {}
    if cluster_address(ray_init) is not None:
        return
    devices = read(cfg, "trainer.n_gpus_per_node") * read(cfg, "trainer.nnodes")
    _check_devices(str(cfg.trainer.device), devices, ray_init.get("num_gpus"))
    _check_cpus(cfg, devices, ray_init.get("num_cpus"))
    _check_socket_paths(ray_init.get("_temp_dir"))


def _check_devices(device: str, needed: int, ray_gpus: int | None) -> None:
    resource = RAY_RESOURCE.get(device)
    if resource is None:
        return  # another verl platform: nothing known to count
    request = f"trainer.n_gpus_per_node × trainer.nnodes = {needed}"
    detected = local_device_count(resource)
    if device != "cpu" and detected < needed:
        raise ConfigError(
            f"trainer.device: {device} needs {request} {resource}s, and this machine has {detected}; without "
            "RAY_ADDRESS this run starts its own Ray here, which would wait for them forever. Lower "
            "trainer.n_gpus_per_node, train on CPU with model_size=tiny_cpu, or submit to a GPU cluster "
            "(launch/submit, or RAY_ADDRESS=<head>:6379)"
        )
    offered = ray_gpus if resource == "GPU" and ray_gpus is not None else detected
    if offered < needed:
        logical = " (logical GPUs on the CPU platform, one per trainer process)" if device == "cpu" else ""
        raise ConfigError(
            f"ray_kwargs.ray_init.num_gpus: this run's local Ray would offer {offered} GPUs, but verl reserves "
            f"{request}{logical}; set ray_kwargs.ray_init.num_gpus={needed} or lower trainer.n_gpus_per_node"
        )


def _check_cpus(cfg: DictConfig, devices: int, ray_cpus: int | None) -> None:
    queue = cfg.transfer_queue.backend
    units = int(queue.SimpleStorage.num_data_storage_units) if queue.storage_backend == "SimpleStorage" else 0
    needed = CPUS_PER_DEVICE * devices + TRANSFER_QUEUE_CONTROLLER_CPUS * (1 + units) + 1
    present = ray_cpus if ray_cpus is not None else local_cpu_count()
    if present < needed:
        raise ConfigError(
            f"ray_kwargs.ray_init.num_cpus: this run's local Ray would have {present} CPUs, and verl reserves at "
            f"least {needed} ({CPUS_PER_DEVICE} per device × {devices}, TransferQueue's controller and "
            f"{units} storage units, 1 to place each worker), so it would wait forever; set "
            f"ray_kwargs.ray_init.num_cpus={needed} (logical CPUs, mostly idle) or lower "
            "transfer_queue.backend.SimpleStorage.num_data_storage_units"
        )


def _check_socket_paths(temp_dir: str | None) -> None:
    """The longest socket path of a Ray session started now under `temp_dir` passes Ray's own length check."""
    from ray._common.utils import get_default_ray_temp_dir
    from ray._private.utils import validate_socket_filepath

    root = temp_dir or get_default_ray_temp_dir()
    session = datetime.datetime.today().strftime("session_%Y-%m-%d_%H-%M-%S_%f") + f"_{os.getpid()}"
    path = os.path.join(root, session, "sockets", "plasma_store")
    try:
        validate_socket_filepath(path)
    except OSError:
        raise ConfigError(
            f"ray_kwargs.ray_init._temp_dir: Ray's temp dir {root} (from _temp_dir, RAY_TMPDIR or TMPDIR) is too "
            f"long for its socket paths (e.g. {path}, {len(path.encode())} bytes; Unix allows 107); set "
            "+ray_kwargs.ray_init._temp_dir=/tmp/ray or a shorter RAY_TMPDIR"
        ) from None
