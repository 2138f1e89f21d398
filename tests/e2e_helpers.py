"""Helpers for end-to-end tests that run verl's real trainer on CPU in a subprocess.

`run_logged(cmd, ...)` runs a command in its own session with a timeout, tees its output into a log
file, echoes progress lines (steps, phase markers, errors) to stdout as they come, records when each
phase marker first appeared, and on timeout or exit kills every process the run left (Ray's GCS,
raylet and workers, vLLM's engine processes) by PID. `read_metrics` parses verl's `file` logger
(one JSON object per step). `cpu_run_env` / `runtime_env_overrides` / `verl_main_ppo_command` build
a CPU run of `python -m verl.trainer.main_ppo` with our `platform=cpu` and `model_size=tiny_cpu`
config groups and the CPU platform loaded through lambda_grpo; `run_verl_main_ppo` does all of it.

Importable from tests as `import e2e_helpers` (pyproject's pytest `pythonpath` includes tests/).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import psutil

PHASE_MARKERS = {
    "ray_started": "Started a local Ray instance",
    "trainer_workers_ready": "actor and ref model engine initialized",
    "vllm_engine_started": "Initializing a V1 LLM engine",
    "init_finished": "all initialize finished, ready to fit",
    "step_1_done": "step:1 ",
    "step_2_done": "step:2 ",
    "step_3_done": "step:3 ",
}
"""Phase name → a substring of the log line that marks its end (first occurrence counts)."""

_ECHO = re.compile(
    r"step:\d+ |Training Progress|Traceback|\w+Error: |"
    + "|".join(re.escape(marker) for marker in PHASE_MARKERS.values())
)

PLUGIN_MODULES = "lambda_grpo.cpu_platform,lambda_grpo.tiny_assets"
"""Imported by verl (VERL_USE_EXTERNAL_MODULES) in every process: registers the CPU platform and the
`lambda_grpo.tiny` config resolver, loudly (entry-point errors are swallowed by verl)."""


@dataclasses.dataclass
class RunResult:
    """What a run left: exit code, wall time, log file, phase times (s since start), per-step metrics,
    and the peak summed RSS of its processes (GiB; shared pages counted once per process)."""

    returncode: int
    wall_s: float
    log_path: Path
    phases: dict[str, float]
    metrics: list[dict]
    peak_rss_gib: float

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def kill_process_tree(root_pid: int, known: Iterable[psutil.Process] = ()) -> int:
    """SIGKILL `root_pid`, its descendants and `known` processes; return how many were alive."""
    procs = {p.pid: p for p in known if p.is_running()}
    try:
        root = psutil.Process(root_pid)
        procs[root.pid] = root
        procs.update({child.pid: child for child in root.children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    for proc in procs.values():
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(procs.values()), timeout=15)
    return len(procs)


def run_logged(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    timeout_s: float,
    metrics_path: Path | None = None,
) -> RunResult:
    """Run `cmd`; tee output to `log_path`; echo progress; kill what is left at the end or on timeout.

    Descendants are tracked while the run is alive (Ray re-parents its workers away from the driver,
    so they are collected from the process tree as they appear) and killed when it ends, whatever
    the outcome. On timeout the return code is -9 and the log says so.
    """
    start = time.monotonic()
    phases: dict[str, float] = {}
    seen: dict[int, psutil.Process] = {}
    lines: queue.Queue[str | None] = queue.Queue()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        print(f"[e2e] started pid {proc.pid}, log: {log_path}", flush=True)
        reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
        reader.start()
        timed_out = False
        last_output = last_sample = time.monotonic()
        peak_rss = 0
        try:
            while True:
                try:
                    line = lines.get(timeout=0.5)
                except queue.Empty:
                    line = ""
                if line is None:  # output closed: the driver and everything it started exited
                    break
                if not line and proc.poll() is not None and time.monotonic() - last_output > 5:
                    break  # the driver exited; what it left may hold the pipe open (killed below)
                if line:
                    last_output = time.monotonic()
                    _record(line.rstrip("\n"), time.monotonic() - start, log, phases)
                _collect_descendants(proc.pid, seen)
                if time.monotonic() - last_sample > 2:
                    last_sample = time.monotonic()
                    peak_rss = max(peak_rss, _total_rss([proc.pid, *seen]))
                if time.monotonic() - start > timeout_s:
                    timed_out = True
                    log.write(f"\n[e2e] TIMEOUT after {timeout_s:.0f} s: killing the run\n")
                    break
        finally:
            killed = kill_process_tree(proc.pid, seen.values())
            proc.wait()
            log.write(f"[e2e] cleaned up {killed} processes\n")
    wall = time.monotonic() - start
    returncode = -9 if timed_out else proc.returncode
    peak_rss_gib = round(peak_rss / 2**30, 1)
    print(
        f"[e2e] exit {returncode} after {wall:.0f} s, peak RSS {peak_rss_gib} GiB; phases (s): {json.dumps(phases)}",
        flush=True,
    )
    metrics = read_metrics(metrics_path) if metrics_path is not None and metrics_path.exists() else []
    return RunResult(
        returncode=returncode, wall_s=wall, log_path=log_path, phases=phases, metrics=metrics, peak_rss_gib=peak_rss_gib
    )


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _record(line: str, elapsed: float, log, phases: dict[str, float]) -> None:
    log.write(line + "\n")
    for phase, marker in PHASE_MARKERS.items():
        if phase not in phases and marker in line:
            phases[phase] = round(elapsed, 1)
    if _ECHO.search(line):
        print(f"[e2e +{elapsed:6.1f}s] {line[:300]}", flush=True)


def _collect_descendants(pid: int, seen: dict[int, psutil.Process]) -> None:
    try:
        for child in psutil.Process(pid).children(recursive=True):
            seen.setdefault(child.pid, child)
    except psutil.NoSuchProcess:
        pass


def _total_rss(pids: Iterable[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def read_metrics(path: Path) -> list[dict]:
    """verl `file` logger JSONL → [{"step": n, <metric>: value, ...}] in file order."""
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            rows.append({"step": record["step"], **record["data"]})
    return rows


def is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_run_env(cache_dir: Path, metrics_path: Path) -> dict[str, str]:
    """The subprocess environment: ours plus the CPU platform's, offline, metrics to `metrics_path`."""
    from lambda_grpo.cpu_platform import cpu_runtime_env

    return {
        **os.environ,
        **cpu_runtime_env(),
        **run_specific_env(cache_dir, metrics_path),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # Ray's single-machine mode: node IP 127.0.0.1, so Ray, TransferQueue and the vLLM server
        # listen on loopback only (the variable's name is Ray's; it is not specific to Windows/OSX).
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


def run_specific_env(cache_dir: Path, metrics_path: Path) -> dict[str, str]:
    """Env every process of this run needs besides the platform's (also sent through runtime_env)."""
    return {
        "VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULES,
        "LAMBDA_GRPO_CACHE": str(cache_dir),
        "VERL_FILE_LOGGER_PATH": str(metrics_path),
    }


def runtime_env_overrides(env: Mapping[str, str]) -> list[str]:
    """Hydra overrides adding `env` to ray_kwargs.ray_init.runtime_env.env_vars (values quoted as strings)."""
    quoted = {key: "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'" for key, value in env.items()}
    return [f"+ray_kwargs.ray_init.runtime_env.env_vars.{key}={value}" for key, value in quoted.items()]


def verl_main_ppo_command(ray_temp_dir: Path, runtime_env: Mapping[str, str], overrides: Sequence[str]) -> list[str]:
    """`python -m verl.trainer.main_ppo` with GRPO, our platform=cpu and model_size=tiny_cpu groups."""
    return [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        "hydra.searchpath=[pkg://lambda_grpo.configs]",
        "+platform=cpu",
        "+model_size=tiny_cpu",
        "algorithm.adv_estimator=grpo",
        "trainer.logger=[console,file]",
        "trainer.project_name=lambda_grpo_e2e",
        "trainer.experiment_name=tiny_cpu",
        f"+ray_kwargs.ray_init._temp_dir={ray_temp_dir}",
        f"+ray_kwargs.ray_init.dashboard_port={free_port()}",
        *runtime_env_overrides(runtime_env),
        *overrides,
    ]


def run_verl_main_ppo(workdir: Path, overrides: Sequence[str], timeout_s: float = 600) -> RunResult:
    """Run verl's main_ppo on CPU in `workdir` (its outputs, checkpoints, log and metrics go there).

    Ray's temp dir is a short fresh directory under /tmp (Ray's unix-socket paths must stay under
    107 bytes, which pytest's tmp_path can exceed) and is removed afterwards.
    """
    from lambda_grpo.cpu_platform import cpu_runtime_env

    cache_dir = workdir / "tiny_cache"
    metrics_path = workdir / "metrics.jsonl"
    ray_temp_dir = Path(tempfile.mkdtemp(prefix="lambda-grpo-ray-", dir="/tmp"))
    try:
        runtime_env = {**cpu_runtime_env(), **run_specific_env(cache_dir, metrics_path)}
        return run_logged(
            verl_main_ppo_command(ray_temp_dir, runtime_env, overrides),
            env=cpu_run_env(cache_dir, metrics_path),
            cwd=workdir,
            log_path=workdir / "run.log",
            timeout_s=timeout_s,
            metrics_path=metrics_path,
        )
    finally:
        shutil.rmtree(ray_temp_dir, ignore_errors=True)
