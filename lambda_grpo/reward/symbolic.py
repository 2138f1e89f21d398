"""math-verify in killable worker processes: a hard per-call timeout that also works off the main thread.

math-verify bounds its own work with `signal.alarm`, which only works in a process's main thread; verl's reward
loop calls the reward function from executor threads. So the verification runs in a small pool of worker
processes (started with "spawn", safe in threaded parents such as Ray actors), where math-verify runs in the
main thread with its default internal timeouts. The caller waits at most `timeout_s` for the answer; a worker
that has not answered by then is killed (and replaced on the next call), so no input can hang the caller.

The verdict is exactly math-verify's:

    verify(parse("\\boxed{" + ground_truth + "}"), parse(solution))      math-verify 0.9.0 defaults

Two shortcuts keep that verdict. When the caller passes the content of the response's only box (see
`fast_path.single_box_content`: math-verify provably extracts that box), the worker parses `\\boxed{content}`
instead of scanning the whole response; if the content does not parse, it falls back to the whole response, as
math-verify would. A verdict reached from the box alone depends only on (ground truth, box content), so the
caller keeps it in an LRU cache (`CACHE_ENTRIES`): in GRPO the G responses to one prompt share the ground truth
and often the same final answer.

Pool size: `$LAMBDA_GRPO_REWARD_WORKERS`, default min(4, CPU count). Callers beyond that many wait for a free
worker; the wait does not count against `timeout_s`.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing.connection import Connection

WORKERS_ENV = "LAMBDA_GRPO_REWARD_WORKERS"
"""Environment variable: number of math-verify worker processes per calling process."""

CACHE_ENTRIES = 1 << 16
"""Size of the per-process LRU cache of box-only verdicts, keyed by (ground truth, box content)."""

WORKER_ADDRESS_SPACE_BYTES = 4 << 30
"""Address-space cap of a worker (RLIMIT_AS, 4 GiB; a worker idles at ~70 MB): an expression that makes sympy
build a gigantic number fails with MemoryError inside the worker instead of exhausting the machine's memory."""


@dataclass(frozen=True)
class SymbolicResult:
    """math-verify's verdict; `pred` is its normalised extracted answer ("" if it extracted nothing).

    `outcome` is "match", "mismatch", "no_answer" (nothing extracted from the solution), "timeout" or
    "error: <what>" (math-verify raised despite its defaults, or the worker died on this input).
    """

    equal: bool
    pred: str
    outcome: str
    box_only: bool = False
    """True if decided from the box content alone: then a function of (ground truth, box content)."""


def math_verify_verdict(solution: str, ground_truth: str, box_content: str | None = None) -> SymbolicResult:
    """Run math-verify in this process (must be a main thread: math-verify uses signal.alarm).

    `box_content`: the content of the solution's only box when math-verify provably extracts it (None if
    unknown); the answer is then parsed from `\\boxed{box_content}` alone, if that parses.
    """
    from math_verify import parse, verify

    gold = parse("\\boxed{" + ground_truth + "}")
    target, box_only = [], False
    if box_content is not None:
        target = parse("\\boxed{" + box_content + "}")
        box_only = bool(target) and not isinstance(target[0], str)  # a str first element: it did not parse
    if not box_only:
        target = parse(solution)
    if not target:
        return SymbolicResult(equal=False, pred="", outcome="no_answer")
    # The string elements are math-verify's normalised answers. Never str() a sympy object here: for huge
    # expressions that alone can take unbounded time (math-verify warns about it too).
    pred = next((item for item in reversed(target) if isinstance(item, str)), "")
    equal = bool(verify(gold, target))
    return SymbolicResult(equal=equal, pred=pred, outcome="match" if equal else "mismatch", box_only=box_only)


def _serve(connection: Connection) -> None:
    """Worker main loop: answer `math_verify_verdict` argument tuples with SymbolicResult until the pipe closes."""
    import resource

    import math_verify  # noqa: F401  (import before announcing readiness, so startup is not timed)

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_ADDRESS_SPACE_BYTES, WORKER_ADDRESS_SPACE_BYTES))
    connection.send("ready")
    while True:
        try:
            arguments = connection.recv()
        except (EOFError, OSError):
            return
        try:
            result = math_verify_verdict(*arguments)
        except (Exception, MemoryError) as error:  # math-verify swallows most of its errors; a last resort
            result = SymbolicResult(equal=False, pred="", outcome=f"error: {type(error).__name__}")
        connection.send(result)


