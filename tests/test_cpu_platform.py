"""Tests of lambda_grpo.cpu_platform: registration, selection only when asked, env, and each workaround.

In-process tests restore every piece of global state they touch (verl's platform singleton,
sys.meta_path, verl's process-group function). One subprocess test checks the whole set as a Ray
worker of a CPU run sees it: a fresh interpreter with cpu_runtime_env() that imports verl.
"""

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import textwrap
import types

import pytest
import torch
from verl.plugin.platform import PlatformRegistry, platform_manager

from lambda_grpo import cpu_platform
from lambda_grpo.cpu_platform import (
    CPU_DEVICE_MODULE,
    PLATFORM_NAME,
    PlatformCPU,
    activate_cpu_platform,
    cpu_runtime_env,
    install_cpu_process_hooks,
)


@pytest.fixture
def restore_process_state(monkeypatch):
    """Undo what install_cpu_process_hooks/activate_cpu_platform change in this process."""
    import verl.utils.distributed as distributed

    meta_path = list(sys.meta_path)
    original_init = distributed.initialize_global_process_group_ray
    environ = dict(os.environ)
    monkeypatch.setattr(platform_manager, "_current_platform", None)
    gemm = sys.modules.get(cpu_platform.VLLM_GEMM_DISPATCH_MODULE)  # if another test loaded vLLM here
    if gemm is not None:
        monkeypatch.setattr(gemm.ops, "_supports_onednn", gemm.ops._supports_onednn)
        monkeypatch.setattr(gemm, "check_cpu_sgl_kernel", gemm.check_cpu_sgl_kernel)
    yield
    sys.meta_path[:] = meta_path
    distributed.initialize_global_process_group_ray = original_init
    os.environ.clear()
    os.environ.update(environ)


def test_import_registers_the_platform_without_selecting_it():
    assert PlatformRegistry.get(PLATFORM_NAME) is PlatformCPU
    cpu_platform.register_cpu_platform()  # idempotent
    assert PlatformRegistry.get(PLATFORM_NAME) is PlatformCPU
    # This test process has no VERL_PLATFORM: nothing was installed on import.
    assert "VERL_PLATFORM" not in os.environ
    assert not any(isinstance(f, cpu_platform._VllmCpuDistributionAlias) for f in sys.meta_path)
    import verl.utils.distributed as distributed

    assert not getattr(distributed.initialize_global_process_group_ray, "__lambda_grpo_gloo__", False)


def test_selected_only_when_verl_platform_asks(monkeypatch):
    monkeypatch.delenv("VERL_PLATFORM", raising=False)
    assert platform_manager._detect_platform_name() != PLATFORM_NAME  # never auto-detected
    assert not PlatformCPU().is_platform_available(use_smi_check=True)
    monkeypatch.setenv("VERL_PLATFORM", "cpu")
    assert platform_manager._detect_platform_name() == PLATFORM_NAME
    assert isinstance(platform_manager._create_platform(PLATFORM_NAME), PlatformCPU)
    assert cpu_platform.cpu_platform_requested()


def test_runtime_env_is_all_strings_and_selects_the_platform():
    env = cpu_runtime_env()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())  # Ray rejects non-str
    assert env["VERL_PLATFORM"] == PLATFORM_NAME
    assert env["VERL_ENGINE_DEVICE"] == "cuda"
    assert env["VLLM_TARGET_DEVICE"] == "cpu"
    assert int(env["VLLM_CPU_KVCACHE_SPACE"]) >= 1
    # The vLLM server actor also gets the vLLM part through the platform's rollout hook.
    assert PlatformCPU().rollout_env_vars() == {k: v for k, v in env.items() if k.startswith("VLLM_")}


