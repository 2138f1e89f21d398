"""Cheap verdicts that provably coincide with math-verify's, for the common shapes of math answers.

math-verify (`verify(parse("\\boxed{" + gt + "}"), parse(response))`, 0.9.0 defaults) spends milliseconds per
response on regex extraction and on parsing and comparing with sympy. `fast_verdict` returns its verdict when
that can be *proven* without sympy, and None (defer to math-verify) otherwise.

Extraction (`extraction`): math-verify's answer to the response is provably known as the normalised string
`pred` — from the response's only box, or, for a response without a box, from math-verify's own patterns — or
provably absent (verdict: not equal, reason "no_answer"). The ground truth, parsed from `\\boxed{gt}`, gives its
normalised string `gold` the same way (a ground truth holding `$`, `\\[`, `\\(` or `\\boxed` is left to
math-verify: other patterns could match inside `\\boxed{gt}`). A response or ground truth on which math-verify's
parse may abort and return nothing (`extraction.parse_may_abort`: non-ASCII digits, "-09", integers beyond
Python's int-string limit) is left to math-verify too.

Verdict. math-verify's `verify` accepts if any (gold, prediction) pair compares equal, the pair of the two
normalised strings included. Rules, in order (`answer_verdict`):
  normalized pred == gold, non-empty, and quick to parse -> equal (math-verify's string comparison accepts). Quick:
             in the arithmetic subset, or at most `numeric.MAX_LENGTH` characters without "^", "!", binomials,
             scientific notation or 50-digit numbers; otherwise latex2sympy may outlast math-verify's parse timeout
             (`1E-2867951\\vec{v}`), the parse returns nothing and math-verify says not equal;
  rational   pred and gold are integers or simple fractions (which latex2sympy always parses, so math-verify
             compares two exact rationals, by value) -> equal iff the same rational;
  numeric    both are arithmetic LaTeX, possibly in variables (`numeric.numeric_value`), and at one of
             `numeric.SAMPLE_POINTS` their values differ by a relative 1e-5 -> not equal (every comparison
             math-verify makes between two such expressions — structural, numeric with floats rounded to 6
             decimals, simplify(a − b) == 0 — fails for different values or different functions). A bare variable
             on either side is left to math-verify, which compares symbols by their own rules;
  interval   both are intervals `(a, b]` etc. with arithmetic or infinite endpoints, a < b (latex2sympy reads
             them as sympy Intervals; an infinite end is always open) -> not equal if the open/closed ends or the
             endpoints differ (math-verify compares exactly those).
The strings differ in the later rules (the first rule comes first), so the string pair cannot accept there.
An answer `lhs = rhs` (one equation of two arithmetic sides without commas, which latex2sympy parses as sympy Eq;
in "x = 1,234" it reads the set {1, 234}) is compared by its right-hand side, as math-verify does when the ground
truth is not an equation; a ground truth with "=" is decided only by the normalized rule. Equal values in different forms (`2\\sqrt{2}` vs `\\sqrt{8}`) are left to
math-verify, which may decide either way.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from lambda_grpo.reward.extraction import (
    NOTHING,
    certainly_parses,
    normalized_answer,
    parse_may_abort,
    single_box_content,
    unboxed_answer,
)
from lambda_grpo.reward.numeric import (
    MAX_LENGTH,
    SAMPLE_POINTS,
    VARIABLES,
    exact_rational,
    numeric_value,
    provably_different,
)

_MATH_ENVIRONMENT_MARKERS = ("$", "\\[", "\\(", "\\boxed")
_INTERVAL = re.compile(r"([\[(])([^,]+),([^,]+)([\])])")
_THOUSANDS_SEPARATOR = re.compile(r"\d,\d{3}(?!\d)")
_INFINITIES = {"\\infty": math.inf, "+\\infty": math.inf, "-\\infty": -math.inf}


@dataclass(frozen=True)
class FastVerdict:
    """A verdict reached without sympy: `equal`, math-verify's normalised answer `pred`, and the deciding rule."""

    equal: bool
    pred: str
    rule: str  # "rational", "normalized", "numeric", "interval" or "no_answer"


def _differ_numerically(pred: str, gold: str) -> bool:
    """True if both are arithmetic LaTeX that take provably different values at one of `SAMPLE_POINTS`."""
    if len(pred) == 1 and pred in VARIABLES or len(gold) == 1 and gold in VARIABLES:
        return False
    for point in SAMPLE_POINTS:
        pred_value, gold_value = numeric_value(pred, point), numeric_value(gold, point)
        if pred_value is None or gold_value is None:
            return False
        if provably_different(pred_value, gold_value):
            return True
    return False