class _Worker:
    """One spawned worker process and the parent's end of its pipe."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        self.process = context.Process(target=_serve, args=(child_end,), daemon=True, name="lambda_grpo-reward")
        self.process.start()
        child_end.close()
        self.connection = parent_end
        try:
            ready = self.connection.recv()
        except EOFError:
            ready = None
        if ready != "ready":
            self.kill()
            exit_code = self.process.exitcode
            raise RuntimeError(f"lambda_grpo.reward: math-verify worker failed to start (exit code {exit_code})")

    def ask(self, arguments: tuple[str, str, str | None], timeout_s: float) -> SymbolicResult | None:
        """The worker's answer, or None if it did not answer within `timeout_s` seconds.

        Raises EOFError/OSError if the worker died (killed by the OS, say) while working on it.
        """
        self.connection.send(arguments)
        if not self.connection.poll(timeout_s):
            return None
        return self.connection.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.connection.close()


class WorkerPool:
    """Up to `size` workers, started on demand; a worker that times out is killed and replaced later.

    A semaphore counts the free slots; a slot holds an idle worker or none yet (started on first use).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"WorkerPool: size={size}; need at least 1 worker")
        self.size = size
        self._slots = threading.Semaphore(size)
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()

    def verify(
        self, solution: str, ground_truth: str, timeout_s: float, box_content: str | None = None
    ) -> SymbolicResult:
        """`math_verify_verdict` in a worker, or outcome "timeout" after `timeout_s` seconds of verification."""
        self._slots.acquire()
        try:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                worker = _Worker()
            try:
                result = worker.ask((solution, ground_truth, box_content), timeout_s)
            except (EOFError, OSError):
                worker.kill()
                return SymbolicResult(equal=False, pred="", outcome="error: worker exited")
            except BaseException:
                worker.kill()
                raise
            if result is None:
                worker.kill()
                return SymbolicResult(equal=False, pred="", outcome="timeout")
            self._idle.put(worker)
            return result
        finally:
            self._slots.release()

    def close(self) -> None:
        """Kill the idle workers (a busy one goes back to the pool, or is killed on timeout or at exit)."""
        while True:
            try:
                self._idle.get_nowait().kill()
            except queue.Empty:
                return


class VerdictCache:
    """Thread-safe LRU map (ground truth, box content) -> SymbolicResult, for box-only verdicts."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._items: OrderedDict[tuple[str, str], SymbolicResult] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> SymbolicResult | None:
        with self._lock:
            result = self._items.get(key)
            if result is not None:
                self._items.move_to_end(key)
            return result

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def put(self, key: tuple[str, str], result: SymbolicResult) -> None:
        with self._lock:
            self._items[key] = result
            self._items.move_to_end(key)
            if len(self._items) > self.entries:
                self._items.popitem(last=False)


_pool: WorkerPool | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()
verdict_cache = VerdictCache(CACHE_ENTRIES)


def default_pool_size() -> int:
    """`$LAMBDA_GRPO_REWARD_WORKERS` if set, else min(4, CPU count)."""
    configured = os.environ.get(WORKERS_ENV)
    if configured is not None:
        try:
            return int(configured)
        except ValueError:
            raise ValueError(f"{WORKERS_ENV}={configured!r} is not an integer") from None
    return min(4, os.cpu_count() or 1)


def shared_pool() -> WorkerPool:
    """This process's pool (a forked child gets a fresh one: pipes must not be shared across processes)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool, _pool_pid = WorkerPool(default_pool_size()), os.getpid()
        return _pool


def symbolic_verdict(
    solution: str, ground_truth: str, timeout_s: float, box_content: str | None = None
) -> SymbolicResult:
    """math-verify's verdict, from the cache or the shared pool, bounded by `timeout_s` (module docstring)."""
    key = None if box_content is None else (ground_truth, box_content)
    if key is not None and (cached := verdict_cache.get(key)) is not None:
        return cached
    result = shared_pool().verify(solution, ground_truth, timeout_s, box_content)
    if key is not None and result.box_only:
        verdict_cache.put(key, result)
    return result
