"""The fast path agrees with math-verify on every input it answers: generated inputs, and the classes they found.

Two seeded generators build (response, ground truth) pairs: `structured_case` writes answers in the forms math
datasets use (integers, decimals, fractions, radicals, π, intervals, polynomials, equations, sets, percentages,
units, thousands separators, scientific notation, factorials, leading zeros), sometimes with one character
inserted (a Unicode digit, a bracket, a sign, ...), inside the phrasings models close with; `random_case` strings
together numbers, LaTeX atoms and punctuation at random. Wherever `fast_verdict` answers, math-verify (in this
process, its own defaults) must give the same verdict, and `fast_verdict` must never raise.

    LAMBDA_GRPO_FUZZ_CASES=200000 pytest tests/test_reward_agreement.py     # a longer search (default 500 each)
"""

import os
import random

import pytest

from lambda_grpo.reward.fast_path import fast_verdict
from lambda_grpo.reward.symbolic import math_verify_verdict

FUZZ_CASES = int(os.environ.get("LAMBDA_GRPO_FUZZ_CASES", "500"))

UNICODE_DIGITS = ["４", "２", "٣", "۵", "߁", "१", "𝟙"]
"""Decimal digits outside ASCII: Python's int() and regex \\d accept them, sympy does not."""
OTHER_NUMERALS = ["²", "³", "½", "①"]
LATEX_ATOMS = [
    "x", "y", "n", "e", "i", r"\pi", r"\infty", r"\sqrt{2}", r"\sqrt[3]{8}", r"\frac{1}{2}", r"\dfrac{3}{4}",
    r"\tfrac12", r"\%", "%", r"\text{ cm}", r"\$", r"^\circ", r"\,", r"\!", r"\left(", r"\right)", r"\cdot",
    r"\times", r"\div", "e^{2}", r"\ln 2", r"\sin x", r"\mathrm{m}", r"\{", r"\}", r"\le", r"\pm", r"\overline{3}",
    r"\dots", r"\neq", r"\cup", r"\mathbb{R}", r"\text{and}", " and ", " or ", ";", ":", "!", "_", r"\to",
    r"\binom{5}{2}", r"\vec{v}", r"\boxed{", "}", "{", "$", "\\\\", "&", "1E-2867951", r"10^{10^{10}}", "100!",
    "1e99999", r"\binom{1000}{500}",
]  # fmt: skip
PUNCTUATION = list("+-*/^=,.()[]{} |<>")
INSERTIONS = UNICODE_DIGITS + OTHER_NUMERALS + list("{}()[]$\\ ,.-=^%!") + ["  ", r"\!", r"\left", r"\right"]
CONTEXTS = [
    r"So \boxed{%s}.", r"Therefore, the final answer is $\boxed{%s}$. I hope it is correct.", r"\[\boxed{%s}\]",
    "The answer is %s", "#### %s", "answer: %s", "The final answer is %s.", "$%s$", "so $x = %s$.",
    r"Thus \boxed{%s} percent.", r"The final answer is $\boxed{%s}$ and not 3.", r"We find 12 and 7. \boxed{%s}",
    "Final answer: %s", r"\fbox{%s}", r"$\boxed{%s}$ or $\boxed{3}$", "In total 5 apples.\n#### %s",
    "The value is $%s$, so the answer is 4.", "We get %s and so on.", "Hence %s", "%s",
]  # fmt: skip


def structured_answer(rng: random.Random) -> str:
    a, b, c = rng.randint(-20, 120), rng.randint(1, 60), rng.randint(2, 9)
    forms = [
        str(a), f"{a}.0", f"{a}.5", f"{a / b:.4f}", f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}",
        f"-\\frac{{{b}}}{{{c}}}", f"\\frac{{-{b}}}{{{c}}}", f"{c}\\sqrt{{{b}}}", f"\\sqrt{{{b}}}",
        f"\\frac{{\\sqrt{{{b}}}}}{{{c}}}", f"{b}\\pi", f"\\frac{{{b}\\pi}}{{{c}}}", f"({a}, {a + b}]",
        f"[{a},{a + b})", f"(-\\infty, {a}]", f"({a}, \\infty)", f"x^2 + {b}x + {c}", f"{c}x - {b}", f"x = {a}",
        f"y={b}", f"{a}, {b}", f"\\{{{a}, {b}\\}}", f"{a}\\%", f"{a}\\text{{ cm}}", f"{a}^\\circ", f"\\${a}",
        f"{a * 1000:,}", f"{b}^{{{c}}}", f"{b}^{c}", f"\\sqrt[{c}]{{{b}}}", f"{b}e{c}", f"{b}!", f"0{b}", f"-0{b}",
        f"{b} \\cdot {c}", f"{b}\\times{c}", f"{b}\\div{c}", f"\\left({a}, {b}\\right)", f"{b}\\ln {c}",
        f"e^{{{c}}}", f"{b}i", f"\\frac{{{b}}}{{0}}", f"\\frac{{{b}}}{{{c}}}x", f"{b}x{c}", f"{a}:{b}",
        f"\\text{{({rng.choice('ABCDE')})}}", rng.choice("ABCDE"), f"{b} {c}", f"{b}\\,{c:03d}", f"\\frac{b}{c}",
        f"{a}+{b}i", "9" * rng.randint(390, 410), f"x = {a:,}000",
    ]  # fmt: skip
    answer = rng.choice(forms)
    if rng.random() < 0.15:
        position = rng.randrange(len(answer) + 1)
        answer = answer[:position] + rng.choice(INSERTIONS) + answer[position:]
    return answer


