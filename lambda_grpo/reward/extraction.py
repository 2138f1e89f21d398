"""Which answer math-verify extracts from a response, decided without sympy where that can be proven.

math-verify's `parse(response)` (0.9.0 defaults: LaTeX and plain-expression targets) extracts by priority groups
[math_verify/parser.py, `lazy_latex_regex`, `lazy_expr_regex`, `extract_target_from_pred`]:

    0    "final answer is X. I hope"
    50   "final answer ... is X"; \\boxed{...} (bare, or inside $...$, \\[...\\], \\(...\\))
    100  "answer: X"
    200  "answer ... X"
    300  any math environment ($...$, \\[...\\], \\(...\\), " [...] ", a bare \\frac{a}{b}) or number/expression

In the first group with any match, it tries the matches from the rightmost end backwards and keeps the first one
that parses; if none parses it moves to the next group. X may be a LaTeX environment (normalised by
`normalize_latex`, then parsed by latex2sympy) or a plain number (`extract_expr`). Several environments joined by
"and"/"or"/"," are read as one set, and a percent sign after one scales it by 1/100.

Two shapes are settled here, returning math-verify's normalised answer string (the string it compares, and the
text latex2sympy parses):

`single_box_content`: the response contains exactly one `\\boxed{` (so every boxed match is that box, and
math-verify normalises a math environment around it down to the box's content); when it says "final answer",
every match of math-verify's "final answer" patterns (run here) has that box inside its answer group with no
second answer joined to it; no percent sign follows the box. Whichever match math-verify tries first, it then
extracts the box: N(content), parsed if it parses (if not, math-verify moves on to the rest of the text).

`unboxed_answer`: the response has no `\\boxed` at all. math-verify's own non-boxed patterns are run here, group
by group; in the first group with matches, the rightmost match must be a single answer (no joined answers, no
percent) that certainly parses (`certainly_parses`: a plain number, LaTeX in the arithmetic subset of `numeric`,
or one equation between two such sides). Then that is what math-verify extracts. No match in any group:
math-verify extracts nothing.
"""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from functools import cache, lru_cache
from itertools import groupby

from lambda_grpo.reward.numeric import is_arithmetic

BOXED = "\\boxed{"
NOTHING = ""
"""`unboxed_answer`'s result when math-verify provably extracts nothing (any extracted answer is non-empty)."""

_PERCENT_WORDS = ("%", "percent", "pct")


def last_boxed_content(text: str) -> str | None:
    """Content of the last `\\boxed{...}` in `text`, braces balanced (nested braces kept); None if unclosed/absent.

    Example: "so \\boxed{\\frac{1}{2}} ." -> "\\frac{1}{2}". Linear in len(text).
    """
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth = 1
    begin = start + len(BOXED)
    for position in range(begin, len(text)):
        char = text[position]
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[begin:position]
    return None


@cache
def _latex_config():
    from math_verify.parser import LatexExtractionConfig

    return LatexExtractionConfig()


@lru_cache(maxsize=1 << 14)
def normalized_answer(latex: str) -> str:
    """N(latex): the string math-verify extracts from `\\boxed{latex}` (its normalize_latex, boxed="last")."""
    from latex2sympy2_extended.latex2sympy2 import normalize_latex

    return normalize_latex(BOXED + latex + "}", replace(_latex_config().normalization_config, boxed="last")).strip()


@cache
def _pattern_groups() -> tuple[tuple[tuple[re.Pattern[str], bool], ...], ...]:
    """math-verify's patterns by priority, each flagged True if LaTeX, in math-verify's order within a group."""
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig, get_extraction_regexes

    regexes = get_extraction_regexes([LatexExtractionConfig(), ExprExtractionConfig()])
    flat = [
        (pattern, isinstance(target, LatexExtractionConfig), priority)
        for patterns, target in regexes
        for pattern, priority in patterns
    ]
    ordered = sorted(flat, key=lambda item: item[2])  # stable, as in extract_target_from_pred
    return tuple(
        tuple((pattern, is_latex) for pattern, is_latex, _ in group)
        for _, group in groupby(ordered, key=lambda item: item[2])
    )


@cache
def _final_answer_patterns() -> tuple[tuple[re.Pattern[str], bool], ...]:
    return tuple(item for group in _pattern_groups() for item in group if "final answer" in item[0].pattern)


@cache
def _unboxed_pattern_groups() -> tuple[tuple[tuple[re.Pattern[str], bool], ...], ...]:
    """The groups without the boxed patterns (which cannot match a text without `\\boxed{`)."""
    groups = (tuple(item for item in group if "boxed" not in item[0].pattern) for group in _pattern_groups())
    return tuple(group for group in groups if group)


def _single_answer_group(match: re.Match[str]) -> str | None:
    """The name of the match's answer group; None if answers are joined to it or a percent sign follows."""
    groups = match.groupdict()
    if any(value is not None for name, value in groups.items() if name.startswith("next") or "percent" in name):
        return None
    return next((name for name, value in groups.items() if name.startswith("first_latex") and value is not None), None)


