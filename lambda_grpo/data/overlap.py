"""Train/eval overlap by normalised problem text.

normalise(text) = NFKC, lower case, `$` removed, every run of whitespace collapsed to one space, stripped. Two
problems overlap when their normalised texts are identical: this catches verbatim copies and copies that differ
in spacing, case or math delimiters (e.g. MATH500 problems inside MATH's train split), not paraphrases.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_WHITESPACE = re.compile(r"\s+")


def normalize_problem(text: str) -> str:
    """The comparison key of a problem (module docstring)."""
    folded = unicodedata.normalize("NFKC", text).lower().replace("$", "")
    return _WHITESPACE.sub(" ", folded).strip()


@dataclass(frozen=True)
class Overlap:
    """Problems of eval set `eval_name` also in train set `train_name`: eval and train row positions, paired."""

    train_name: str
    eval_name: str
    eval_indices: tuple[int, ...]
    train_indices: tuple[int, ...]


def find_overlaps(train: Mapping[str, Sequence[str]], evals: Mapping[str, Sequence[str]]) -> list[Overlap]:
    """Every non-empty (train set, eval set) overlap, in the mappings' order; indices are positions in the lists."""
    overlaps = []
    for train_name, train_problems in train.items():
        first_position: dict[str, int] = {}
        for position, problem in enumerate(train_problems):
            first_position.setdefault(normalize_problem(problem), position)
        for eval_name, eval_problems in evals.items():
            pairs = [
                (position, first_position[key])
                for position, problem in enumerate(eval_problems)
                if (key := normalize_problem(problem)) in first_position
            ]
            if pairs:
                eval_indices, train_indices = zip(*pairs, strict=True)
                overlaps.append(Overlap(train_name, eval_name, eval_indices, train_indices))
    return overlaps


def overlapping_train_positions(train_problems: Sequence[str], evals: Mapping[str, Sequence[str]]) -> set[int]:
    """Positions of the train problems that appear (normalised) in any eval set."""
    eval_keys = {normalize_problem(problem) for problems in evals.values() for problem in problems}
    return {position for position, problem in enumerate(train_problems) if normalize_problem(problem) in eval_keys}
