"""What a reward worker computes: the fast path first, then cached or fresh math-verify; never an exception."""

import pytest

from lambda_grpo.reward import verdict
from lambda_grpo.reward.verdict import Verdict, judge, quick_verdict


def test_fast_path_then_math_verify():
    assert judge(r"So \boxed{\frac{6}{8}}.", r"\frac{3}{4}") == Verdict(True, r"\frac{6}{8}", "match", "fast")
    assert judge("I cannot solve this.", "3") == Verdict(False, "", "no_answer", "fast")
    assert judge(r"\boxed{x^2+2x+1}", "(x+1)^2") == Verdict(True, "x^2+2x+1", "match", "math_verify")
    assert judge(r"\boxed{４２}", "42") == Verdict(False, "４２", "mismatch", "math_verify")


def test_box_only_verdicts_are_cached(monkeypatch):
    monkeypatch.setattr(verdict, "verdict_cache", verdict.VerdictCache(entries=2))
    first = judge(r"So \boxed{2\sqrt{2}}.", r"\sqrt{8}")
    assert first.verifier == "math_verify" and first.equal
    calls = []
    monkeypatch.setattr(verdict, "math_verify_verdict", lambda *args: calls.append(args))
    assert judge(r"Hence the answer: \boxed{2\sqrt{2}}", r"\sqrt{8}") == first  # same (ground truth, box)
    assert calls == []
    for truth in ("1", "2", "3"):  # evicts the oldest of 2 entries
        verdict.verdict_cache.put((truth, truth), verdict.SymbolicResult(True, truth, "match", box_only=True))
    assert verdict.verdict_cache.get((r"\sqrt{8}", r"2\sqrt{2}")) is None


def test_a_raising_fast_path_defers_to_math_verify(monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("a bug")

    monkeypatch.setattr(verdict, "fast_verdict", broken)
    assert judge(r"\boxed{3}", "3") == Verdict(True, "3", "match", "math_verify")


@pytest.mark.parametrize("error", [RuntimeError("boom"), MemoryError()])
def test_never_raises(monkeypatch, error):
    def broken(*args, **kwargs):
        raise error

    monkeypatch.setattr(verdict, "math_verify_verdict", broken)
    assert judge(r"\boxed{x+1}", "1+x") == Verdict(False, "", f"error: {type(error).__name__}", "math_verify")


@pytest.fixture()
def loaded_verifier():
    """quick_verdict declines until the background import of the verifier is done: wait for it."""
    verdict.verifier_loaded()
    verdict._loader.join(timeout=120)
    assert verdict.verifier_loaded()


@pytest.mark.parametrize(
    "solution, ground_truth",
    [
        (r"So \boxed{\frac{6}{8}}.", r"\frac{3}{4}"),
        ("x " * 8000 + r"\boxed{5}", "6"),
        (r"\boxed{" + "1+" * 50 + "1}", "2"),
    ],
)
def test_quick_verdict_is_the_fast_path_on_small_single_box_responses(solution, ground_truth, loaded_verifier):
    assert quick_verdict(solution, ground_truth) == judge(solution, ground_truth)
    assert quick_verdict(solution, ground_truth).verifier == "fast"


@pytest.mark.parametrize(
    "solution, ground_truth",
    [
        (r"The final answer is $\boxed{3}$.", "3"),  # math-verify's final-answer patterns: left to a worker
        (r"\boxed{3} or \boxed{3}", "3"),
        ("x " * 9000 + r"\boxed{3}", "3"),  # over QUICK_MAX_RESPONSE_CHARS
        (r"\boxed{" + "1" * 300 + "}", "3"),  # a box over QUICK_MAX_ANSWER_CHARS
        (r"\boxed{3}", "3" + " " * 300),
        ("#### 3", "3"),  # no box
        (r"\boxed{x^2+2x+1}", "(x+1)^2"),  # the fast path defers
    ],
)
def test_quick_verdict_leaves_the_rest_to_a_worker(solution, ground_truth, loaded_verifier):
    assert quick_verdict(solution, ground_truth) is None
