"""math-verify's verdict on one response, in this process (a reward worker: see `verdict` and `workers`).

The verdict is exactly math-verify's:

    verify(parse("\\boxed{" + ground_truth + "}"), parse(solution))      math-verify 0.9.0 defaults

math-verify bounds its own work with `signal.alarm`, which only works in a process's main thread: the reward
workers run it in theirs, and the worker pool's deadline bounds the whole call.

One shortcut keeps that verdict. When the caller passes the content of the response's only box (see
`extraction.single_box_content`: math-verify provably extracts that box), `\\boxed{content}` is parsed instead of
the whole response; if the content does not parse, the whole response is, as math-verify would. A verdict reached
from the box alone depends only on (ground truth, box content), so the worker caches it (`verdict.VerdictCache`):
in GRPO the G responses to one prompt share the ground truth and often the same final answer.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SymbolicResult:
    """math-verify's verdict; `pred` is its normalised extracted answer ("" if it extracted nothing).

    `outcome` is "match", "mismatch" or "no_answer" (nothing extracted from the solution).
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
