"""The verdict on one response: in the caller for small single-box responses, else in a reward worker process.

`quick_verdict(solution, ground_truth)` runs in the caller's process, and only on inputs whose cost is bounded
by their size: a response of at most `QUICK_MAX_RESPONSE_CHARS` characters with exactly one box, of at most
`QUICK_MAX_ANSWER_CHARS` characters, as is the ground truth, and without the phrase "final answer" (math-verify's
final-answer patterns, which the fast path would then run, backtrack quadratically on some texts: 0.4 s at the
size limit). There it is the fast path alone, linear scans of the response plus work on the short answers:
about 20 ms at worst at the limits (adversarial texts, tests/test_reward_verdict.py), well inside
`workers.MARGIN_S`. It saves the round trip to a worker (~0.1 ms) on the most common shape of response. The
verifier's import (about 1 s) happens in a background thread, not in a call: until it is done, the workers decide.

`judge(solution, ground_truth)` is what `compute_score` runs in a killable worker (`workers`) for everything else,
so that no input, however long or pathological, can hold the caller longer than its timeout. In order:

  1. `fast_path.fast_verdict`: math-verify's verdict without sympy where it is provably the same (microseconds);
  2. the box-only cache: verdicts that depend only on (ground truth, box content), see `symbolic`;
  3. `symbolic.math_verify_verdict`: math-verify itself.

Any exception on the way is caught and becomes the verdict "error: <type>" with score 0.0 (math-verify swallows
most of its own errors; this is the last resort). A fast path that raises defers to math-verify.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from lambda_grpo.reward.extraction import normalized_answer, single_box_content
from lambda_grpo.reward.fast_path import fast_verdict
from lambda_grpo.reward.logs import shorten_long_log_messages
from lambda_grpo.reward.symbolic import SymbolicResult, math_verify_verdict

QUICK_MAX_RESPONSE_CHARS = 16_384
"""Longest response `quick_verdict` considers (about 4k tokens)."""

QUICK_MAX_ANSWER_CHARS = 256
"""Longest box content and ground truth `quick_verdict` considers."""

CACHE_ENTRIES = 1 << 16
"""Size of each worker's LRU cache of box-only verdicts, keyed by (ground truth, box content)."""

WORKER_ADDRESS_SPACE_BYTES = 4 << 30
"""Address-space cap of a worker (RLIMIT_AS, 4 GiB; a worker idles at ~70 MB): an expression that makes sympy
build a gigantic number fails with MemoryError inside the worker instead of exhausting the machine's memory."""


@dataclass(frozen=True)
class Verdict:
    """`equal`; math-verify's normalised answer `pred` ("" if none); `reason` (one of `reward.REASONS`, "error"
    with a suffix); `verifier`: "fast" or "math_verify"."""

    equal: bool
    pred: str
    reason: str
    verifier: str


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


verdict_cache = VerdictCache(CACHE_ENTRIES)


def _fast(solution: str, ground_truth: str, box_content: str | None) -> Verdict | None:
    try:
        fast = fast_verdict(solution, ground_truth, box_content=box_content)
    except Exception:  # a bug or an input the rules did not foresee: math-verify decides
        return None
    if fast is None:
        return None
    reason = "no_answer" if fast.rule == "no_answer" else "match" if fast.equal else "mismatch"
    return Verdict(fast.equal, fast.pred, reason, "fast")


def _math_verify(solution: str, ground_truth: str, box_content: str | None) -> Verdict:
    key = None if box_content is None else (ground_truth, box_content)
    result = verdict_cache.get(key) if key is not None else None
    if result is None:
        result = math_verify_verdict(solution, ground_truth, box_content)
        if key is not None and result.box_only:
            verdict_cache.put(key, result)
    return Verdict(result.equal, result.pred, result.outcome, "math_verify")


_verifier_loaded = threading.Event()
_loader_lock = threading.Lock()
_loader: threading.Thread | None = None


def _load_verifier() -> None:
    normalized_answer("0")  # imports math-verify's LaTeX normalisation, latex2sympy and sympy (about 1 s)
    _verifier_loaded.set()


def verifier_loaded() -> bool:
    """True once this process has imported what `quick_verdict` needs; the first call starts importing it in a
    background thread (so that no call waits for the import: until then the workers decide)."""
    global _loader
    if not _verifier_loaded.is_set():
        with _loader_lock:
            if _loader is None:
                _loader = threading.Thread(target=_load_verifier, daemon=True, name="lambda_grpo-reward-import")
                _loader.start()
    return _verifier_loaded.is_set()


def quick_verdict(solution: str, ground_truth: str) -> Verdict | None:
    """The fast path's verdict in this process when the input is within the limits (module docstring) and the
    verifier is imported (`verifier_loaded`), else None."""
    if len(solution) > QUICK_MAX_RESPONSE_CHARS or len(ground_truth) > QUICK_MAX_ANSWER_CHARS:
        return None
    if not verifier_loaded():
        return None
    if solution.count("\\boxed") != 1 or "final answer" in solution.lower():
        return None
    box_content = single_box_content(solution)
    if box_content is None or len(box_content) > QUICK_MAX_ANSWER_CHARS:
        return None
    return _fast(solution, ground_truth, box_content)


def judge(solution: str, ground_truth: str) -> Verdict:
    """The verdict on `solution` against `ground_truth` (module docstring); never raises an Exception."""
    try:
        box_content = single_box_content(solution)
        return _fast(solution, ground_truth, box_content) or _math_verify(solution, ground_truth, box_content)
    except (Exception, MemoryError) as error:
        return Verdict(False, "", f"error: {type(error).__name__}", "math_verify")


def clear_caches() -> None:
    """Forget this worker's cached verdicts and normalised answers (a benchmark's cold start)."""
    verdict_cache.clear()
    normalized_answer.cache_clear()


def prepare_worker() -> None:
    """Run once in each new worker before it serves: cap its memory, shorten long log lines, import math-verify
    (so that the import is not part of the first verdict's time)."""
    import resource

    import math_verify  # noqa: F401

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_ADDRESS_SPACE_BYTES, WORKER_ADDRESS_SPACE_BYTES))
    shorten_long_log_messages()
