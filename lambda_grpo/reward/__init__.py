"""Verifiable math reward for verl: `compute_score`, the default reward of lambda_grpo's configs.

verl loads it as a custom reward function (verl/utils/import_utils.py: a `pkg://` path is imported as a module,
so this package's `compute_score` is found from any working directory, in every Ray worker)::

    reward.custom_reward_function.path=pkg://lambda_grpo.reward
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.timeout_s=5.0      # optional, the default shown

Verdict. The score is 1.0 iff math-verify 0.9.0 (HF's verifier; symbolic and numeric equivalence of LaTeX and
plain expressions) accepts the response with its default settings::

    verify(parse("\\boxed{" + ground_truth + "}"), parse(solution_str))

so extraction follows math-verify's priorities: "final answer is X", `\\boxed{X}` (nested braces), "answer: X",
and then the last LaTeX expression or number in the text (which covers GSM8K's `#### X`). Units, `\\dfrac`,
`a/b`, `x = X`, thousands separators and set/interval notation are handled by math-verify.

Speed. `fast_path` settles the common cases (the extracted answer and the ground truth are integers or fractions,
normalise to the same string, or are numbers/intervals/polynomials with different values) in microseconds, with a
verdict proven equal to math-verify's (`extraction` proves which answer math-verify extracts; the fast path answers
only where math-verify's parse provably neither aborts nor depends on its timeouts, and
`tests/test_reward_agreement.py` fuzzes it against math-verify). Everything else goes to math-verify (`symbolic`),
which parses only the box when that is provably what math-verify would extract, and caches those verdicts by
(ground truth, box content). Plain math-verify and this function agree on every case of
`tests/reward_cases.jsonl`; `benchmarks/reward_throughput.py` measures the speed-up.

Time. A small response with a single box and no "final answer" phrase gets the fast path in this process
(`verdict.quick_verdict`: its cost is bounded by size limits, about 20 ms at worst); every other verdict is
computed in a killable worker process (`verdict.judge` in a `workers.WorkerPool`) while this process waits. A
call returns within `timeout_s` + `workers.MARGIN_S` (0.5 s) of getting a worker slot, whatever the input: the
time to start a worker counts against `timeout_s`. Threads calling
at once beyond the pool's size (`$LAMBDA_GRPO_REWARD_WORKERS`, default min(4, CPU count)) first wait for a slot.

Never raises on model output: malformed, empty, overlong (> `MAX_INPUT_CHARS`) or pathological responses score
0.0, with the reason in the result. A response whose verification is not done within `timeout_s` scores 0.0 with
reason "timeout" (math-verify itself gives up on a parse or a comparison after 5 s and returns False). The
verifier's log lines quote at most a short prefix of the response (`logs`).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from lambda_grpo.reward.verdict import judge, prepare_worker, quick_verdict
from lambda_grpo.reward.workers import Failure, WorkerPool, default_pool_size

DEFAULT_TIMEOUT_S = 5.0
"""Per-call wall-clock limit of the verification (seconds), worker start included; math-verify's own per-step
limit is 5 s."""

MAX_INPUT_CHARS = 1_000_000
"""Longer responses or ground truths are not verified (reason "invalid_input"): about 250k tokens, beyond any
rollout length, and it bounds the time to copy them to a worker."""

VERL_INFRASTRUCTURE_KWARGS = frozenset(
    {"reward_router_address", "reward_model_tokenizer", "sandbox_fusion_url", "concurrent_semaphore", "memory_limit_mb"}
)
"""Keyword arguments some verl reward managers pass to every reward function; accepted and ignored here."""

REASONS = ("match", "mismatch", "no_answer", "timeout", "invalid_input", "error")
"""Values of the result's "reason" (an "error" reason carries a suffix: "error: <what>")."""


_FAILURE_REASONS = {Failure.TIMED_OUT: "timeout", Failure.WORKER_DIED: "error: worker exited"}

_pool: WorkerPool | None = None
_pool_pid: int | None = None
_pool_lock = threading.Lock()


def shared_pool() -> WorkerPool:
    """This process's pool of `verdict.judge` workers (a forked child gets a fresh one: pipes must not be shared
    across processes)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool, _pool_pid = WorkerPool(default_pool_size(), prepare=prepare_worker), os.getpid()
        return _pool


def _result(equal: bool, pred: str, reason: str, verifier: str) -> dict[str, Any]:
    score = 1.0 if equal else 0.0
    return {"score": score, "acc": score, "pred": pred, "reason": reason, "verifier": verifier}


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    **kwargs: Any,
) -> dict[str, Any]:
    """Score one response: 1.0 if its answer is equivalent to `ground_truth` (see module docstring), else 0.0.

    Args:
        data_source: verl's dispatch key; unused (every source is scored the same way).
        solution_str: the decoded response.
        ground_truth: the reference answer (LaTeX or plain); an int/float is converted with str().
        extra_info: verl's per-row extra info; unused.
        timeout_s: wall-clock limit of the verification, seconds (> 0), worker start included (module docstring).
        **kwargs: verl infrastructure arguments (`VERL_INFRASTRUCTURE_KWARGS`), ignored. Any other name raises
            TypeError (a misspelt `reward_kwargs` key must not be silently ignored).

    Returns:
        Always the same keys and types, as verl turns them into `reward_extra_info` columns:
        {"score": float, "acc": float (= score; verl's validation reports "acc"), "pred": str (the extracted
        answer, "" if none; verl's majority-vote metrics use it), "reason": str (one of `REASONS`),
        "verifier": str ("fast", "math_verify" or "none")}.

    Raises:
        TypeError / ValueError for a wrong keyword or timeout (configuration errors), and
        `workers.WorkerStartError` if no worker process can start (an installation problem); never because of
        the response.
    """
    unexpected = set(kwargs) - VERL_INFRASTRUCTURE_KWARGS
    if unexpected:
        raise TypeError(f"lambda_grpo.reward.compute_score: unexpected keyword arguments {sorted(unexpected)}")
    if not timeout_s > 0:
        raise ValueError(f"lambda_grpo.reward.compute_score: timeout_s={timeout_s!r}; must be > 0")
    if isinstance(ground_truth, (int, float)) and not isinstance(ground_truth, bool):
        ground_truth = str(ground_truth)
    if not isinstance(solution_str, str) or not isinstance(ground_truth, str) or not ground_truth.strip():
        return _result(False, "", "invalid_input", "none")
    if len(solution_str) > MAX_INPUT_CHARS or len(ground_truth) > MAX_INPUT_CHARS:
        return _result(False, "", "invalid_input", "none")
    verdict = quick_verdict(solution_str, ground_truth)
    if verdict is None:
        verdict = shared_pool().call(judge, (solution_str, ground_truth), timeout_s)
    if isinstance(verdict, Failure):
        return _result(False, "", _FAILURE_REASONS[verdict], "none")
    return _result(verdict.equal, verdict.pred, verdict.reason, verdict.verifier)