def _final_answers_hold_box(solution: str, box_start: int, box_end: int) -> bool:
    """True if every "final answer" match of math-verify extracts exactly the box spanning [box_start, box_end)."""
    for pattern, is_latex in _final_answer_patterns():
        for match in pattern.finditer(solution):
            answer = _single_answer_group(match) if is_latex else None
            if answer is None:  # a plain number after "final answer is" cannot contain the box
                return False
            start, end = match.span(answer)
            if start > box_start or end < box_end:
                return False
    return True


def single_box_content(solution: str) -> str | None:
    """The content of the response's only box, when math-verify provably extracts that box (module docstring)."""
    if solution.count("\\boxed") != 1 or "\\fbox" in solution:
        return None
    content = last_boxed_content(solution)
    if content is None:
        return None
    box_start = solution.find(BOXED)
    box_end = box_start + len(BOXED) + len(content) + 1
    if any(word in solution[box_end:].lower() for word in _PERCENT_WORDS):
        return None
    if "final answer" in solution.lower() and not _final_answers_hold_box(solution, box_start, box_end):
        return None
    return content


_NON_ASCII_DIGIT = re.compile(r"[^\D0-9]")
_NEGATIVE_LEADING_ZERO = re.compile(r"-0\d")
_INTEGER_PART = re.compile(r"[0-9]+(?:[ ,][0-9]{3})*")
"""The digits math-verify's plain-number patterns join into one integer (thousands separators " " and ",")."""


@cache
def _long_run(characters: int) -> re.Pattern[str]:
    """A maximal run of digits, spaces and commas longer than `characters` (each run tried once: linear time)."""
    return re.compile(rf"(?<![0-9 ,])[0-9 ,]{{{characters + 1},}}")


def _has_long_integer(text: str, digits: int) -> bool:
    """True if `text` holds an integer of more than `digits` digits, as math-verify's number patterns join them."""
    return any(
        len(integer.group()) - integer.group().count(" ") - integer.group().count(",") > digits
        for run in _long_run(digits).finditer(text)
        for integer in _INTEGER_PART.finditer(run.group())
    )


def parse_may_abort(text: str) -> bool:
    """True if math-verify's parse of `text` may abort and return nothing, whatever it would otherwise extract.

    Its plain-number patterns match `\\d` (any Unicode decimal digit) and `extract_expr` turns the match into
    sympy's Number() outside any try, so that parse raises and returns [] for: a non-ASCII decimal digit
    ("４", "१"); a negative integer with a leading zero ("-09": not a Python literal); a number of more digits than
    Python's int-string limit in its integer part (`sys.get_int_max_str_digits`, thousands separators joined).
    Conservative: True on any occurrence of these anywhere in `text`, whether or not math-verify reaches it.
    """
    if not text.isascii() and _NON_ASCII_DIGIT.search(text):
        return True
    if "-0" in text and _NEGATIVE_LEADING_ZERO.search(text):
        return True
    limit = sys.get_int_max_str_digits()
    return limit > 0 and _has_long_integer(text, limit)


def certainly_parses(answer: str) -> bool:
    """True if latex2sympy certainly parses the normalised `answer`: arithmetic LaTeX (`numeric.is_arithmetic`),
    or one equation `lhs = rhs` of two such sides."""
    lhs, equals, rhs = answer.partition("=")
    if equals:
        return "=" not in rhs and is_arithmetic(lhs) and is_arithmetic(rhs)
    return is_arithmetic(answer)


def _extracted(match: re.Match[str], is_latex: bool) -> str | None:
    """math-verify's normalised answer string from `match` if it certainly parses, else None."""
    if is_latex:
        from latex2sympy2_extended.latex2sympy2 import normalize_latex

        answer_group = _single_answer_group(match)
        if answer_group is None:
            return None
        answer = normalize_latex(match.group(answer_group), _latex_config().normalization_config).strip()
    else:
        from math_verify.parser import extract_expr

        groups = match.groupdict()
        if groups.get("expr") or groups.get("percent"):
            return None
        try:
            _number, answer = extract_expr(match)  # a sympy Number, always; its string is what math-verify compares
        except Exception:  # math-verify's parse aborts here too (see `parse_may_abort`): math-verify decides
            return None
    return answer if answer and certainly_parses(answer) else None


def unboxed_answer(solution: str) -> str | None:
    """For a response without `\\boxed`: math-verify's normalised answer string when provably known (module
    docstring), `NOTHING` if it provably extracts nothing, None if it cannot be known without parsing."""
    if "\\boxed" in solution:
        return None
    for group in _unboxed_pattern_groups():
        matches = [
            (match, match.start(), match.end(), is_latex)
            for pattern, is_latex in group
            for match in pattern.finditer(solution)
        ]
        if matches:
            match, _, _, is_latex = sorted(matches, key=lambda item: (item[2], -item[1]), reverse=True)[0]
            return _extracted(match, is_latex)
    return NOTHING
