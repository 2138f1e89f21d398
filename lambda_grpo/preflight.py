"""Preflight: check a lambda_grpo run against its Ray cluster, without training.

    python -m lambda_grpo.preflight <hydra overrides>     # the overrides `python -m lambda_grpo.main` takes
    launch/submit --preflight <hydra overrides>           # the same, as a Ray job on the cluster

What it checks, each finding reported as OK, WARN or FAIL:

1. config — composes and validates exactly what `python -m lambda_grpo.main` composes
   (`lambda_grpo.config.compose` / `validate`, called from `compose_and_validate` only);
2. cluster — at least `trainer.nnodes` alive Ray nodes with `trainer.n_gpus_per_node` Ray GPUs each (with
   `trainer.device=cpu` logical ones: verl's worker groups always ask Ray for "GPU", so each node of a CPU cluster
   declares them, `launch/start_head --num-gpus 1`); it waits up to `--node-wait-s` for workers to join;
3. every alive node, from a Ray worker process pinned to it (the kind of process training runs in,
   with the job's runtime environment):
   - the data files, the model (local directory with config.json, or a hub id in the local cache)
     and a file-path reward function exist there; relative paths resolve against the worker's
     working directory, which under `ray job submit` is the uploaded repository copy (no data/);
   - the checkpoint directory (`trainer.default_local_dir`) can be created there; under a job with
     an uploaded working directory it must be absolute, or checkpoints vanish with the job and
     `trainer.resume_mode=auto` finds nothing to resume from;
   - its file system has room for the checkpoints the run keeps at once (`df` at the directory,
     against `lambda_grpo.checkpoint_size`: the model's parameter count from its safetensors headers,
     fp32 parameters and two Adam moments per checkpoint, times `trainer.max_actor_ckpt_to_keep`);
   - each GPU has the memory the model size needs (`GPU_MEMORY_GB`, the one place it is stated);
   - the NVIDIA driver (from `nvidia-smi`) is new enough for the CUDA that this node's torch was built
     with (`MIN_DRIVER_FOR_CUDA`: torch 2.11.0+cu130 needs >= 580), and torch is a CUDA build at all;
   - the loss is registered: `verl.trainer.ppo.core_algos.get_policy_loss_fn(name)` resolves for
     the configured surrogate `actor_rollout_ref.actor.policy_loss.loss_mode` (λ-GRPO weights it;
     it registers no loss of its own), loaded the way training's workers load it (verl's plugin
     import on `import verl`, nothing imported by hand), and lambda_grpo's `verl.plugins` entry point
     loaded there (from which copy of the code: under `ray job submit`, the uploaded one);
   - the job's runtime-environment variables arrived with the values the job asked for.

Exit status: 0 when nothing FAILed, 1 otherwise, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from lambda_grpo.checkpoint_size import CheckpointPlan, count_parameters, extra_file_bytes
from lambda_grpo.config import ray_job_runtime_env
from lambda_grpo.local_ray_token import secure_local_token


@dataclass(frozen=True)
class GpuMemory:
    """Memory each GPU needs for one model size, in decimal GB as printed on the card (an "80 GB"
    H100 reports 85.0e9 bytes, a "40 GB" A100 42.5e9).

    tuned_for: what the shipped configs/model_size/<size>.yaml assumes (8 GPUs per node, actor,
        reference and vLLM rollout colocated on every GPU); below it preflight warns.
    minimum: the smallest card the adjustments in that file's header (offload, smaller token
        budgets, lower gpu_memory_utilization) are meant for; below it preflight fails.
    """

    minimum: float
    tuned_for: float


# The one place the per-size GPU requirement is stated. [I] from each size file's header and
# verl's Qwen2-7B GRPO example (8 x 80 GB); tiny_cpu runs on CPU and needs no GPU.
GPU_MEMORY_GB = {
    "tiny_cpu": GpuMemory(minimum=0.0, tuned_for=0.0),
    "tiny_gpu": GpuMemory(minimum=16.0, tuned_for=16.0),
    "qwen2_5_1_5b": GpuMemory(minimum=40.0, tuned_for=80.0),
    "qwen2_5_3b": GpuMemory(minimum=40.0, tuned_for=80.0),
    "qwen2_5_7b": GpuMemory(minimum=40.0, tuned_for=80.0),
}

# Below this, /dev/shm is too small for NCCL and vLLM on a GPU node (Docker's default is 64 MB;
# verl's docs run containers with --shm-size=10g).
MIN_SHM_GB = 8.0

# The oldest NVIDIA driver (major version) that runs each CUDA major release, from NVIDIA's CUDA
# Compatibility guide, "Minor Version Compatibility", Table 1 (CUDA 13.x >= 580, 12.x >= 525, 11.x >= 450).
# torch 2.11.0 from PyPI and in verl's image is the CUDA 13.0 build: driver >= 580.
MIN_DRIVER_FOR_CUDA = {11: 450, 12: 525, 13: 580}

# A Hugging Face hub id: "org/name", no leading "/", "." or "~".
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Finding:
    """One line of the report: level is OK, WARN or FAIL; where is config, cluster or a node."""

    level: str
    where: str
    message: str


@dataclass(frozen=True)
class RunRequirements:
    """What the run needs from the cluster, read from the composed config.

    data_files: config key -> the files it names (each node must see each file).
    model_path: `actor_rollout_ref.model.path` (a local directory or a hub id).
    extra_paths: config key -> path for optional inputs (tokenizer, reward function file).
    gpus_per_node: the Ray GPUs each node must offer (logical ones with `trainer.device=cpu`).
    gpu_memory: what each physical GPU must hold; None with `trainer.device=cpu` (no GPU to check).
    loss_names: policy losses that must resolve in every worker.
    checkpoints: what the config says about checkpoints (None: no disk check).
    """

    data_files: dict[str, list[str]]
    model_path: str
    checkpoint_dir: str
    nnodes: int
    gpus_per_node: int
    gpu_memory: GpuMemory | None
    loss_names: tuple[str, ...]
    extra_paths: dict[str, str] = field(default_factory=dict)
    checkpoints: CheckpointPlan | None = None


def compose_and_validate(overrides: Sequence[str]):
    """The config `python -m lambda_grpo.main <overrides>` would run with, and the Hydra group choices;
    raises ConfigError on a bad one.

    Paths are left to the per-node checks, which look on every node rather than on this one.
    """
    from lambda_grpo.config import compose_with_choices, validate

    cfg, choices = compose_with_choices(list(overrides))
    validate(cfg, check_paths=False, choices=choices)
    return cfg, choices


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def requirements_from_config(cfg, model_size: str | None) -> RunRequirements:
    """Derive what every node must provide from a composed config and the chosen model size."""
    trainer = cfg.trainer
    on_gpu = str(trainer.device) != "cpu"
    if on_gpu and model_size not in GPU_MEMORY_GB:
        known = ", ".join(sorted(GPU_MEMORY_GB))
        raise ValueError(f"model_size={model_size!r} has no GPU memory requirement in GPU_MEMORY_GB ({known})")
    model = cfg.actor_rollout_ref.model
    reward_fn_path = cfg.get("reward", {}).get("custom_reward_function", {}).get("path")
    extra = {"actor_rollout_ref.model.tokenizer_path": model.get("tokenizer_path"),
             "reward.custom_reward_function.path": reward_fn_path}
    loss_mode = str(cfg.actor_rollout_ref.actor.policy_loss.loss_mode)
    return RunRequirements(
        data_files={"data.train_files": _as_list(cfg.data.train_files),
                    "data.val_files": _as_list(cfg.data.get("val_files"))},
        model_path=str(model.path),
        checkpoint_dir=str(trainer.default_local_dir),
        nnodes=int(trainer.nnodes),
        gpus_per_node=int(trainer.n_gpus_per_node),
        gpu_memory=GPU_MEMORY_GB[model_size] if on_gpu else None,
        loss_names=(loss_mode,),
        extra_paths={k: str(v) for k, v in extra.items() if v},
        checkpoints=checkpoint_plan_from_config(cfg),
    )


def checkpoint_plan_from_config(cfg) -> CheckpointPlan:
    """The keys of verl's config that decide how much the run's checkpoints take (checkpoint_size)."""
    trainer, actor = cfg.trainer, cfg.actor_rollout_ref.actor
    steps = trainer.get("total_training_steps")
    keep = trainer.get("max_actor_ckpt_to_keep")
    return CheckpointPlan(save_freq=int(trainer.save_freq), total_training_steps=None if steps is None else int(steps),
                          total_epochs=int(trainer.total_epochs), train_batch_size=int(cfg.data.train_batch_size),
                          max_to_keep=None if keep is None else int(keep),
                          model_dtype=str(actor.fsdp_config.get("model_dtype", "fp32")),
                          save_contents=tuple(str(c) for c in actor.checkpoint.save_contents))


# ----------------------------------------------------------------------------------------------
# Inside a Ray worker on each node: gather facts, judge nothing.


def _path_fact(path: str) -> dict[str, Any]:
    """Where a configured path points from this process, and whether it exists."""
    if path.startswith("pkg://"):
        module = path[len("pkg://"):]
        return {"path": path, "kind": "module", "exists": importlib.util.find_spec(module) is not None}
    if "://" in path:
        return {"path": path, "kind": "remote", "exists": None}
    resolved = os.path.abspath(os.path.expanduser(path))
    return {"path": path, "resolved": resolved, "kind": "local", "exists": os.path.exists(resolved),
            "is_dir": os.path.isdir(resolved),
            "has_config_json": os.path.isfile(os.path.join(resolved, "config.json"))}


def _hub_cache_fact(repo_id: str) -> dict[str, Any]:
    """Whether a hub id's config.json is in this node's Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return {"cached": False, "offline": True}
    cached = try_to_load_from_cache(repo_id, "config.json")
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    return {"cached": isinstance(cached, str), "offline": offline,
            "dir": os.path.dirname(cached) if isinstance(cached, str) else None}