def _interval(answer: str) -> tuple[bool, float, float, bool] | None:
    """(left open, left end, right end, right open) of an interval answer that latex2sympy reads as one, else None."""
    match = _INTERVAL.fullmatch(answer)
    if match is None or _THOUSANDS_SEPARATOR.search(answer):  # "(1,234)" is the number 1234 for latex2sympy
        return None
    left_bracket, left, right, right_bracket = match.groups()
    ends = []
    for end in (left.strip(), right.strip()):
        value = _INFINITIES.get(end, numeric_value(end))
        if value is None:
            return None
        ends.append(value)
    finite = not (math.isinf(ends[0]) or math.isinf(ends[1]))
    if not ends[0] < ends[1] or finite and not provably_different(*ends) or math.isinf(ends[0]) and math.isinf(ends[1]):
        return None  # an empty or one-point "interval" is not an Interval for sympy; (-oo, oo) is the real line
    return left_bracket == "(" or math.isinf(ends[0]), ends[0], ends[1], right_bracket == ")" or math.isinf(ends[1])


def _intervals_differ(pred: str, gold: str) -> bool:
    pred_interval, gold_interval = _interval(pred), _interval(gold)
    if pred_interval is None or gold_interval is None:
        return False
    if pred_interval[0] != gold_interval[0] or pred_interval[3] != gold_interval[3]:
        return True
    for pred_end, gold_end in zip(pred_interval[1:3], gold_interval[1:3], strict=True):
        if math.isinf(pred_end) or math.isinf(gold_end):
            if pred_end != gold_end:
                return True
        elif provably_different(pred_end, gold_end):
            return True
    return False


_SLOW_TO_PARSE = re.compile(r"\^|!|\\binom|\\choose|\d[eE]|[eE][-+]?\d|\d{50}")
"""What can make latex2sympy's parse of a short answer slow: powers, factorials, binomials, scientific notation."""


def _quick_to_parse(answer: str) -> bool:
    """True if latex2sympy parses `answer` well within math-verify's timeout (module docstring, normalized rule)."""
    return len(answer) <= MAX_LENGTH and _SLOW_TO_PARSE.search(answer) is None


def answer_verdict(pred: str, gold: str) -> FastVerdict | None:
    """math-verify's verdict on normalised answer strings `pred` and `gold` when sympy is not needed, else None.

    Rules, in order (module docstring): normalized, rational, numeric, interval.
    """
    if pred and pred == gold and (certainly_parses(pred) or _quick_to_parse(pred)):
        return FastVerdict(equal=True, pred=pred, rule="normalized")
    if "=" in gold:
        return None
    if "=" in pred:
        if "," in pred or not certainly_parses(pred):  # "x = 1,234" is Eq(x, {1, 234}) for latex2sympy
            return None
        pred = pred.partition("=")[2].strip()
    pred_rational, gold_rational = exact_rational(pred), exact_rational(gold)
    if pred_rational is not None and gold_rational is not None:
        return FastVerdict(equal=pred_rational == gold_rational, pred=pred, rule="rational")
    if _differ_numerically(pred, gold):
        return FastVerdict(equal=False, pred=pred, rule="numeric")
    if _intervals_differ(pred, gold):
        return FastVerdict(equal=False, pred=pred, rule="interval")
    return None


def fast_verdict(solution: str, ground_truth: str, box_content: str | None = None) -> FastVerdict | None:
    """math-verify's verdict on (`solution`, `ground_truth`) when it can be had without sympy, else None.

    `box_content`: `extraction.single_box_content(solution)`, if the caller has it already.
    """
    if any(marker in ground_truth for marker in _MATH_ENVIRONMENT_MARKERS):
        return None
    if parse_may_abort(solution) or parse_may_abort(ground_truth):
        return None
    if box_content is None:
        box_content = single_box_content(solution)
    if box_content is not None:
        pred = normalized_answer(box_content)
    else:
        pred = unboxed_answer(solution)
        if pred is None:
            return None
        if pred == NOTHING:
            return FastVerdict(equal=False, pred=NOTHING, rule="no_answer")
    return answer_verdict(pred, normalized_answer(ground_truth))
