"""Helpers for end-to-end tests that run verl's real trainer on CPU in a subprocess.

`run_logged(cmd, ...)` runs a command in its own session with a timeout, tees its output into a log
file, echoes it to stdout as it comes (the console of `lambda_grpo.main` is short; everything else goes
to the run's own log file), records when each phase marker first appeared, and on timeout or exit kills
every process the run left (Ray's GCS, raylet and workers, vLLM's engine processes) by PID.
`read_metrics` parses verl's `file` logger (one JSON object per step). `run_lambda_grpo` runs
`python -m lambda_grpo.main model_size=tiny_cpu` on this CPU machine with all of it.

Importable from tests as `import e2e_helpers` (pyproject's pytest `pythonpath` includes tests/).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import psutil

PHASE_MARKERS = {
    "ray_started": "Ray started",
    "trainer_workers_ready": "trainer workers ready",
    "init_finished": "rollout and reward workers ready",
    "step_1_done": "step 1/",
    "step_2_done": "step 2/",
    "step_3_done": "step 3/",
}
"""Phase name → a substring of the console line (lambda_grpo.console) that marks its end (first occurrence counts)."""


@dataclasses.dataclass
class RunResult:
    """What a run left: exit code, wall time, console output (log_path), phase times (s since start), the peak
    summed RSS of its processes (GiB; shared pages counted once per process), its per-step metrics and the
    run's own log file (everything verl, Ray and vLLM printed: <run dir>/logs/<start>.log)."""

    returncode: int
    wall_s: float
    log_path: Path
    phases: dict[str, float]
    peak_rss_gib: float
    metrics: list[dict] = dataclasses.field(default_factory=list)
    run_log_path: Path | None = None

    def console_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_text(self) -> str:
        """The console output, then the run's log file."""
        run_log = self.run_log_path.read_text(errors="replace") if self.run_log_path else ""
        return self.console_text() + run_log


def kill_process_tree(root: subprocess.Popen, known: Iterable[psutil.Process] = ()) -> int:
    """SIGKILL `root` (unless it has exited), its descendants and `known` processes; return how many were alive.

    `root`'s exit status is kept: it is reaped through `root` itself, never through psutil (a psutil wait on
    a child takes its status, and Popen then reports 0 for a run that failed).
    """
    root.poll()
    procs = {p.pid: p for p in known if p.pid != root.pid and p.is_running()}
    try:
        procs.update({child.pid: child for child in psutil.Process(root.pid).children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    if root.returncode is None:
        root.kill()
    for proc in procs.values():
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(procs.values()), timeout=15)
    root.wait()
    return len(procs) + (root.returncode == -signal.SIGKILL)


def run_logged(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path,
    log_path: Path,
    timeout_s: float,
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
                if line is None:  # output closed; the driver may still be shutting down (Ray's atexit)
                    try:
                        proc.wait(timeout=max(1.0, timeout_s - (time.monotonic() - start)))
                    except subprocess.TimeoutExpired:
                        timed_out = True
                        log.write(f"\n[e2e] TIMEOUT after {timeout_s:.0f} s: killing the run\n")
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
            killed = kill_process_tree(proc, seen.values())
            log.write(f"[e2e] cleaned up {killed} processes\n")
    wall = time.monotonic() - start
    returncode = -9 if timed_out else proc.returncode
    peak_rss_gib = round(peak_rss / 2**30, 1)
    print(
        f"[e2e] exit {returncode} after {wall:.0f} s, peak RSS {peak_rss_gib} GiB; phases (s): {json.dumps(phases)}",
        flush=True,
    )
    return RunResult(returncode=returncode, wall_s=wall, log_path=log_path, phases=phases, peak_rss_gib=peak_rss_gib)


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _record(line: str, elapsed: float, log, phases: dict[str, float]) -> None:
    log.write(line + "\n")
    for phase, marker in PHASE_MARKERS.items():
        if phase not in phases and marker in line:
            phases[phase] = round(elapsed, 1)
    print(f"[e2e +{elapsed:6.1f}s] {line[:300]}", flush=True)  # the console of a run is short


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


def run_lambda_grpo(workdir: Path, overrides: Sequence[str], cache_dir: Path, timeout_s: float = 600) -> RunResult:
    """`python -m lambda_grpo.main model_size=tiny_cpu <overrides>` in `workdir`, as a user runs it.

    Outputs land where the entry point puts them: checkpoints (and the per-start metrics files of verl's
    `file` logger, `<checkpoint dir>/metrics/*.jsonl`) under `workdir/checkpoints/`. The returned metrics
    are those of this start only. The tiny assets are built once into `cache_dir` and reused. Ray's temp
    dir is a short fresh folder under /tmp (its unix-socket paths must stay under 107 bytes).
    """
    ray_temp_dir = Path(tempfile.mkdtemp(prefix="lambda-grpo-ray-", dir="/tmp"))
    env = {
        **os.environ,
        "LAMBDA_GRPO_CACHE": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        # Ray's single-machine mode: node IP 127.0.0.1, so Ray, TransferQueue and the vLLM server
        # listen on loopback only (the variable's name is Ray's; it is not specific to Windows/OSX).
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    command = [sys.executable, "-m", "lambda_grpo.main", "model_size=tiny_cpu",
               f"+ray_kwargs.ray_init._temp_dir={ray_temp_dir}", *overrides]
    metrics_files, log_files = "checkpoints/*/*/metrics/*.jsonl", "checkpoints/*/*/logs/*.log"
    before = set(workdir.glob(metrics_files)) | set(workdir.glob(log_files))
    try:
        console_log = workdir / f"run{len(list(workdir.glob('run*.log')))}.log"
        run = run_logged(command, env=env, cwd=workdir, log_path=console_log,
                         timeout_s=timeout_s)
    finally:
        shutil.rmtree(ray_temp_dir, ignore_errors=True)
    new_metrics = sorted(set(workdir.glob(metrics_files)) - before)
    run.metrics = read_metrics(new_metrics[-1]) if new_metrics else []
    new_logs = sorted(set(workdir.glob(log_files)) - before)
    run.run_log_path = new_logs[-1] if new_logs else None
    return run
