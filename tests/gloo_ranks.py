"""Run a test worker script as `world` torch.distributed ranks on this machine (gloo over loopback).

`run_ranks(worker, world, args, out)` starts `python <worker> <args> --out <out>` once per rank with RANK,
WORLD_SIZE, MASTER_ADDR/PORT set (one thread each), waits for all, and returns each rank's
<out>/rank<r>.json. Importable from tests as `import gloo_ranks` (pyproject's pytest `pythonpath`).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ranks(worker: Path, world: int, args: Sequence[str], out: Path, timeout_s: float = 120) -> list[dict]:
    """Each rank's JSON result; an AssertionError with a rank's output tail if any rank fails."""
    out.mkdir(parents=True, exist_ok=True)
    port = str(free_port())
    tests = str(Path(__file__).resolve().parent)
    processes = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                   OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))
        command = [sys.executable, str(worker), *args, "--out", str(out)]
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for process in processes:
        output, _ = process.communicate(timeout=timeout_s)
        assert process.returncode == 0, output.decode()[-3000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(world)]