def parse_df_available(output: str) -> int:
    """Bytes available to this user, from `df -P -k PATH` (POSIX format: a header, then one line
    `Filesystem 1024-blocks Used Available Capacity Mounted-on`; the file system's name may hold
    spaces, so Available is read as the field before the `NN%` Capacity field)."""
    fields = output.strip().splitlines()[-1].split()
    capacity = next(i for i in range(len(fields) - 1, 0, -1) if fields[i].endswith("%"))
    return int(fields[capacity - 1]) * 1024


def _free_bytes(path: str) -> int | None:
    """Bytes available at `path`, as `df` reports them there (what the user sees checking by hand)."""
    try:
        out = subprocess.run(["df", "-P", "-k", path], capture_output=True, text=True, timeout=60, check=True).stdout
        return parse_df_available(out)
    except (OSError, subprocess.SubprocessError, ValueError, StopIteration):
        return None


def _writable_ancestor(path: str) -> dict[str, Any]:
    """The nearest existing ancestor of a directory to create, and whether this process may write it."""
    resolved = os.path.abspath(os.path.expanduser(path))
    ancestor = resolved
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    return {"path": path, "resolved": resolved, "ancestor": ancestor,
            "writable": os.access(ancestor, os.W_OK | os.X_OK), "free_bytes": _free_bytes(ancestor)}


