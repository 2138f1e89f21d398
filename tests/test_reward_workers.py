"""The worker pool: results, the wall-clock deadline (worker start included), recovery, threads, pool sizing.

The functions called are standard-library functions (the workers import them by name): `operator.add` answers,
`time.sleep` hangs, `os._exit` dies, `os.getpid` tells which worker answered.
"""

import functools
import operator
import os
import sys
import threading
import time
from collections import Counter

import pytest

from lambda_grpo.reward import workers
from lambda_grpo.reward.workers import MARGIN_S, Failure, WorkerPool, WorkerStartError

SLOW_START_S = 1.0


@pytest.fixture()
def make_pool():
    pools = []

    def make(size=1, prepare=None):
        pools.append(WorkerPool(size, prepare=prepare))
        return pools[-1]

    yield make
    for pool in pools:
        pool.close()


def _timed(pool, function, arguments, timeout_s):
    start = time.perf_counter()
    answer = pool.call(function, arguments, timeout_s)
    return answer, time.perf_counter() - start


def test_call_returns_the_functions_result(make_pool):
    pool = make_pool()
    assert pool.call(operator.add, (2, 3), timeout_s=10.0) == 5
    assert pool.call(operator.add, ("a", "b"), timeout_s=10.0) == "ab"
    assert pool.call(os.getpid, (), timeout_s=10.0) != os.getpid()


def test_a_hanging_call_returns_at_its_deadline_and_the_pool_recovers(make_pool):
    pool = make_pool()
    pool.call(time.sleep, (0,), timeout_s=10.0)  # started and warm
    answer, elapsed = _timed(pool, time.sleep, (60,), timeout_s=0.5)
    assert answer is Failure.TIMED_OUT
    assert 0.5 <= elapsed < 0.5 + MARGIN_S
    assert pool.call(time.sleep, (0,), timeout_s=10.0) is None  # the replacement answers


def test_worker_start_counts_against_the_deadline(make_pool):
    """A call that has to start its worker still returns at its deadline; the worker finishes starting
    in the background and serves the next call."""
    pool = make_pool(prepare=functools.partial(time.sleep, SLOW_START_S))
    answer, elapsed = _timed(pool, os.getpid, (), timeout_s=0.3)
    assert answer is Failure.TIMED_OUT
    assert elapsed < 0.3 + MARGIN_S
    first_pid = pool.call(os.getpid, (), timeout_s=SLOW_START_S + 10.0)
    assert isinstance(first_pid, int) and pool.call(os.getpid, (), timeout_s=1.0) == first_pid  # no second start


def test_the_replacement_of_a_killed_worker_starts_at_once(make_pool):
    pool = make_pool(prepare=functools.partial(time.sleep, SLOW_START_S))
    assert pool.call(time.sleep, (0,), timeout_s=SLOW_START_S + 10.0) is None
    assert pool.call(time.sleep, (60,), timeout_s=0.2) is Failure.TIMED_OUT
    time.sleep(SLOW_START_S + 1.0)  # the replacement has been starting meanwhile
    answer, elapsed = _timed(pool, time.sleep, (0,), timeout_s=SLOW_START_S)
    assert answer is None and elapsed < 0.5


def test_a_worker_that_dies_is_reported_and_replaced(make_pool):
    pool = make_pool()
    first_pid = pool.call(os.getpid, (), timeout_s=10.0)
    assert pool.call(os._exit, (3,), timeout_s=10.0) is Failure.WORKER_DIED
    assert pool.call(os.getpid, (), timeout_s=10.0) not in (first_pid, None)


def test_a_worker_that_cannot_start_raises(make_pool):
    pool = make_pool(prepare=sys.exit)
    with pytest.raises(WorkerStartError, match="exited while starting"):
        pool.call(os.getpid, (), timeout_s=10.0)


def test_threads_share_the_workers(make_pool):
    """verl calls the reward from executor threads; two workers serve four threads, each call bounded."""
    pool = make_pool(size=2)
    answers = []

    def call(seconds, timeout_s):
        answers.append(pool.call(time.sleep, (seconds,), timeout_s))

    threads = [threading.Thread(target=call, args=(0.1, 10.0)) for _ in range(3)]
    threads.append(threading.Thread(target=call, args=(60, 1.0)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert Counter(answers) == {None: 3, Failure.TIMED_OUT: 1}


def test_pool_size(monkeypatch):
    with pytest.raises(ValueError, match="size=0"):
        WorkerPool(size=0)
    monkeypatch.setenv(workers.WORKERS_ENV, "3")
    assert workers.default_pool_size() == 3
    monkeypatch.setenv(workers.WORKERS_ENV, "three")
    with pytest.raises(ValueError, match=workers.WORKERS_ENV):
        workers.default_pool_size()
    monkeypatch.delenv(workers.WORKERS_ENV)
    assert workers.default_pool_size() == min(4, os.cpu_count() or 1)
