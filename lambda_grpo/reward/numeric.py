"""Values of normalised answers, read the way latex2sympy (math-verify's parser) reads them.

`exact_rational`: integers and simple fractions, exactly (latex2sympy reads them as sympy Integer/Rational).

`numeric_value`: the float value of the arithmetic subset of LaTeX below.

Used only to prove that two answers differ: if their values differ by more than `MISMATCH_MARGIN` (relative) at
some point, math-verify cannot call them equal (see `fast_path`). Anything outside the subset, or any value that
is not a finite real, gives None, and the caller defers to math-verify.

Subset (whitespace ignored), with latex2sympy's precedence and its readings of ambiguous juxtapositions:

    additive := mp (("+" | "-") mp)*
    mp       := unary (("*" | "\\cdot" | "\\times" | "/" | "\\div") unary)*
    unary    := ("+" | "-") unary | product
    product  := power power*            juxtaposition multiplies, and binds tighter than "/":
                                        "1/2\\pi" = 1/(2π); only before \\sqrt, \\pi and a variable ("2\\frac{1}{2}"
                                        is a mixed number 5/2 and "2 3" is 5 for latex2sympy, so those are rejected,
                                        as are two adjacent variables, "xy", which may be one symbol)
    power    := atom ("^" (NUMBER | "{" additive "}"))?        "2^10" = 1024, as latex2sympy reads it
    atom     := NUMBER | VARIABLE | "\\pi" | "(" additive ")" | "\\frac{" additive "}{" additive "}"
              | "\\sqrt{" additive "}" | "\\sqrt[" additive "]{" additive "}"
    NUMBER   := digits with optional ",ddd" thousands groups and an optional ".digits" decimal part
    VARIABLE := one lowercase letter other than e and i (Euler's number and the imaginary unit for latex2sympy),
                allowed only when the caller gives its value, and not followed by "(" (a function call) or a digit

Braces only delimit arguments ("{2}" alone is a set for latex2sympy); `\\dfrac`, `\\left(` and the like are gone
after math-verify's normalisation, which the caller applies first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from fractions import Fraction

MISMATCH_MARGIN = 1e-5
"""Two values differ provably if |a − b| > MISMATCH_MARGIN · max(1, |a|, |b|): far beyond float error, and beyond
math-verify's rounding of floats to 6 decimals."""

MAX_LENGTH = 200
"""Longer answers are not evaluated (bounds the recursion and the work)."""

VARIABLES = "abcdfghjklmnopqrstuvwxyz"
"""The letters read as variables (not e or i)."""

_VARIABLE_SET = frozenset(VARIABLES)

SAMPLE_POINTS = tuple(
    {variable: 0.5 + 0.0731 * index + 0.1739 * round_ for index, variable in enumerate(VARIABLES)}
    for round_ in range(2)
)
"""Two assignments of distinct positive values to the variables, at which answers are compared numerically."""

_INTEGER = re.compile(r"-?\d{1,3}(?:,\d{3}){1,133}|-?\d{1,400}", re.ASCII)
_LATEX_FRACTION = re.compile(r"(-?)\\frac\{(-?\d{1,400})\}\{(-?\d{1,400})\}", re.ASCII)
_SLASH_FRACTION = re.compile(r"(-?\d{1,400})/(\d{1,400})", re.ASCII)

_TOKEN = re.compile(
    r"\s*(\d+(?:,\d{3})*(?:\.\d+)?|\\frac|\\sqrt|\\pi|\\cdot|\\times|\\div|[-+*/^(){}\[\]]"
    r"|[" + VARIABLES + r"](?![a-zA-Z]))",
    re.ASCII,
)
_LONE_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?", re.ASCII)
_MAX_EXPONENT = 1000.0


def exact_rational(answer: str) -> Fraction | None:
    """The value of a normalised answer if it is an integer or a simple fraction, else None.

    Accepted (after stripping outer whitespace): `-?d+`, `-?d,ddd,ddd` (thousands separators, which latex2sympy
    reads as one number), `-?\\frac{-?d+}{-?d+}` and `-?d+/d+`, with at most 400 digits per number; d is an ASCII
    digit (latex2sympy reads no other). A zero denominator gives None.
    """
    answer = answer.strip()
    if _INTEGER.fullmatch(answer):
        return Fraction(int(answer.replace(",", "")))
    if match := _LATEX_FRACTION.fullmatch(answer):
        sign, numerator, denominator = match.groups()
    elif match := _SLASH_FRACTION.fullmatch(answer):
        sign, (numerator, denominator) = "", match.groups()
    else:
        return None
    if int(denominator) == 0:
        return None
    value = Fraction(int(numerator), int(denominator))
    return -value if sign else value