def parse_nvidia_smi(output: str) -> list[dict[str, Any]]:
    """Each GPU of `nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits`
    (one line per GPU: "NVIDIA H200, 143771, 580.65.06"; memory in MiB; the name may hold commas)."""
    gpus = []
    for line in output.strip().splitlines():
        name, mib, driver = (part.strip() for part in line.rsplit(",", 2))
        gpus.append({"name": name, "memory_bytes": int(mib) * 2**20, "driver_version": driver})
    return gpus


def _gpu_facts() -> list[dict[str, Any]] | None:
    """Name, total memory (bytes) and driver version of each GPU of this node, from nvidia-smi; None
    without it.

    nvidia-smi, not torch: Ray hides the node's GPUs (CUDA_VISIBLE_DEVICES="") from a task that
    asked for none.
    """
    if shutil.which("nvidia-smi") is None:
        return None
    out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=60, check=True).stdout
    return parse_nvidia_smi(out)


def _torch_fact() -> dict[str, Any]:
    """The torch this node's workers import: its version and the CUDA it was built for (None: CPU build)."""
    import torch

    return {"version": torch.__version__, "cuda": torch.version.cuda}


def _model_size_fact(model: dict[str, Any]) -> dict[str, Any] | None:
    """Parameter count and config/tokenizer bytes of the model folder on this node; None where there is
    no folder to read (a hub id not in the cache)."""
    folder = model.get("resolved") if model.get("is_dir") else (model.get("hub") or {}).get("dir")
    if not folder:
        return None
    try:
        return {"parameters": count_parameters(folder), "extra_bytes": extra_file_bytes(folder)}
    except (OSError, ValueError, KeyError) as error:
        return {"parameters": None, "error": f"{type(error).__name__}: {error}"}


