"""Killable worker processes with a wall-clock deadline per call, worker start-up included.

A `WorkerPool` runs functions in up to `size` worker processes (fresh interpreters, safe in threaded parents such as
Ray actors and verl's reward threads) and answers each `call` within its deadline, whatever the function
does with the arguments:

    deadline = t_slot + timeout_s          t_slot: when the call got a free worker slot
    the call returns by deadline + MARGIN_S, with the function's result or a `Failure`

Within the deadline fall: waiting for the worker to finish starting (a fresh interpreter importing the function's
module), copying the arguments, and the function itself. A worker that is still starting at the deadline is not
killed: it finishes starting in the background and serves the next call. A worker that is still computing at the
deadline is killed, and its replacement is started at once (without waiting for it), so the next call rarely pays
for a start. `MARGIN_S` bounds the bookkeeping after the deadline (killing and reaping the worker, starting the
replacement process); `tests/test_reward_workers.py` holds calls to it.

A worker answers until its pipe closes: when the pool kills it, or when the calling process exits (an idle worker
then exits at once, a busy one after its current call). A function that raises ends its worker (the traceback goes
to stderr and the call answers `Failure.WORKER_DIED`); the reward's function never raises.

Calls beyond `size` at once wait for a free slot first; that wait is not part of the deadline (each busy slot frees
within its own deadline + MARGIN_S). Pool size: `$LAMBDA_GRPO_REWARD_WORKERS`, default min(4, CPU count).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from enum import Enum
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

WORKERS_ENV = "LAMBDA_GRPO_REWARD_WORKERS"
"""Environment variable: number of worker processes per calling process."""

MARGIN_S = 0.5
"""Upper bound (seconds) on the time a call takes after its deadline: kill and reap the late worker and start
its replacement (measured: 0.01-0.11 s over twelve timeouts on two cores at load 6; the bound leaves room for a
busier machine)."""


class Failure(Enum):
    """`call`'s answer when the function's result did not come back."""

    TIMED_OUT = "the deadline passed before the worker answered"
    WORKER_DIED = "the worker exited while computing (killed by the OS, say)"


def _serve(connection: Connection) -> None:
    """Worker main loop: take sys.path, then `prepare`; run it, say "ready", then answer each (function, arguments)
    with `function(*arguments)` until the pipe closes (the parent closed it or exited)."""
    try:
        sys.path[:] = connection.recv()
        prepare = connection.recv()
        if prepare is not None:
            prepare()
        connection.send("ready")
        while True:
            function, arguments = connection.recv()
            connection.send(function(*arguments))
    except (EOFError, OSError):
        return


class WorkerStartError(RuntimeError):
    """A worker process exited before it was ready (its function's module failed to import, say)."""


class _Worker:
    """One worker process and the parent's end of its pipe; starting it does not wait for it.

    The worker is a fresh interpreter (`python -c`, the parent's sys.path sent over the pipe), not a
    multiprocessing child: it never re-imports the caller's main module, so a script without an
    `if __name__ == "__main__"` guard can call the reward too.
    """

    def __init__(self, prepare: Callable[[], None] | None) -> None:
        parent_end, child_end = multiprocessing.Pipe()
        command = f"from lambda_grpo.reward.workers import _child_main; _child_main({child_end.fileno()})"
        self.process = subprocess.Popen(
            [sys.executable, "-c", command], pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL, env=_child_env()
        )
        child_end.close()
        self.connection = parent_end
        self.ready = False
        try:
            self.connection.send(sys.path)
            self.connection.send(prepare)
        except OSError:
            self._start_failed()

    def _start_failed(self) -> None:
        self.kill()
        raise WorkerStartError(
            f"lambda_grpo.reward: a worker process exited while starting (exit code {self.process.returncode})"
        )

    def wait_ready(self, deadline: float) -> bool:
        """True once the worker is ready, False if it is still starting at `deadline`; WorkerStartError if it died."""
        if not self.ready:
            if not self.connection.poll(max(0.0, deadline - time.monotonic())):
                return False
            try:
                self.ready = self.connection.recv() == "ready"
            except (EOFError, OSError):
                pass
            if not self.ready:
                self._start_failed()
        return True

    def ask(self, function: Callable[..., Any], arguments: tuple[Any, ...], deadline: float) -> Any:
        """The worker's answer, or Failure.TIMED_OUT at `deadline`; EOFError/OSError if the worker died meanwhile."""
        self.connection.send((function, arguments))
        if not self.connection.poll(max(0.0, deadline - time.monotonic())):
            return Failure.TIMED_OUT
        return self.connection.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.connection.close()


class WorkerPool:
    """Up to `size` workers (module docstring); `prepare` runs once in each new worker.

    `prepare` and the functions called must be importable module-level functions (they are pickled by name).
    A semaphore counts the free slots; a slot holds an idle worker (ready or starting) or none yet.
    """

    def __init__(self, size: int, prepare: Callable[[], None] | None = None) -> None:
        if size < 1:
            raise ValueError(f"WorkerPool: size={size}; need at least 1 worker (set {WORKERS_ENV} >= 1)")
        self.prepare, self.size = prepare, size
        self._slots = threading.Semaphore(size)
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()

    def _start(self) -> _Worker:
        return _Worker(self.prepare)

    def call(self, function: Callable[..., Any], arguments: tuple[Any, ...], timeout_s: float) -> Any:
        """`function(*arguments)` in a worker, or a `Failure` (module docstring)."""
        with self._slots:
            deadline = time.monotonic() + timeout_s
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                worker = self._start()
            if not worker.wait_ready(deadline):  # WorkerStartError if it died while starting
                self._idle.put(worker)
                return Failure.TIMED_OUT
            try:
                answer = worker.ask(function, arguments, deadline)
            except (EOFError, OSError):
                answer = Failure.WORKER_DIED
            except BaseException:  # interrupted while waiting: the worker's state is unknown
                worker.kill()
                raise
            if isinstance(answer, Failure):
                worker.kill()
                worker = self._start()
            self._idle.put(worker)
            return answer

    def close(self) -> None:
        """Kill the idle workers (a busy one goes back to the pool after its call, or is killed on timeout)."""
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return


def _child_env() -> dict[str, str]:
    """The parent's environment, with this package importable (sys.path proper is sent over the pipe)."""
    package_root = str(Path(__file__).resolve().parents[2])
    python_path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": package_root + (os.pathsep + python_path if python_path else "")}


def _child_main(fd: int) -> None:
    """Entry point of a worker process (`python -c`): serve on the inherited pipe end `fd`."""
    _serve(Connection(fd))


def default_pool_size() -> int:
    """`$LAMBDA_GRPO_REWARD_WORKERS` if set, else min(4, CPU count)."""
    configured = os.environ.get(WORKERS_ENV)
    if configured is not None:
        try:
            return int(configured)
        except ValueError:
            raise ValueError(f"{WORKERS_ENV}={configured!r} is not an integer") from None
    return min(4, os.cpu_count() or 1)
