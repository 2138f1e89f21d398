"""Declared field mapping of every supported dataset: where the problem and the reference answer live in a row.

Each `DatasetSpec` names the fields its problem may be in (the first present and non-empty wins: published
copies of one benchmark name them differently), how its ground truth is read, and which other fields travel
into `extra_info.metadata`. The mappings follow the row layouts of the common public copies:

  training   math_train     MATH train split (hendrycks; DigitalLearningGmbH/MATH-lighteval): problem, solution
                            with the answer in the last \\boxed{}
             gsm8k_train    GSM8K train (openai/gsm8k, config main): question, answer ending "#### <number>"
             deepscaler     DeepScaleR-style jsonl (agentica-org/DeepScaleR-Preview-Dataset): problem, answer
  evaluation math500        MATH500 (HuggingFaceH4/MATH-500): problem, answer
             aime24         AIME 2024 (HuggingFaceH4/aime_2024; Qwen2.5-Math's data/aime24): problem, answer
             aime25         AIME 2025 (30 problems; copies use problem/question and answer)
             amc23          AMC 2023 (40 problems; Qwen2.5-Math's data/amc23): question, answer
             minerva_math   Minerva Math (Qwen2.5-Math's data/minerva_math): problem, solution with a \\boxed{} answer
             olympiadbench  OlympiadBench OE_TO_maths_en_COMP (Qwen2.5-Math's data/olympiadbench): question,
                            final_answer (a list; its first item, `$` stripped)
             gsm8k_test     GSM8K test (openai/gsm8k, config main): question, answer ending "#### <number>"
             college_math   College Math (Qwen2.5-Math's data/college_math): question, answer (`$` stripped)

The ground-truth readings are those of Qwen2.5-Math's evaluation toolkit (evaluation/parser.py,
`parse_ground_truth`), so scores are comparable with papers that use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lambda_grpo.reward.extraction import last_boxed_content

Row = Mapping[str, Any]


class Unmappable(ValueError):
    """A source row that cannot be mapped; the message is the reason reported for it."""


def _first_present(row: Row, fields: tuple[str, ...]) -> tuple[str, Any]:
    for field in fields:
        value = row.get(field)
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return field, value
    raise Unmappable(f"none of the fields {list(fields)} is present and non-empty (row has {sorted(row)})")


def _as_text(field: str, value: Any) -> str:
    """A scalar answer as text: strings stripped, integral numbers without a decimal point."""
    if isinstance(value, bool):
        raise Unmappable(f"field {field!r} holds a boolean, not an answer")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise Unmappable(f"field {field!r} holds {type(value).__name__} {value!r}, not an answer")


@dataclass(frozen=True)
class AnswerReading:
    """How a dataset's ground truth is read from a row; `describe` is shown by `python -m lambda_grpo.data list`."""

    describe: str
    read: Callable[[Row], str]


def answer_field(*fields: str, strip_dollars: bool = False, first_of_list: bool = False) -> AnswerReading:
    """The ground truth is the value of the first present field (optionally the first item of a list, `$` removed)."""

    def read(row: Row) -> str:
        field, value = _first_present(row, fields)
        if first_of_list:
            if not isinstance(value, (list, tuple)) and not hasattr(value, "tolist"):
                raise Unmappable(f"field {field!r} should hold a list of answers, holds {type(value).__name__}")
            items = list(value.tolist() if hasattr(value, "tolist") else value)
            if not items:
                raise Unmappable(f"field {field!r} holds an empty list")
            value = items[0]
        text = _as_text(field, value)
        if strip_dollars:
            text = text.replace("$", "").strip()
        if not text:
            raise Unmappable(f"field {field!r} is empty once `$` is removed")
        return text

    suffix = (" (first list item)" if first_of_list else "") + (", `$` removed" if strip_dollars else "")
    return AnswerReading(f"field {' | '.join(fields)}{suffix}", read)


def answer_in_last_box(*fields: str) -> AnswerReading:
    """The ground truth is the content of the last \\boxed{} of a worked solution."""

    def read(row: Row) -> str:
        field, value = _first_present(row, fields)
        content = last_boxed_content(_as_text(field, value))
        if content is None or not content.strip():
            raise Unmappable(f"field {field!r} has no complete, non-empty \\boxed{{...}}")
        return content.strip()

    return AnswerReading(f"last \\boxed{{}} of field {' | '.join(fields)}", read)