def _train_rows(paths: Sequence[str]) -> int | None:
    """Rows of the training parquet files (their footers only), or None if one cannot be read."""
    import pyarrow.parquet as pq

    try:
        return sum(pq.read_metadata(os.path.expanduser(path)).num_rows for path in paths)
    except (OSError, ValueError):
        return None


def _loss_fact(name: str) -> dict[str, Any]:
    """Resolve a policy loss in verl's registry as the actor does (`import verl` loads the plugins)."""
    try:
        from verl.trainer.ppo.core_algos import get_policy_loss_fn

        fn = get_policy_loss_fn(name)
    except Exception as error:  # noqa: BLE001 — any failure here is the finding to report
        return {"name": name, "ok": False, "error": f"{type(error).__name__}: {error}"}
    module = sys.modules.get(fn.__module__)
    return {"name": name, "ok": True, "function": f"{fn.__module__}.{fn.__qualname__}",
            "file": getattr(module, "__file__", None)}


def _plugin_fact() -> dict[str, Any]:
    """Whether `import verl` loaded lambda_grpo's entry point in this process, and from which file."""
    import verl  # noqa: F401  (loads the verl.plugins entry points)

    plugin = sys.modules.get("lambda_grpo.plugin")
    return {"loaded": plugin is not None, "file": getattr(plugin, "__file__", None)}


def node_facts(req: RunRequirements, env_keys: Sequence[str]) -> dict[str, Any]:
    """Everything the checks need to know about the node this runs on (run as a Ray task)."""
    model = _path_fact(req.model_path)
    if model["kind"] == "local" and not model["exists"] and _HUB_ID.match(req.model_path):
        model["hub"] = _hub_cache_fact(req.model_path)
    shm = shutil.disk_usage("/dev/shm").total if os.path.isdir("/dev/shm") else 0
    return {
        "hostname": socket.gethostname(),
        "cwd": os.getcwd(),
        "data_files": {key: [_path_fact(p) for p in paths] for key, paths in req.data_files.items()},
        "model": model,
        "extra_paths": {key: _path_fact(p) for key, p in req.extra_paths.items()},
        "checkpoint_dir": _writable_ancestor(req.checkpoint_dir),
        "model_size": _model_size_fact(model),
        "train_rows": _train_rows(req.data_files.get("data.train_files", [])),
        "gpus": _gpu_facts(),
        "torch": _torch_fact(),
        "shm_bytes": shm,
        "losses": [_loss_fact(name) for name in req.loss_names],
        "plugin": _plugin_fact(),
        "env": {key: os.environ.get(key) for key in env_keys},
    }


# ----------------------------------------------------------------------------------------------
# On the driver: judge the facts.


def _relative_hint(fact: dict[str, Any]) -> str:
    if fact.get("kind") == "local" and not os.path.isabs(os.path.expanduser(fact["path"])):
        return " (a relative path resolves against the worker's working directory; use an absolute path)"
    return ""


def _check_path(where: str, key: str, fact: dict[str, Any], want_dir: bool = False) -> Finding:
    shown = fact.get("resolved", fact["path"])
    if fact["kind"] == "remote":
        return Finding("WARN", where, f"{key}: {fact['path']} is remote; not checked")
    if not fact["exists"]:
        return Finding("FAIL", where, f"{key}: {shown} not found{_relative_hint(fact)}")
    if want_dir and not fact.get("is_dir"):
        return Finding("FAIL", where, f"{key}: {shown} is not a directory")
    return Finding("OK", where, f"{key}: {shown}")


def _check_model(where: str, fact: dict[str, Any]) -> Finding:
    key = "actor_rollout_ref.model.path"
    hub = fact.get("hub")
    if hub is None:
        if fact["kind"] == "local" and fact["exists"] and not fact["has_config_json"]:
            return Finding("FAIL", where, f"{key}: {fact['resolved']} has no config.json")
        return _check_path(where, key, fact, want_dir=True)
    if hub["cached"]:
        return Finding("OK", where, f"{key}: hub id {fact['path']}, in this node's Hugging Face cache")
    if hub["offline"]:
        return Finding("FAIL", where, f"{key}: {fact['path']} is neither a local directory nor cached, "
                                      "and HF_HUB_OFFLINE is set")
    return Finding("WARN", where, f"{key}: {fact['path']} is not a local directory; every node will "
                                  "download it from the Hugging Face hub")


