"""The fast verdict rules: each fires where the docstring says, and agrees with math-verify when it fires."""

import pytest

from lambda_grpo.reward.fast_path import answer_verdict, fast_verdict
from lambda_grpo.reward.symbolic import math_verify_verdict

# (response, ground truth, deciding rule): the fast path must fire with that rule and agree with math-verify.
AGREEMENT_CASES = [
    (r"So \boxed{72}.", "72", "normalized"),
    (r"So \boxed{72}.", "27", "rational"),
    (r"\boxed{1,234}", "1234", "rational"),
    (r"So $x = \boxed{5}$ as claimed.", "5", "normalized"),
    (r"\[ \boxed{\frac{6}{8}} \]", r"\frac{3}{4}", "rational"),
    (r"$\boxed{\dfrac{-1}{2}}$", r"-\frac{1}{2}", "rational"),
    (r"\boxed{1/3}", r"\frac{1}{3}", "normalized"),  # normalised to \frac{1}{3}
    (r"\boxed{4}", r"\frac{9}{2}", "rational"),
    (r"\boxed{0.5}", r"\frac{1}{2}", "normalized"),  # math-verify's normalisation turns 0.5 into \frac{1}{2}
    (r"\boxed{" + "9" * 60 + "}", "9" * 59 + "8", "rational"),
    (r"Thus \boxed{12:30}.", "12:30", "normalized"),
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", "normalized"),
    (r"$\boxed{1, 2}$", "1, 2", "normalized"),
    (r"\boxed{\left(1, 2\right]}", "(1, 2]", "normalized"),
    (r"The area is \boxed{3\sqrt{2}} square units.", r"3\sqrt{2}", "normalized"),
    (r"\boxed{\pi}", r"\pi", "normalized"),
    (r"Therefore, the final answer is $\boxed{12}$. I hope it is correct.", "13", "rational"),
    (r"\boxed{3.01}", "3", "numeric"),
    (r"\boxed{\sqrt{2}}", "2", "numeric"),
    (r"\boxed{\frac{\sqrt{48}}{57}}", r"\frac{\sqrt{47}}{57}", "numeric"),
    (r"\boxed{\frac{99\pi}{16}}", r"\frac{16\pi}{99}", "numeric"),
    (r"\boxed{x^2 + 49x + 14}", "x^2 + 14x + 49", "numeric"),
    (r"\boxed{y^2}", "x^2", "numeric"),
    (r"\boxed{x = 5}", "6", "rational"),  # compared by its right-hand side
    (r"\boxed{[35, 128]}", "(35, 128]", "interval"),
    (r"\boxed{(-\infty, 4]}", r"(-\infty, 3]", "interval"),
    (r"\boxed{(0, \infty)}", r"[0, \infty)", "interval"),
    ("Altogether she sold 48+24 = 72 clips.\n#### 72", "72", "normalized"),
    ("Altogether she sold 48+24 = 70 clips.\n#### 70", "72", "rational"),
    (r"This gives $x = \frac{35}{3}$.", r"\frac{35}{3}", "rational"),
    (r"so the area is $3\sqrt{2}$.", r"3\sqrt{3}", "numeric"),
    ("I am not able to solve this problem.", "3", "no_answer"),
]


@pytest.mark.parametrize("solution, ground_truth, rule", AGREEMENT_CASES)
def test_fast_verdict_agrees_with_math_verify(solution, ground_truth, rule):
    fast = fast_verdict(solution, ground_truth)
    assert fast is not None and fast.rule == rule
    assert fast.equal == math_verify_verdict(solution, ground_truth).equal


@pytest.mark.parametrize(
    "solution, ground_truth",
    [
        (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"),  # equal values in different forms: math-verify decides
        (r"\boxed{3.0}", "3"),
        (r"\boxed{x}", "x + 1"),  # a bare variable: math-verify compares symbols its own way
        (r"\boxed{(-\infty, 3]}", r"[-\infty, 3]"),  # the same interval: not provably different
        (r"\boxed{(1,234)}", "(1, 234)"),  # "(1,234)" is the number 1234 for latex2sympy
        (r"\boxed{5}", "$5$"),  # math in the ground truth
        (r"\boxed{x = 5}", "x = 6"),  # an equation as the ground truth
        (r"It is \boxed{1} or \boxed{2}.", "2"),  # extraction not provable
    ],
)
def test_fast_verdict_defers(solution, ground_truth):
    assert fast_verdict(solution, ground_truth) is None


def test_answer_verdict_reports_the_normalised_prediction():
    verdict = answer_verdict("x = 5", "5")
    assert (verdict.equal, verdict.pred, verdict.rule) == (True, "5", "rational")
    assert answer_verdict("", "5") is None
