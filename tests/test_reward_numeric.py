"""Values of normalised answers: exact rationals and the arithmetic subset, checked against latex2sympy's readings."""

import math
from fractions import Fraction

import pytest

from lambda_grpo.reward.numeric import (
    SAMPLE_POINTS,
    exact_rational,
    is_arithmetic,
    numeric_value,
    provably_different,
)


@pytest.mark.parametrize(
    "answer, value",
    [
        ("72", Fraction(72)),
        (" -0 ", Fraction(0)),
        ("007", Fraction(7)),
        ("1,234,567", Fraction(1234567)),
        (r"\frac{6}{8}", Fraction(3, 4)),
        (r"\frac{-1}{2}", Fraction(-1, 2)),
        (r"-\frac{1}{-2}", Fraction(1, 2)),
        ("3/4", Fraction(3, 4)),
        ("1/0", None),
        (r"\frac{1}{0}", None),
        ("1,23", None),
        ("0.5", None),
        (r"\dfrac{1}{2}", None),  # normalised answers only: math-verify has already turned \dfrac into \frac
        ("+5", None),
        ("1" * 401, None),
        ("1" + ",000" * 2000, None),  # 6001 digits: beyond Python's int-string limit, and not read
        ("４２", None),  # int() reads full-width digits; latex2sympy does not
        (r"\frac{१}{2}", None),
    ],
)
def test_exact_rational(answer, value):
    assert exact_rational(answer) == value


# latex2sympy's reading of each of these (including its odd ones) is what numeric_value must reproduce.
AGREEING = [
    "1/2\\pi",  # juxtaposition binds tighter than "/": 1/(2π)
    "2^10",  # an unbraced multi-digit exponent is one number for latex2sympy
    "-2^2",
    "2\\sqrt{3}",
    "\\frac{1}{2}\\pi",
    "\\sqrt[3]{8}",
    "2^{-1}",
    "\\pi^2",
    "3.5",
    "1,234",
    "2\\cdot3",
    "2\\times 3",
    "6\\div 4",
    "\\frac{\\sqrt{3}}{2}",
    "\\sqrt{2}^{2}",
    "2^{3^{2}}",
    "10^{-3}",
    "2\\pi r",
    "\\frac{2}{3}\\sqrt{5}",
    "x^2 + 3x + 2",
    "-x^2 + \\frac{x}{2}",
    "2x^{3} - \\sqrt{y}",
    "\\pi x - 4",
    "(x + 1)^{2}",
]


@pytest.mark.parametrize("latex", AGREEING)
def test_numeric_value_agrees_with_latex2sympy(latex):
    import sympy
    from math_verify.parser import parse_latex_cached

    expression = parse_latex_cached(latex)
    point = SAMPLE_POINTS[1]
    expected = float(expression.subs({symbol: point[symbol.name] for symbol in expression.free_symbols}))
    assert numeric_value(latex, point) == pytest.approx(expected, rel=1e-12)
    assert isinstance(expression, sympy.Expr)


@pytest.mark.parametrize(
    "latex",
    [
        "2\\frac{1}{2}",  # a mixed number (5/2) for latex2sympy
        "2 3",  # 2 + 3 for latex2sympy
        "(2)(3)",
        "2(3+1)",
        "{2}",  # a set
        "(1,2)",  # an interval
        "xy",  # possibly one symbol
        "x y",
        "x(1)",  # a function call
        "x2",
        "e",  # Euler's number
        "i",  # the imaginary unit
        "2^-1",  # latex2sympy rejects it
        "\\sqrt{-1}",
        "(-8)^{1/3}",
        "1/0",
        "10^{400}",
        "12:30",
        "x = 5",
        "\\text{cm}",
        "",
        "1" * 201,
    ],
)
def test_numeric_value_rejects_what_it_cannot_read_like_latex2sympy(latex):
    assert numeric_value(latex, SAMPLE_POINTS[0]) is None


def test_only_ascii_digits_are_numbers():
    assert numeric_value("٣ + 1") is None and numeric_value("3 + 1") == 4.0


def test_variables_need_a_point():
    assert numeric_value("x + 1") is None
    assert numeric_value("x + 1", {"x": 2.0}) == 3.0
    assert numeric_value("x + y", {"x": 2.0}) is None


def test_is_arithmetic_and_provably_different():
    assert is_arithmetic("\\frac{3}{4}") and is_arithmetic("x^2 + 1") and not is_arithmetic("x = 1")
    assert provably_different(1.0, 1.0001) and not provably_different(1.0, 1.000001)
    assert provably_different(1e6, 1e6 + 100) and not provably_different(1e6, 1e6 + 1)
    assert not provably_different(math.pi, math.pi)