def _check_gpus(where: str, gpus: list[dict[str, Any]] | None, req: RunRequirements, shm_bytes: int
                ) -> list[Finding]:
    if req.gpu_memory is None:
        return []
    if gpus is None:
        return [Finding("FAIL", where, "nvidia-smi not found: cannot see this node's GPUs")]
    need = req.gpu_memory
    findings = []
    for index, gpu in enumerate(gpus):
        gb = gpu["memory_bytes"] / 1e9
        message = f"GPU {index} {gpu['name']}: {gb:.1f} GB"
        if gb < need.minimum:
            findings.append(Finding("FAIL", where, f"{message}, needs >= {need.minimum:.0f} GB for this model size"))
        elif gb < need.tuned_for:
            findings.append(Finding("WARN", where, f"{message}; the model_size config is tuned for "
                                                   f"{need.tuned_for:.0f} GB: apply the smaller-GPU settings "
                                                   "from its header"))
        else:
            findings.append(Finding("OK", where, message))
    if shm_bytes / 1e9 < MIN_SHM_GB:
        findings.append(Finding("WARN", where, f"/dev/shm is {shm_bytes / 1e9:.1f} GB (< {MIN_SHM_GB:.0f} GB); "
                                               "NCCL/vLLM may fail (docker run --shm-size=16g)"))
    return findings


def _check_driver(where: str, gpus: list[dict[str, Any]], torch_fact: dict[str, Any]) -> list[Finding]:
    """This node's NVIDIA driver against the CUDA its torch was built for (MIN_DRIVER_FOR_CUDA)."""
    built = f"torch {torch_fact['version']}"
    if torch_fact["cuda"] is None:
        return [Finding("FAIL", where, f"{built} is a CPU build: install the GPU stack (make install-gpu) or "
                                       "run the Docker image on this node")]
    cuda_major = int(str(torch_fact["cuda"]).split(".")[0])
    need = MIN_DRIVER_FOR_CUDA.get(cuda_major)
    findings = []
    for driver in sorted({gpu["driver_version"] for gpu in gpus}):
        runs = f"NVIDIA driver {driver}, {built} (CUDA {torch_fact['cuda']})"
        try:
            major = int(driver.split(".")[0])
        except ValueError:
            findings.append(Finding("WARN", where, f"{runs}: cannot read the driver's version"))
            continue
        if need is None:
            findings.append(Finding("WARN", where, f"{runs}: no known minimum driver for CUDA {cuda_major}.x"))
        elif major < need:
            findings.append(Finding("FAIL", where, f"{runs}: CUDA {cuda_major}.x needs driver >= {need}; upgrade "
                                                   f"this node's NVIDIA driver to {need} or newer"))
        else:
            findings.append(Finding("OK", where, f"{runs}: CUDA {cuda_major}.x needs driver >= {need}"))
    return findings


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.3g} GB"


def _check_checkpoint_space(where: str, facts: dict[str, Any], plan: CheckpointPlan) -> Finding:
    """Free space at the checkpoint directory against what the run's checkpoints take at once."""
    key, place = "trainer.default_local_dir", facts["checkpoint_dir"]
    free, size = place.get("free_bytes"), facts.get("model_size") or {}
    if free is None:
        return Finding("WARN", where, f"{key}: could not read the free space at {place['ancestor']} (df failed)")
    if size.get("parameters") is None:
        why = size.get("error") or "no *.safetensors files in the model folder on this node"
        return Finding("WARN", where, f"{key}: {_size(free)} free; checkpoint size unknown ({why})")
    need = plan.required_bytes(size["parameters"], size["extra_bytes"], facts.get("train_rows"))
    if need is None:
        return Finding("WARN", where, f"{key}: {_size(free)} free; every checkpoint is kept "
                                      "(trainer.max_actor_ckpt_to_keep=null) and the number of steps depends on "
                                      "data.train_files, which could not be read: set trainer.max_actor_ckpt_to_keep")
    kept, required = need
    message = (f"{key}: {_size(free)} free at {place['ancestor']}; the run keeps up to {kept} checkpoint(s) of "
               f"{_size(required / max(kept, 1))} ({size['parameters'] / 1e9:.3g}B parameters, {plan.model_dtype}, "
               f"{'+'.join(plan.save_contents)}; trainer.max_actor_ckpt_to_keep={plan.max_to_keep}, "
               f"trainer.save_freq={plan.save_freq}) = {_size(required)}")
    if free < required:
        return Finding("FAIL", where, f"{message}: free space there, lower trainer.max_actor_ckpt_to_keep, or point "
                                      f"{key} at a larger file system")
    return Finding("OK", where, message)