class _Reject(Exception):
    """The input is outside the subset, or its value is not a finite real."""


def _tokens(latex: str) -> list[str]:
    tokens, position = [], 0
    stripped = latex.rstrip()
    while position < len(stripped):
        match = _TOKEN.match(stripped, position)
        if match is None:
            raise _Reject
        tokens.append(match.group(1))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[str], point: Mapping[str, float]) -> None:
        self.tokens = tokens
        self.position = 0
        self.point = point
        self.after_variable = False

    def peek(self) -> str | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise _Reject
        self.position += 1
        return token

    def additive(self) -> float:
        value = self.mp()
        while self.peek() in ("+", "-"):
            value = value + self.mp() if self.take() == "+" else value - self.mp()
        return value

    def mp(self) -> float:
        value = self.unary()
        while self.peek() in ("*", "\\cdot", "\\times", "/", "\\div"):
            operator, right = self.take(), self.unary()
            if operator in ("/", "\\div"):
                if right == 0:
                    raise _Reject
                value = value / right
            else:
                value = value * right
        return value

    def unary(self) -> float:
        if self.peek() in ("+", "-"):
            return self.unary() if self.take() == "+" else -self.unary()
        value = self.power()
        while (token := self.peek()) in ("\\sqrt", "\\pi") or token in _VARIABLE_SET:
            if token in _VARIABLE_SET and self.after_variable:
                raise _Reject
            value = value * self.power()
        return value

    def power(self) -> float:
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take()
        if self.peek() == "{":
            self.take()
            exponent = self.additive()
            self.take("}")
        else:
            exponent = self.number()
        if abs(exponent) > _MAX_EXPONENT or (base < 0 and exponent != int(exponent)) or (base == 0 and exponent < 0):
            raise _Reject
        return base**exponent

    def number(self) -> float:
        token = self.take()
        if not token[0].isdigit():
            raise _Reject
        return float(token.replace(",", ""))

    def braced(self) -> float:
        self.take("{")
        value = self.additive()
        self.take("}")
        return value

    def atom(self) -> float:
        token = self.peek()
        if token is None:
            raise _Reject
        self.after_variable = False
        if token[0].isdigit():
            return self.number()
        self.take()
        if token in _VARIABLE_SET:
            following = self.peek()
            if token not in self.point or following == "(" or (following is not None and following[0].isdigit()):
                raise _Reject
            self.after_variable = True
            return self.point[token]
        if token == "\\pi":
            return math.pi
        if token == "(":
            value = self.additive()
            self.take(")")
            return value
        if token == "\\frac":
            numerator, denominator = self.braced(), self.braced()
            if denominator == 0:
                raise _Reject
            return numerator / denominator
        if token == "\\sqrt":
            degree = 2.0
            if self.peek() == "[":
                self.take()
                degree = self.additive()
                self.take("]")
            radicand = self.braced()
            if radicand < 0 or degree == 0:
                raise _Reject
            return radicand ** (1.0 / degree)
        raise _Reject


def numeric_value(latex: str, point: Mapping[str, float] | None = None) -> float | None:
    """The value of `latex` if it is in the subset (module docstring) and a finite real, else None.

    `point` gives the variables' values (a variable without one, or any variable when None, gives None). A comma
    is accepted only in a lone number ("1,234"): elsewhere it may separate the items of a tuple or set.
    """
    if len(latex) > MAX_LENGTH or ("," in latex and not _LONE_NUMBER.fullmatch(latex.strip())):
        return None
    try:
        parser = _Parser(_tokens(latex), point or {})
        value = parser.additive()
        if parser.peek() is not None:
            return None
    except (_Reject, OverflowError, ZeroDivisionError, ValueError):
        return None
    return value if isinstance(value, float) and math.isfinite(value) else None


def is_arithmetic(answer: str) -> bool:
    """True if `answer` is an exact rational or in the subset (variables allowed): latex2sympy certainly parses it."""
    return exact_rational(answer) is not None or numeric_value(answer, SAMPLE_POINTS[0]) is not None


def provably_different(a: float, b: float) -> bool:
    """|a − b| > MISMATCH_MARGIN · max(1, |a|, |b|)."""
    return abs(a - b) > MISMATCH_MARGIN * max(1.0, abs(a), abs(b))