def test_platform_answers_run_on_cpu():
    platform = PlatformCPU()
    assert (platform.device_name, platform.communication_backend_name()) == ("cpu", "gloo")
    assert platform.is_available() and not platform.is_ipc_supported()
    # verl moves modules with .to(device=get_device_id()) and torch.device(get_device_id()).
    layer = torch.nn.Linear(2, 2).to(device=platform.current_device(), non_blocking=True)
    assert layer.weight.device == torch.device(platform.current_device()) == torch.device("cpu")
    assert platform.ray_resource_options(1) == {"num_gpus": 1}
    assert platform.ray_noset_envvars() == [] and platform.cudart() is None
    platform.set_device(0), platform.synchronize(), platform.empty_cache(), platform.set_allocator_settings("x")
    with platform.nvtx_range("noop"):
        pass


def test_device_module_covers_what_verl_calls():
    module = CPU_DEVICE_MODULE
    free, total = module.mem_get_info()
    assert 0 < free <= total
    assert module.memory_allocated() == module.max_memory_reserved() == 0
    module.empty_cache(), module.ipc_collect(), module.set_per_process_memory_fraction(0.9), module.synchronize()
    state = module.get_rng_state()
    first = torch.rand(3)
    module.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
    assert module.current_device() == "cpu" and module.device_count() >= 1  # torch.cpu's own


def test_flops_counter_finds_a_cpu_entry(monkeypatch):
    from verl.utils.flops_counter import get_device_flops

    monkeypatch.setattr(platform_manager, "_current_platform", PlatformCPU())
    assert get_device_flops(unit="T") == pytest.approx(0.448)  # verl's "CPU" entry, not inf


def test_activate_exports_env_and_refuses_after_another_platform(restore_process_state, monkeypatch):
    env = activate_cpu_platform()
    assert {k: os.environ[k] for k in env} == env
    assert isinstance(platform_manager.get_platform(), PlatformCPU)
    assert any(isinstance(f, cpu_platform._VllmCpuDistributionAlias) for f in sys.meta_path)

    activate_cpu_platform()  # again, with the CPU platform already resolved: fine
    monkeypatch.setattr(platform_manager, "_current_platform", types.SimpleNamespace(device_name="cuda"))
    with pytest.raises(RuntimeError, match="already uses verl platform"):
        activate_cpu_platform()


def test_vllm_cpu_distribution_answers_for_vllm(restore_process_state, tmp_path):
    cpu_version = importlib.metadata.version("vllm-cpu")
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.version("vllm")  # why verl's check fails without the alias
    install_cpu_process_hooks()
    install_cpu_process_hooks()  # idempotent
    assert sum(isinstance(f, cpu_platform._VllmCpuDistributionAlias) for f in sys.meta_path) == 1
    assert importlib.metadata.version("vllm") == f"{cpu_version}+cpu"  # "+cpu": vLLM's own CPU-build test
    assert importlib.metadata.distribution("vllm").metadata["Name"] == "vllm"
    assert importlib.metadata.distribution("vllm").read_text("RECORD") == importlib.metadata.distribution(
        "vllm-cpu"
    ).read_text("RECORD")
    # Listings without a name never see a duplicate.
    assert "vllm" not in {d.metadata["Name"] for d in importlib.metadata.distributions()}

    # A real `vllm` distribution (a GPU install) wins: the alias steps aside.
    dist_info = tmp_path / "vllm-9.9.9.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: vllm\nVersion: 9.9.9\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert importlib.metadata.version("vllm") == "9.9.9"
    finally:
        sys.path.remove(str(tmp_path))


