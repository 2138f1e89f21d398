"""math-verify's verdict in this process: outcomes, and the box-only shortcut that keeps the verdict."""

from lambda_grpo.reward.symbolic import SymbolicResult, math_verify_verdict


def test_math_verify_verdict_outcomes():
    assert math_verify_verdict(r"So \boxed{\frac{1}{2}}", "0.5") == SymbolicResult(True, r"\frac{1}{2}", "match")
    assert math_verify_verdict(r"So \boxed{3}", "4") == SymbolicResult(False, "3", "mismatch")
    assert math_verify_verdict("no digits here", "4") == SymbolicResult(False, "", "no_answer")


def test_box_only_shortcut_keeps_the_verdict():
    solution = r"First $x = 2$, so the answer is \boxed{x^2+2x+1}."
    shortcut = math_verify_verdict(solution, "(x+1)^2", box_content="x^2+2x+1")
    assert shortcut == SymbolicResult(True, "x^2+2x+1", "match", box_only=True)
    assert math_verify_verdict(solution, "(x+1)^2").equal
    # A box that does not parse: the whole response is parsed, as math-verify does.
    unparsable = r"We get $5$. \boxed{\frac{}{}}"
    fallback = math_verify_verdict(unparsable, "5", box_content=r"\frac{}{}")
    assert not fallback.box_only and fallback.equal == math_verify_verdict(unparsable, "5").equal
