"""Each dataset's declared field mapping, on a row in the layout of its public copies, and its refusals."""

import re

import pytest

from lambda_grpo.data.specs import EVAL_SUITE, SPECS, Unmappable, spec_for

# name -> (a row as the public copies lay it out, expected problem, expected ground truth)
LAYOUTS = {
    "math_train": (
        {"problem": "What is $1+1$?", "solution": r"Add: $1+1=\boxed{2}$.", "level": "Level 1", "type": "Algebra"},
        "What is $1+1$?",
        "2",
    ),
    "gsm8k_train": (
        {"question": "Tom has 1,000 apples and buys 200 more. How many?", "answer": "1000+200=1200\n#### 1,200"},
        "Tom has 1,000 apples and buys 200 more. How many?",
        "1200",
    ),
    "deepscaler": ({"problem": "Find $x$.", "answer": r"\frac{1}{2}", "solution": "..."}, "Find $x$.", r"\frac{1}{2}"),
    "math500": (
        {"problem": "Compute $\\sqrt{4}$.", "solution": "...", "answer": "2", "subject": "Algebra", "level": 1},
        "Compute $\\sqrt{4}$.",
        "2",
    ),
    "aime24": ({"id": 60, "problem": "Find the remainder.", "answer": 204}, "Find the remainder.", "204"),
    "aime25": ({"question": "  How many pairs?  ", "answer": "70"}, "How many pairs?", "70"),
    "amc23": ({"id": 0, "question": "What is the sum?", "answer": 27.0}, "What is the sum?", "27"),
    "minerva_math": (
        {"problem": "Find the mass.", "solution": r"So $m = \boxed{3 \times 10^{5}}$ kg.", "type": "Physics"},
        "Find the mass.",
        r"3 \times 10^{5}",
    ),
    "olympiadbench": (
        {"id": 1606, "question": "Find all $n$.", "final_answer": ["$\\frac{1}{2}$"], "subfield": "Algebra"},
        "Find all $n$.",
        r"\frac{1}{2}",
    ),
    "gsm8k_test": ({"question": "How many eggs?", "answer": "16-3-4=9\n#### 9"}, "How many eggs?", "9"),
    "college_math": (
        {"question": "Evaluate the integral.", "answer": "$\\frac{\\pi}{4}$", "data_topic": "calculus"},
        "Evaluate the integral.",
        r"\frac{\pi}{4}",
    ),
}


def test_every_dataset_has_a_layout_fixture_and_the_suite_is_the_eight_benchmarks():
    assert set(LAYOUTS) == set(SPECS)
    assert [name for name, _ in EVAL_SUITE] == [name for name, spec in SPECS.items() if spec.role == "eval"]
    assert len(EVAL_SUITE) == 8


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_mapping(name):
    row, problem, answer = LAYOUTS[name]
    spec = spec_for(name)
    assert spec.problem(row) == problem
    assert spec.answer.read(row) == answer


@pytest.mark.parametrize(
    "name, row, reason",
    [
        ("math500", {"answer": "2"}, "none of the fields"),
        ("math500", {"problem": "   ", "answer": "2"}, "none of the fields"),
        ("math500", {"problem": "P", "answer": ""}, "none of the fields ['answer']"),
        ("math500", {"problem": "P", "answer": True}, "boolean"),
        ("math500", {"problem": "P", "answer": {"value": 2}}, "not an answer"),
        ("math_train", {"problem": "P", "solution": "no box here"}, "no complete, non-empty \\boxed"),
        ("math_train", {"problem": "P", "solution": r"\boxed{2"}, "no complete"),
        ("gsm8k_test", {"question": "Q", "answer": "just 9"}, "no '####'"),
        ("gsm8k_test", {"question": "Q", "answer": "9 ####  "}, "nothing after"),
        ("olympiadbench", {"question": "Q", "final_answer": []}, "empty list"),
        ("olympiadbench", {"question": "Q", "final_answer": "$2$"}, "should hold a list"),
        ("college_math", {"question": "Q", "answer": "$$"}, "empty once"),
        ("aime24", {"problem": 12, "answer": "1"}, "not text"),
    ],
)
def test_unmappable_rows_say_why(name, row, reason):
    spec = spec_for(name)
    with pytest.raises(Unmappable, match=re.escape(reason)):
        spec.problem(row)
        spec.answer.read(row)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown dataset 'math'.*math500"):
        spec_for("math")