def test_worker_process_group_uses_plain_gloo(restore_process_state, monkeypatch):
    import verl.utils.distributed as distributed

    monkeypatch.setattr(platform_manager, "_current_platform", PlatformCPU())
    original = distributed.initialize_global_process_group_ray
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="Duplicate device type cpu"):
        original()  # verl's default: "cpu:gloo,cpu:gloo"
    install_cpu_process_hooks()
    assert distributed.initialize_global_process_group_ray is not original
    try:
        distributed.initialize_global_process_group_ray()
        assert torch.distributed.get_backend() == "gloo"
        tensor = torch.ones(2)
        torch.distributed.all_reduce(tensor)
        assert tensor.tolist() == [1.0, 1.0]
    finally:
        torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_vllm_weight_packing_is_turned_off_when_the_module_loads(restore_process_state, tmp_path, monkeypatch):
    """The post-import hook runs the callback once the (here: stand-in) vLLM module executes."""
    (tmp_path / "fake_vllm_gemm.py").write_text(
        "import types\nops = types.SimpleNamespace(_supports_onednn=True)\n"
        "def check_cpu_sgl_kernel(n, k, dtype):\n    return True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fake_vllm_gemm", raising=False)
    cpu_platform._after_import("fake_vllm_gemm", cpu_platform._keep_vllm_cpu_weights_reloadable)
    assert "fake_vllm_gemm" not in sys.modules  # nothing imported eagerly
    import fake_vllm_gemm

    assert fake_vllm_gemm.ops._supports_onednn is False
    assert fake_vllm_gemm.check_cpu_sgl_kernel(64, 64, torch.bfloat16) is False
    assert not any(isinstance(f, cpu_platform._PostImportHook) and f.fullname == "fake_vllm_gemm" for f in sys.meta_path)
    # Already imported: the callback runs at once.
    fake_vllm_gemm.ops._supports_onednn = True
    cpu_platform._after_import("fake_vllm_gemm", cpu_platform._keep_vllm_cpu_weights_reloadable)
    assert fake_vllm_gemm.ops._supports_onednn is False
    monkeypatch.delitem(sys.modules, "fake_vllm_gemm")


def test_fsdp2_offload_policy_is_built_unpinned():
    from torch.distributed.fsdp import CPUOffloadPolicy

    engine = types.SimpleNamespace(CPUOffloadPolicy=CPUOffloadPolicy)  # stands in for verl's FSDP engine module
    cpu_platform._never_pin_fsdp2_offload(engine)
    cpu_platform._never_pin_fsdp2_offload(engine)  # idempotent: no subclass of the subclass
    policy = engine.CPUOffloadPolicy(pin_memory=True)  # what verl builds for forward-only (ref) models
    assert isinstance(policy, CPUOffloadPolicy) and policy.pin_memory is False
    assert engine.CPUOffloadPolicy.__mro__[1] is CPUOffloadPolicy


def test_verls_pause_arguments_reach_vllm_032s_pause_generation():
    """The async modes abort in-flight rollouts with verl 0.9.1's `wait_for_inflight_requests=False`; vLLM 0.32
    only knows `mode`, and the wrapper translates (False → abort, True → wait) and passes the rest through."""
    import asyncio
    import inspect

    calls = []

    class AsyncLLM:  # vLLM 0.32's signature
        async def pause_generation(self, *, mode="abort", clear_cache=True):
            calls.append((mode, clear_cache))

    async_llm = types.SimpleNamespace(AsyncLLM=AsyncLLM)
    cpu_platform._accept_verls_pause_arguments(async_llm)
    wrapped = AsyncLLM.pause_generation
    cpu_platform._accept_verls_pause_arguments(async_llm)  # idempotent
    assert AsyncLLM.pause_generation is wrapped
    engine = AsyncLLM()
    asyncio.run(engine.pause_generation(wait_for_inflight_requests=False, clear_cache=False))
    asyncio.run(engine.pause_generation(wait_for_inflight_requests=True))
    asyncio.run(engine.pause_generation(mode="keep"))
    assert calls == [("abort", False), ("wait", True), ("keep", True)]
    from vllm.v1.engine.async_llm import AsyncLLM as Installed  # the installed vLLM still names it `mode`

    assert "mode" in inspect.signature(Installed.pause_generation).parameters