def _check_checkpoint_dir(where: str, fact: dict[str, Any], uploaded_working_dir: bool) -> Finding:
    key = "trainer.default_local_dir"
    if uploaded_working_dir and not os.path.isabs(os.path.expanduser(fact["path"])):
        return Finding("FAIL", where, f"{key}={fact['path']} is relative: it resolves inside the job's "
                                      "temporary copy of the working dir, so checkpoints vanish with the "
                                      "job and resume finds nothing; use an absolute path on shared storage")
    if not fact["writable"]:
        return Finding("FAIL", where, f"{key}: cannot create {fact['resolved']} ({fact['ancestor']} is not writable)")
    return Finding("OK", where, f"{key}: {fact['resolved']} can be created")


def check_node(where: str, facts: dict[str, Any], req: RunRequirements, expected_env: dict[str, str],
               uploaded_working_dir: bool) -> list[Finding]:
    """Judge one node's facts against the run's requirements."""
    findings = [_check_path(where, key, fact) for key, facts_ in facts["data_files"].items() for fact in facts_]
    findings.append(_check_model(where, facts["model"]))
    findings += [_check_path(where, key, fact) for key, fact in facts["extra_paths"].items()]
    findings.append(_check_checkpoint_dir(where, facts["checkpoint_dir"], uploaded_working_dir))
    if req.checkpoints is not None and facts["checkpoint_dir"]["writable"]:
        findings.append(_check_checkpoint_space(where, facts, req.checkpoints))
    findings += _check_gpus(where, facts["gpus"], req, facts["shm_bytes"])
    if req.gpu_memory is not None and facts["gpus"]:
        findings += _check_driver(where, facts["gpus"], facts["torch"])
    if facts["plugin"]["loaded"]:
        findings.append(Finding("OK", where, f"lambda_grpo plugin loaded: {facts['plugin']['file']}"))
    else:
        findings.append(Finding("FAIL", where, "lambda_grpo's verl.plugins entry point did not load on `import verl` "
                                               "in a Ray worker (pip install lambda_grpo on every node)"))
    for loss in facts["losses"]:
        if loss["ok"]:
            findings.append(Finding("OK", where, f"loss {loss['name']!r} registered: {loss['function']} ({loss['file']})"))
        else:
            findings.append(Finding("FAIL", where, f"loss {loss['name']!r} not registered in a Ray worker: {loss['error']}"))
    wrong_env = {k: v for k, v in facts["env"].items() if v != expected_env.get(k)}
    if wrong_env:
        findings.append(Finding("FAIL", where, f"runtime env did not arrive: {wrong_env} (expected {expected_env})"))
    return findings


def check_cluster(nodes: Sequence[dict[str, Any]], req: RunRequirements) -> Finding:
    """Enough alive nodes with enough GPUs (Ray's view, which is what verl schedules on)?"""
    alive = [n for n in nodes if n["Alive"]]
    fitting = [n for n in alive if n["Resources"].get("GPU", 0) >= req.gpus_per_node]
    listing = ", ".join(f"{n['NodeManagerAddress']} ({n['Resources'].get('GPU', 0):g} GPUs)" for n in alive)
    need = f"trainer.nnodes={req.nnodes} nodes with trainer.n_gpus_per_node={req.gpus_per_node} GPUs each"
    level = "OK" if len(fitting) >= req.nnodes else "FAIL"
    return Finding(level, "cluster", f"needs {need}; alive: {listing or 'none'}")


# ----------------------------------------------------------------------------------------------
# Orchestration.


def wait_for_nodes(req: RunRequirements, wait_s: float, poll_s: float = 2.0,
                   list_nodes: Callable[[], list[dict[str, Any]]] = ray.nodes) -> Finding:
    """Poll Ray until the cluster check passes or wait_s runs out, printing progress."""
    deadline = time.monotonic() + wait_s
    while True:
        finding = check_cluster(list_nodes(), req)
        if finding.level == "OK" or time.monotonic() >= deadline:
            return finding
        print(f"waiting for nodes ({deadline - time.monotonic():.0f} s left): {finding.message}", flush=True)
        time.sleep(poll_s)


