"""The end-to-end harness reports a run's exit status as the run gave it (a failed run must never read as 0)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from e2e_helpers import run_logged


def run_python(tmp_path: Path, code: str, timeout_s: float = 60):
    return run_logged([sys.executable, "-c", textwrap.dedent(code)], env={}, cwd=tmp_path,
                      log_path=tmp_path / "run.log", timeout_s=timeout_s)


@pytest.mark.parametrize("status", [0, 1, 3])
def test_the_exit_status_is_the_runs(tmp_path, status):
    assert run_python(tmp_path, f"import sys; print('hello'); sys.exit({status})").returncode == status


def test_a_run_whose_child_holds_the_output_open_keeps_its_status(tmp_path):
    """Ray's workers outlive the driver and keep its pipe open; they are killed, the driver's status stays."""
    result = run_python(tmp_path, """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("child", child.pid, flush=True)
        time.sleep(2)  # the harness collects descendants while the run is alive
        sys.exit(1)
        """)
    assert result.returncode == 1 and result.wall_s < 30
    log = result.log_path.read_text()
    child = int(log.split("child ", 1)[1].split()[0])
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    assert "cleaned up 1 processes" in log


def test_a_run_that_closes_its_output_is_waited_for(tmp_path):
    """The console closes after the summary; Ray's shutdown follows. The run is not killed for it."""
    result = run_python(tmp_path, """
        import os, sys, time
        print("summary", flush=True)
        os.close(1); os.close(2)
        time.sleep(2)
        sys.exit(1)
        """)
    assert result.returncode == 1 and result.wall_s >= 2


def test_a_run_past_its_time_is_killed_and_reads_as_minus_9(tmp_path):
    result = run_python(tmp_path, "import time; time.sleep(60)", timeout_s=2)
    assert result.returncode == -9 and result.wall_s < 30
    assert "TIMEOUT" in result.log_path.read_text()