def structured_case(rng: random.Random) -> tuple[str, str]:
    answer = structured_answer(rng)
    truth = answer if rng.random() < 0.3 else structured_answer(rng)
    return rng.choice(CONTEXTS) % answer, truth


def _random_number(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.5:
        return str(rng.choice([0, 1, 2, 3, 5, 7, 10, 12, 42, 100, 1000, 1234, -3, 0.5, 2.5, 1e-3, 1e20]))
    if kind < 0.65:
        return "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 8)))
    if kind < 0.75:
        return rng.choice(["1,234", "12,345,678", "1,23", "1 234", "0.50", "00012", ".5", "5.", "1e5", "1/0", "2^{10}"])
    if kind < 0.85:
        return "".join(rng.choice("0123456789" + "".join(UNICODE_DIGITS + OTHER_NUMERALS)) for _ in range(3))
    return "9" * rng.randint(350, 450)


def _random_expression(rng: random.Random, depth: int = 0) -> str:
    parts = []
    for _ in range(rng.randint(1, 4)):
        draw = rng.random()
        if draw < 0.45:
            parts.append(_random_number(rng))
        elif draw < 0.75:
            parts.append(rng.choice(LATEX_ATOMS))
        elif draw < 0.9 or depth >= 2:
            parts.append(rng.choice(PUNCTUATION))
        else:
            wrap = rng.choice([r"\frac{%s}{%s}", "(%s, %s]", r"\sqrt{%s}%s", "%s = %s", "%s^{%s}", "%s,%s"])
            parts.append(wrap % (_random_expression(rng, depth + 1), _random_expression(rng, depth + 1)))
    return rng.choice(["", " "]).join(parts)


def random_case(rng: random.Random) -> tuple[str, str]:
    answer = _random_expression(rng)
    truth = answer if rng.random() < 0.25 else _random_expression(rng) if rng.random() < 0.5 else _random_number(rng)
    return rng.choice(CONTEXTS) % answer, truth


def _disagreement(solution: str, ground_truth: str) -> str | None:
    """"deferred" if the fast path defers, None if it agrees with math-verify, else what differs."""
    try:
        fast = fast_verdict(solution, ground_truth)
    except Exception as error:
        return f"fast path raised {type(error).__name__}"
    if fast is None:
        return "deferred"
    expected = math_verify_verdict(solution, ground_truth).equal
    return None if fast.equal == expected else f"fast path {fast.equal} ({fast.rule}), math-verify {expected}"


@pytest.mark.parametrize("generator", [structured_case, random_case])
def test_fast_path_agrees_with_math_verify_on_generated_inputs(generator):
    rng = random.Random(f"lambda_grpo-{generator.__name__}")
    cases = [generator(rng) for _ in range(FUZZ_CASES)]
    outcomes = [(solution, truth, _disagreement(solution, truth)) for solution, truth in cases]
    assert sum(outcome is None for _, _, outcome in outcomes) > FUZZ_CASES // 5  # the rules are reached
    assert [case for case in outcomes if case[2] not in (None, "deferred")] == []


# The classes the generators found in the fast path of 2026-11 (each one disagreed or raised).
FOUND_CLASSES = [
    (r"\boxed{４２}", "42"),  # Unicode digits: int() reads 42, sympy fails and math-verify compares strings
    ("answer: 1", "१"),  # a Devanagari one as the ground truth
    ("The answer is ٣", "3"),  # sympy's Number() raises on it inside math-verify: its parse returns []
    (r"\[\boxed{0.001 7408816 १509}\]", "0.001 7408816 १509"),  # equal strings, but math-verify's parse aborts
    ("x " + "7" * 4301, "1"),  # more digits than Python's int-string limit: the fast path raised SympifyError
    ("#### -09", "-09"),  # a negative number with a leading zero: sympy's Number() raises, the parse aborts
    (r"Therefore, the final answer is $\boxed{1E-2867951\vec{v}}$.", r"1E-2867951\vec{v}"),  # parse times out
    ("so $x = 1,234$.", "1234"),  # in an equation latex2sympy reads "1,234" as the set {1, 234}
]


@pytest.mark.parametrize("solution, ground_truth", FOUND_CLASSES)
def test_found_classes(solution, ground_truth):
    assert _disagreement(solution, ground_truth) in (None, "deferred")
