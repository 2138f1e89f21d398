"""Where a run's output goes: a short console a person follows, and one log file with everything.

`RunOutput.start()` prints the header on the console, then points this process's stdout and stderr (file
descriptors 1 and 2, so C extensions and child processes too) at the run's log file. Ray forwards what every
worker prints to the driver (ray.init's log_to_driver, on by default), so the one file holds everything verl,
Ray, vLLM and the reward print, in order: the TaskRunner's composed config, the engines' warnings, vLLM's server
arguments, verl's own console logger line of every step.

The console keeps a duplicate of the original stdout. A follower thread reads the log file and verl's metrics
file as they grow and writes to it (lambda_grpo.console formats the lines): start-up milestones, lines tagged
`[lambda_grpo]` by any process, one line per step and per validation. `finish()` and `fail()` end with the
summary (after drawing the plots); `fail()` also prints the end of the error and where the full log is.

Under `ray job submit` the driver is the job's entrypoint: its original stdout is what `ray job logs` shows,
so the job log is the short console, and the run's log file (in trainer.default_local_dir, on shared
storage on a cluster) has the rest.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TextIO

from omegaconf import DictConfig

from lambda_grpo import console, run_files
from lambda_grpo.complete_checkpoints import latest_complete
from lambda_grpo.console import Progress, RunPaths
from lambda_grpo.watchdog import SIGTERM_EXIT, Fault

POLL_S = 0.5
"""How often the follower reads the log and metrics files."""

ERROR_LINES = 25
"""At most this many last lines of a failed run's traceback reach the console (all of it is in the log)."""


class LineFollower:
    """Reads the new complete lines of a file that another writer appends to.

    What the file holds when following starts is skipped (a metrics file chosen with VERL_FILE_LOGGER_PATH may hold
    an earlier start's records until verl truncates it), and a truncated file is read again from its start.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.is_file() else 0
        self.partial = b""

    def new_lines(self) -> list[str]:
        try:
            with self.path.open("rb") as file:
                if os.fstat(file.fileno()).st_size < self.offset:
                    self.offset, self.partial = 0, b""
                file.seek(self.offset)
                chunk = file.read()
        except FileNotFoundError:
            return []
        self.offset += len(chunk)
        *lines, self.partial = (self.partial + chunk).split(b"\n")
        return [line.decode("utf-8", errors="replace") for line in lines]


class RunOutput:
    """The console of one start of a run (module docstring)."""

    def __init__(self, cfg: DictConfig, paths: RunPaths) -> None:
        self.cfg = cfg
        self.paths = paths
        total = cfg.trainer.get("total_training_steps")
        self.progress = Progress(total_steps=int(total) if total else None)
        self.started = time.monotonic()
        self.console: TextIO = sys.stdout
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.log = LineFollower(paths.log)
        self.metrics = LineFollower(paths.metrics)

    def say(self, line: str, elapsed: bool = False) -> None:
        """One line on the console (with the time since start when `elapsed`)."""
        with self.lock:
            prefix = f"{console.clock(time.monotonic() - self.started):>7}  " if elapsed else ""
            self.console.write(f"{prefix}{line}\n")
            self.console.flush()

    def start(self) -> None:
        """Header on the console, then stdout/stderr into the log file, and the follower thread."""
        for line in console.header_lines(self.cfg, self.paths):
            self.say(line)
        sys.stdout.flush()
        sys.stderr.flush()
        self.console = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8", errors="replace")
        log_fd = os.open(self.paths.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        for stream in (sys.stdout, sys.stderr):  # a file now: flush each line, so the follower sees it
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(line_buffering=True)
        self.say("starting: Ray, trainer and rollout workers (the log has the details)", elapsed=True)
        self.thread = threading.Thread(target=self._follow, name="lambda_grpo-console", daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        while not self.stopping.wait(POLL_S):
            try:
                self._read()
            except Exception:  # noqa: BLE001  (a line the console cannot show must not end the console)
                traceback.print_exc()  # into the log

    def _read(self) -> None:
        for line in self.log.new_lines():
            if message := self.progress.start_up_line(line):
                self.say(message, elapsed=True)
            if message := console.tagged_message(line):
                self.say(message, elapsed=True)
        for line in self.metrics.new_lines():
            try:
                record = json.loads(line)
                step, data = int(record["step"]), dict(record["data"])
            except (ValueError, KeyError, TypeError):
                continue
            for message in self.progress.record_lines(step, data):
                self.say(message)

    def _stop(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
        self._read()

    def finish(self) -> None:
        """After a run that returned: the last lines, plots and the summary."""
        self._stop()
        self._summary("finished")

    def fail(self, error: BaseException, fault: Fault | None = None) -> int:
        """After a run that raised: the error's last lines, plots, the summary; returns the exit status
        (1, 130 after Ctrl-C, a SystemExit's own code; 0 for a SystemExit that reports success).

        `fault`: what the watchdog (lambda_grpo.watchdog) stopped the run for; it comes first, and decides the
        exit status. After SIGTERM the plots are not drawn: Ray's job supervisor sends SIGKILL 3 s later."""
        if fault is None and isinstance(error, SystemExit) and error.code in (0, None):
            self.finish()
            return 0
        traceback.print_exception(error)  # into the log, after everything the run printed
        self._stop()
        if fault is not None:
            self.say(f"error: {fault.message}")
            stopped = fault.exit_status == SIGTERM_EXIT
            self._summary("STOPPED" if stopped else "FAILED", draw=not stopped)
            return fault.exit_status
        if isinstance(error, KeyboardInterrupt):
            self._summary("interrupted")
            return 130
        lines = "".join(traceback.format_exception(error)).rstrip().splitlines()
        shown = min(len(lines), ERROR_LINES)
        self.say(f"error: the last {shown} of {len(lines)} lines of the traceback (all of it is in the log)")
        for line in lines[-ERROR_LINES:]:
            self.say(f"  {line}")
        self._summary("FAILED")
        return error.code if isinstance(error, SystemExit) and isinstance(error.code, int) else 1

    def _summary(self, outcome: str, draw: bool = True) -> None:
        try:
            series = run_files.history(self.paths)
        except (OSError, ValueError) as error:
            series, plots = {}, f"not drawn: {error}"
        else:
            plots = self._plots(series) if draw else "not drawn (python -m lambda_grpo.plots draws them)"
        checkpoint = latest_complete(self.paths.run_dir)
        elapsed = time.monotonic() - self.started
        for line in console.summary_lines(outcome, elapsed, series, checkpoint, self.paths, plots):
            self.say(line)

    def _plots(self, series: dict) -> list[Path] | str:
        if not series:
            return "none (no step logged)"
        try:
            return run_files.draw_plots(series, str(self.cfg.trainer.experiment_name), self.paths.plots)
        except Exception as error:  # noqa: BLE001  (a plot must never hide the run's outcome)
            traceback.print_exception(error)
            return f"not drawn ({type(error).__name__}: {error}; traceback in the log)"