def answer_after_hashes(*fields: str) -> AnswerReading:
    """GSM8K: the ground truth follows the last "####" of the solution; thousands separators removed."""

    def read(row: Row) -> str:
        field, value = _first_present(row, fields)
        text = _as_text(field, value)
        if "####" not in text:
            raise Unmappable(f"field {field!r} has no '####' answer marker")
        answer = text.rsplit("####", 1)[1].strip().replace(",", "")
        if not answer:
            raise Unmappable(f"field {field!r} has nothing after '####'")
        return answer

    return AnswerReading(f"text after the last #### of field {' | '.join(fields)}, commas removed", read)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset: its name (also the rows' `data_source`), role, split label, fields and known hub copy."""

    name: str
    role: str  # "train" or "eval"
    split: str  # written to extra_info.split
    problem_fields: tuple[str, ...]
    answer: AnswerReading
    metadata_fields: tuple[str, ...] = ()
    hub_copy: str = ""  # a public `datasets` copy known to have this layout: "id[:config]@split"

    def problem(self, row: Row) -> str:
        field, value = _first_present(row, self.problem_fields)
        if not isinstance(value, str):
            raise Unmappable(f"problem field {field!r} holds {type(value).__name__}, not text")
        return value.strip()


_PROBLEM = ("problem", "question", "Question", "input")

_TRAIN_SPECS = (
    DatasetSpec(
        name="math_train",
        role="train",
        split="train",
        problem_fields=_PROBLEM,
        answer=answer_in_last_box("solution"),
        metadata_fields=("level", "type"),
        hub_copy="DigitalLearningGmbH/MATH-lighteval@train",
    ),
    DatasetSpec(
        name="gsm8k_train",
        role="train",
        split="train",
        problem_fields=("question",),
        answer=answer_after_hashes("answer"),
        hub_copy="openai/gsm8k:main@train",
    ),
    DatasetSpec(
        name="deepscaler",
        role="train",
        split="train",
        problem_fields=_PROBLEM,
        answer=answer_field("answer"),
        hub_copy="agentica-org/DeepScaleR-Preview-Dataset@train",
    ),
)
_EVAL_SPECS = (
    DatasetSpec(
        name="math500",
        role="eval",
        split="test",
        problem_fields=_PROBLEM,
        answer=answer_field("answer"),
        metadata_fields=("subject", "level", "unique_id"),
        hub_copy="HuggingFaceH4/MATH-500@test",
    ),
    DatasetSpec(
        name="aime24",
        role="eval",
        split="test",
        problem_fields=_PROBLEM,
        answer=answer_field("answer"),
        metadata_fields=("id", "url"),
        hub_copy="HuggingFaceH4/aime_2024@train",
    ),
    DatasetSpec(
        name="aime25",
        role="eval",
        split="test",
        problem_fields=_PROBLEM,
        answer=answer_field("answer"),
        metadata_fields=("id",),
    ),
    DatasetSpec(
        name="amc23",
        role="eval",
        split="test",
        problem_fields=_PROBLEM,
        answer=answer_field("answer"),
        metadata_fields=("id", "url"),
    ),
    DatasetSpec(
        name="minerva_math",
        role="eval",
        split="test",
        problem_fields=_PROBLEM,
        answer=answer_in_last_box("solution"),
        metadata_fields=("type", "idx"),
    ),
    DatasetSpec(
        name="olympiadbench",
        role="eval",
        split="test",
        problem_fields=_PROBLEM,
        answer=answer_field("final_answer", strip_dollars=True, first_of_list=True),
        metadata_fields=("id", "subfield", "answer_type"),
    ),
    DatasetSpec(
        name="gsm8k_test",
        role="eval",
        split="test",
        problem_fields=("question",),
        answer=answer_after_hashes("answer"),
        hub_copy="openai/gsm8k:main@test",
    ),
    DatasetSpec(
        name="college_math",
        role="eval",
        split="test",
        problem_fields=_PROBLEM,
        answer=answer_field("answer", strip_dollars=True),
        metadata_fields=("data_topic",),
    ),
)
SPECS: dict[str, DatasetSpec] = {spec.name: spec for spec in (*_TRAIN_SPECS, *_EVAL_SPECS)}


EVAL_SUITE: tuple[tuple[str, str], ...] = (
    ("math500", "MATH500"),
    ("aime24", "AIME24"),
    ("aime25", "AIME25"),
    ("amc23", "AMC23"),
    ("minerva_math", "Minerva"),
    ("olympiadbench", "OlympiadBench"),
    ("gsm8k_test", "GSM8K"),
    ("college_math", "College Math"),
)
"""The 8 evaluation benchmarks in Table 1's column order: (dataset name = data_source, column title)."""


def spec_for(name: str) -> DatasetSpec:
    """The spec called `name`; ValueError listing the known names otherwise."""
    try:
        return SPECS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(SPECS)}") from None
