"""math-verify in worker processes: outcomes, the hard timeout, recovery, thread use, pool sizing."""

import os
import threading
import time

import pytest

from lambda_grpo.reward import symbolic
from lambda_grpo.reward.symbolic import SymbolicResult, WorkerPool, math_verify_verdict

HANGING = r"\boxed{2^{2^{2^{2^{2^{2}}}}}}"


@pytest.fixture(scope="module")
def pool():
    pool = WorkerPool(size=2)
    yield pool
    pool.close()


def test_math_verify_verdict_outcomes():
    assert math_verify_verdict(r"So \boxed{\frac{1}{2}}", "0.5") == SymbolicResult(True, r"\frac{1}{2}", "match")
    assert math_verify_verdict(r"So \boxed{3}", "4") == SymbolicResult(False, "3", "mismatch")
    assert math_verify_verdict("no digits here", "4") == SymbolicResult(False, "", "no_answer")


def test_pool_matches_in_process_math_verify(pool):
    for solution, truth in ((r"\boxed{x^2+2x+1}", "(x+1)^2"), (r"\boxed{[1,2]}", "[1,2)"), ("#### 72", "72")):
        assert pool.verify(solution, truth, timeout_s=10.0) == math_verify_verdict(solution, truth)


def test_timeout_kills_the_worker_and_the_pool_recovers(pool):
    pool.verify(r"\boxed{1}", "1", timeout_s=10.0)  # warm
    start = time.perf_counter()
    assert pool.verify(HANGING, "3", timeout_s=0.5) == SymbolicResult(False, "", "timeout")
    assert time.perf_counter() - start < 1.0
    assert pool.verify(r"\boxed{\sqrt{8}}", r"2\sqrt{2}", timeout_s=10.0).outcome == "match"


def test_works_from_a_non_main_thread(pool):
    """math-verify's own signal-based timeout raises off the main thread; the pool does not."""
    results = []
    thread = threading.Thread(target=lambda: results.append(pool.verify(r"\boxed{0.5}", r"\frac12", 10.0)))
    thread.start()
    thread.join()
    assert results == [SymbolicResult(True, r"\frac{1}{2}", "match")]


def test_worker_killed_from_outside_reports_an_error(pool):
    worker = symbolic._Worker()
    pool._idle.put(worker)
    os.kill(worker.process.pid, 9)
    worker.process.join()
    # The pool is LIFO, so the dead worker is the one handed out next.
    died = pool.verify(r"\boxed{\sqrt{8}}", r"2\sqrt{2}", timeout_s=5.0)
    assert died == SymbolicResult(False, "", "error: worker exited")
    assert pool.verify(r"\boxed{\sqrt{8}}", r"2\sqrt{2}", timeout_s=5.0).outcome == "match"


def test_pool_size(monkeypatch):
    with pytest.raises(ValueError, match="size=0"):
        WorkerPool(size=0)
    monkeypatch.setenv(symbolic.WORKERS_ENV, "3")
    assert symbolic.default_pool_size() == 3
    monkeypatch.setenv(symbolic.WORKERS_ENV, "three")
    with pytest.raises(ValueError, match=symbolic.WORKERS_ENV):
        symbolic.default_pool_size()
    monkeypatch.delenv(symbolic.WORKERS_ENV)
    assert symbolic.default_pool_size() == min(4, os.cpu_count() or 1)


def test_shared_pool_is_per_process(monkeypatch):
    first = symbolic.shared_pool()
    assert symbolic.shared_pool() is first
    monkeypatch.setattr(symbolic, "_pool", first)  # restored afterwards
    monkeypatch.setattr(symbolic, "_pool_pid", -1)  # as seen from a forked child
    assert symbolic.shared_pool() is not first