def run_node_checks(req: RunRequirements, expected_env: dict[str, str], uploaded_working_dir: bool,
                    timeout_s: float) -> list[Finding]:
    """Run `node_facts` in a worker pinned to each alive node and judge the results."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    remote_facts = ray.remote(num_cpus=0)(node_facts)
    pending = {}
    for node in (n for n in ray.nodes() if n["Alive"]):
        strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
        ref = remote_facts.options(scheduling_strategy=strategy).remote(req, sorted(expected_env))
        pending[ref] = f"node {node['NodeManagerAddress']}"
    findings = []
    ready, not_ready = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
    for ref in ready:
        where = pending[ref]
        try:
            facts = ray.get(ref)
        except Exception as error:  # noqa: BLE001 — a node whose worker cannot run is the finding
            findings.append(Finding("FAIL", where, f"worker failed: {type(error).__name__}: {error}"))
            continue
        findings += check_node(f"{where} [{facts['hostname']}]", facts, req, expected_env, uploaded_working_dir)
    findings += [Finding("FAIL", pending[ref], f"no answer within {timeout_s:.0f} s") for ref in not_ready]
    return findings


def format_report(overrides: Sequence[str], findings: Sequence[Finding]) -> str:
    """The readable report: overrides as received, one line per finding, a verdict."""
    failed = [f for f in findings if f.level == "FAIL"]
    lines = ["lambda_grpo preflight", f"overrides (as received): {json.dumps(list(overrides))}"]
    lines += [f"  [{f.level:<4}] {f.where}: {f.message}" for f in findings]
    verdict = f"PREFLIGHT FAILED: {len(failed)} problem(s)" if failed else "PREFLIGHT PASSED"
    lines.append(verdict)
    return "\n".join(lines)


def connect_ray(cfg, address: str | None) -> None:
    """Join the given cluster (or $RAY_ADDRESS's); else start a local one as lambda_grpo.main would,
    its auth token file private (`secure_local_token`)."""
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address)
    else:
        from omegaconf import OmegaConf

        if notice := secure_local_token(None):
            print(notice, flush=True)
        ray_init = cfg.get("ray_kwargs", {}).get("ray_init") or {}
        ray.init(**OmegaConf.to_container(OmegaConf.create(ray_init), resolve=True))


def preflight(overrides: Sequence[str], node_wait_s: float, node_timeout_s: float,
              address: str | None) -> list[Finding]:
    """All checks; a config that does not compose stops before touching Ray."""
    try:
        cfg, choices = compose_and_validate(overrides)
        req = requirements_from_config(cfg, choices["model_size"])
    except Exception as error:  # noqa: BLE001 — reported as the config finding
        return [Finding("FAIL", "config", f"{type(error).__name__}: {error}")]
    findings = [Finding("OK", "config", "composed and validated")]
    runtime_env = ray_job_runtime_env()
    expected_env = {str(k): str(v) for k, v in (runtime_env.get("env_vars") or {}).items()}
    if expected_env:
        shown = ", ".join(f"{k}={v}" for k, v in sorted(expected_env.items()))
        findings.append(Finding("OK", "config", f"job runtime env vars: {shown}"))
    if not ray.is_initialized():
        connect_ray(cfg, address)
    findings.append(wait_for_nodes(req, node_wait_s))
    findings += run_node_checks(req, expected_env, bool(runtime_env.get("working_dir")), node_timeout_s)
    return findings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lambda_grpo.preflight",
        description="Check a lambda_grpo run (config, nodes, GPUs, paths, loss registration) on its Ray "
                    "cluster without training. Exit status 0 when nothing failed, 1 otherwise.",
    )
    parser.add_argument("--address", default=None,
                        help="Ray cluster to check (default: $RAY_ADDRESS, as set inside `ray job submit`; "
                             "without it, a local Ray started from the config's ray_kwargs.ray_init, as "
                             "`python -m lambda_grpo.main` does)")
    parser.add_argument("--node-wait-s", type=float, default=120.0,
                        help="how long to wait for trainer.nnodes nodes to join (default: 120)")
    parser.add_argument("--node-timeout-s", type=float, default=300.0,
                        help="how long each node's check may take, verl import included (default: 300)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, exactly as for python -m lambda_grpo.main")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    findings = preflight(args.overrides, args.node_wait_s, args.node_timeout_s, args.address)
    print(format_report(args.overrides, findings), flush=True)
    return 1 if any(f.level == "FAIL" for f in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
