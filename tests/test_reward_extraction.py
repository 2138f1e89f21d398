"""Which answer math-verify extracts: the single-box and no-box shortcuts agree with math-verify's own parse."""

import pytest

from lambda_grpo.reward.extraction import (
    NOTHING,
    certainly_parses,
    last_boxed_content,
    normalized_answer,
    parse_may_abort,
    single_box_content,
    unboxed_answer,
)


def _math_verify_strings(text: str) -> list[str]:
    from math_verify import parse

    return [item for item in parse(text) if isinstance(item, str)]


@pytest.mark.parametrize(
    "text, content",
    [
        (r"so \boxed{\frac{1}{2}} .", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{\sqrt{\frac{a}{b}}}", r"\sqrt{\frac{a}{b}}"),
        (r"\boxed{{5}}", "{5}"),
        (r"\boxed{}", ""),
        (r"\boxed{\frac{1}{2}", None),
        ("no box here", None),
    ],
)
def test_last_boxed_content(text, content):
    assert last_boxed_content(text) == content


def test_normalized_answer_is_math_verify_normalisation():
    assert normalized_answer(r"\dfrac{3}{4}") == r"\frac{3}{4}"
    assert normalized_answer(r"5\text{ cm}") == "5"
    assert normalized_answer(r"\left(1, 2\right]") == "(1, 2]"
    assert normalized_answer(" 7 ") == "7"


# The box math-verify extracts from each text is the only box, in any of these surroundings.
SINGLE_BOX_TEXTS = [
    r"So \boxed{72}.",
    r"So $x = \boxed{5}$ as claimed.",
    r"\[ \boxed{\frac{6}{8}} \]",
    r"\( \boxed{-3} \)",
    r"Hence [\boxed{7}] holds.",
    r"The area is \boxed{3\sqrt{2}} square units.",
    r"Therefore, the final answer is $\boxed{12}$. I hope it is correct.",
    r"The final answer is \boxed{\frac{3}{4}}.",
    r"So the final answer is: $x = \boxed{5}$",
    r"Final Answer: \boxed{[1,2)}",
    r"We get $\frac{1}{2}$ first, then \boxed{\frac{2}{3}}, which is $0.67$ approximately.",
]


@pytest.mark.parametrize("text", SINGLE_BOX_TEXTS)
def test_single_box_content_is_what_math_verify_extracts(text):
    content = single_box_content(text)
    assert content is not None
    assert _math_verify_strings(text)[-1] == normalized_answer(content)


@pytest.mark.parametrize(
    "text",
    [
        r"It is \boxed{1} or \boxed{2}.",  # several boxes: math-verify reads them as a set
        r"The final answer is $3$, so \boxed{3}.",  # math-verify's "final answer" match is not the box
        r"The final answer is \boxed{12} because 5 is $x$.",
        r"The final answer is 7. Check: \boxed{7}",
        r"The final answer is $\boxed{12}$ and $5$.",  # math-verify joins both answers into a set
        r"\fbox{2} and \boxed{3}",
        r"So $\boxed{50}$\%.",  # math-verify reads this as 50/100
        r"So $\boxed{50}$ percent",
        r"\boxed{1/2",  # unclosed
        "#### 72",  # no box at all
    ],
)
def test_single_box_content_declines(text):
    assert single_box_content(text) is None


# Texts without a box whose extracted answer is provably known, with math-verify's answer string.
UNBOXED_TEXTS = [
    ("Natalia sold 48/2 = 24 clips in May.\nAltogether she sold 48+24 = 72 clips.\n#### 72", "72"),
    ("Counting carefully.\nAnswer: 17", "17"),
    ("Adding the two parts gives 42", "42"),
    (r"The final answer is $\frac{2}{3}$. I hope it is correct.", r"\frac{2}{3}"),
    (r"so the area is $3\sqrt{2}$.", r"3\sqrt{2}"),
    (r"This gives $x = \frac{35}{3}$.", r"x = \frac{35}{3}"),
    ("It costs 1,234 dollars", "1234"),
    (r"so it is \frac{1}{2}", r"\frac{1}{2}"),
]


@pytest.mark.parametrize("text, answer", UNBOXED_TEXTS)
def test_unboxed_answer_is_what_math_verify_extracts(text, answer):
    assert unboxed_answer(text) == answer
    assert _math_verify_strings(text)[-1] == answer


@pytest.mark.parametrize(
    "text",
    [
        r"So \boxed{3}.",  # has a box: not this shortcut's business
        r"Thus $\gcd(95, 52) = 1$",  # math-verify would have to parse a function call
        r"We find $x \le 3$",
        r"the roots are $1$ and $2$",  # joined answers: a set
        "The rate is 50%",  # a percent
        "so 12 \\times 3 = 36 units, i.e. 6*6",  # a plain expression, parsed with sympy's parse_expr
    ],
)
def test_unboxed_answer_declines(text):
    assert unboxed_answer(text) is None


@pytest.mark.parametrize("text", ["", "I am not able to solve this problem.", "Let's think step by step. First, we"])
def test_unboxed_answer_knows_when_math_verify_extracts_nothing(text):
    assert unboxed_answer(text) == NOTHING
    assert _math_verify_strings(text) == []


def test_certainly_parses():
    assert certainly_parses(r"\frac{1}{2}") and certainly_parses("3x + 7 = 89")
    assert not certainly_parses("a = b = 3") and not certainly_parses(r"\gcd(2, 3)")


@pytest.mark.parametrize(
    "text",
    [r"\boxed{４２}", "answer: १", "x = -09", "#### " + "7" * 4301, "1," + "000," * 1434 + "000", "-007.5 and -01"],
)
def test_parse_may_abort_where_math_verify_returns_nothing(text):
    from math_verify import parse

    assert parse_may_abort(text)
    if not text.startswith("\\boxed"):  # a box that fails to parse makes math-verify read on and abort too
        assert parse(text) == []


@pytest.mark.parametrize(
    "text", ["-0.5 and 0.09", "x - 09", "1 " * 5000, "12, " * 2000, "1,000,000 and 12,345", "x² = 4", "7" * 4300]
)
def test_parse_may_abort_is_false_on_ordinary_text(text):
    assert not parse_may_abort(text)