WORKER_CHECK = textwrap.dedent(
    """
    import json, os, sys, torch
    import verl  # loads lambda_grpo.cpu_platform through VERL_USE_EXTERNAL_MODULES, as in every Ray process
    from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
    import verl.third_party.vllm as verl_vllm  # raised "vllm version None not supported" before
    import verl.utils.distributed as distributed
    from vllm.model_executor.layers import utils as gemm
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    import verl.workers.engine.fsdp.transformer_impl as fsdp_engine

    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.randn(64, 64), requires_grad=False)
    weight = layer.weight
    UnquantizedLinearMethod().process_weights_after_loading(layer)  # vLLM's post-load packing step
    x = torch.randn(3, 64)

    # The trainer's process group, then FSDP2 with the offload policy verl gives the ref model.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1")
    distributed.initialize_global_process_group_ray()
    ref = torch.nn.Linear(8, 8)
    fully_shard(ref, mesh=init_device_mesh("cpu", (1,)), offload_policy=fsdp_engine.CPUOffloadPolicy(pin_memory=True))
    ref_ok = ref(torch.randn(2, 8)).shape == (2, 8)
    backend = torch.distributed.get_backend()
    torch.distributed.destroy_process_group()
    print(json.dumps({
        "process_group": backend, "fsdp2_ref_offload_ok": ref_ok,
        "device": get_device_name(), "backend": get_nccl_backend(),
        "torch_device_module_name": get_torch_device().get_device_name(),
        "engine_is_fsdp": EngineRegistry.get_engine_cls("language_model", "fsdp2") is FSDPEngineWithLMHead,
        "verl_vllm_version": verl_vllm.vllm_version,
        "gloo_wrapper": getattr(distributed.initialize_global_process_group_ray, "__lambda_grpo_gloo__", False),
        "weight_kept": layer.weight is weight and layer.weight.numel() == 64 * 64,
        "linear_matches": torch.allclose(layer.cpu_linear(x, layer.weight, None), x @ weight.T, atol=1e-5),
    }))
    """
)


def test_a_cpu_run_worker_process_gets_every_workaround():
    """Fresh interpreter with the CPU env, importing verl the way Ray workers do (~25 s: verl, vLLM)."""
    env = {**os.environ, **cpu_runtime_env(), "VERL_USE_EXTERNAL_MODULES": "lambda_grpo.cpu_platform"}
    result = subprocess.run(
        [sys.executable, "-c", WORKER_CHECK, str(_free_port())], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts == {
        "process_group": "gloo",
        "fsdp2_ref_offload_ok": True,
        "device": "cpu",
        "backend": "gloo",
        "torch_device_module_name": "CPU",
        "engine_is_fsdp": True,
        "verl_vllm_version": importlib.metadata.version("vllm-cpu") + "+cpu",
        "gloo_wrapper": True,
        "weight_kept": True,
        "linear_matches": True,
    }


def test_platform_and_tiny_groups_compose_on_verl_main_ppo_and_validate(tmp_path, monkeypatch):
    """`+platform=cpu +model_size=tiny_cpu` over verl's own ppo_trainer: verl's validate_config accepts it."""
    from hydra import compose, initialize_config_dir
    from verl.trainer import config as verl_config
    from verl.utils.config import validate_config

    import lambda_grpo.tiny_assets  # noqa: F401  (registers ${lambda_grpo.tiny:...}, as our plugin does)

    monkeypatch.setenv("LAMBDA_GRPO_CACHE", str(tmp_path))
    overrides = ["hydra.searchpath=[pkg://lambda_grpo.configs]", "+platform=cpu", "+model_size=tiny_cpu"]
    with initialize_config_dir(os.path.dirname(verl_config.__file__), version_base=None):
        cfg = compose("ppo_trainer", overrides=[*overrides, "algorithm.adv_estimator=grpo"])
    validate_config(cfg, use_reference_policy=False, use_critic=False)
    rollout = cfg.actor_rollout_ref.rollout
    assert (cfg.trainer.device, cfg.ray_kwargs.ray_init.num_gpus, cfg.actor_rollout_ref.actor.strategy) == (
        "cpu",
        1,
        "fsdp2",
    )
    assert (rollout.name, rollout.enable_sleep_mode, rollout.free_cache_engine) == ("vllm", False, False)
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert cfg.actor_rollout_ref.model.path.startswith(str(tmp_path))  # resolved by lambda_grpo.tiny
