"""Results table laid out like the paper's Table 1: one row per (model size, method), the 8 benchmarks, average.

Columns: Model, Method, MATH500, AIME24, AIME25, AMC23, Minerva, OlympiadBench, GSM8K, College Math, Avg.
Cells are accuracies in % (pass@1 greedy or avg@k, as evaluated) with one decimal; a benchmark a row was not
evaluated on is "–" in Markdown and empty in CSV. Avg. is the mean over the benchmarks the row was evaluated on;
in Markdown a row missing some of the 8 gets "*" on its average and a footnote naming what is missing.
Rows are ordered by model size (Qwen2.5 1.5B, 3B, 7B, then others by name), then method (base, GRPO, DAPO,
Dr. GRPO, λ-GRPO, then others by name).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lambda_grpo.data.specs import EVAL_SUITE

MODEL_SIZES = {"qwen2_5_1_5b": "Qwen2.5-1.5B", "qwen2_5_3b": "Qwen2.5-3B", "qwen2_5_7b": "Qwen2.5-7B"}
METHODS = {"base": "Base", "grpo": "GRPO", "dapo": "DAPO", "dr_grpo": "Dr. GRPO", "lambda_grpo": "λ-GRPO"}
COLUMNS = ("Model", "Method", *(title for _, title in EVAL_SUITE), "Avg.")


@dataclass(frozen=True)
class TableRow:
    model_size: str
    method: str
    accuracies: dict[str, float]  # benchmark name -> accuracy (%)

    @property
    def average(self) -> float | None:
        return sum(self.accuracies.values()) / len(self.accuracies) if self.accuracies else None

    @property
    def missing(self) -> list[str]:
        return [title for name, title in EVAL_SUITE if name not in self.accuracies]


def row_from_results(results: Mapping[str, Any]) -> TableRow:
    """A table row from an evaluation's results.json content (settings: model_size, method)."""
    settings = results["settings"]
    unknown = sorted(set(results["benchmarks"]) - {name for name, _ in EVAL_SUITE})
    if unknown:
        raise ValueError(f"results for benchmarks outside the suite: {unknown}")
    accuracies = {name: float(entry["accuracy"]) for name, entry in results["benchmarks"].items()}
    return TableRow(settings["model_size"], settings["method"], accuracies)


def _sort_key(row: TableRow) -> tuple:
    sizes, methods = list(MODEL_SIZES), list(METHODS)
    size_rank = sizes.index(row.model_size) if row.model_size in sizes else len(sizes)
    method_rank = methods.index(row.method) if row.method in methods else len(methods)
    return size_rank, row.model_size, method_rank, row.method


def ordered(rows: Sequence[TableRow]) -> list[TableRow]:
    """`rows` in table order; ValueError if a (model size, method) pair appears twice."""
    pairs = [(row.model_size, row.method) for row in rows]
    duplicates = sorted({pair for pair in pairs if pairs.count(pair) > 1})
    if duplicates:
        raise ValueError(f"several results for (model size, method) {duplicates}")
    return sorted(rows, key=_sort_key)


def _cells(row: TableRow) -> list[float | None]:
    return [row.accuracies.get(name) for name, _ in EVAL_SUITE] + [row.average]


def markdown(rows: Sequence[TableRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join([" --- "] * 2 + [" ---: "] * (len(COLUMNS) - 2)) + "|"]
    footnotes = []
    for row in ordered(rows):
        cells = ["–" if value is None else f"{value:.1f}" for value in _cells(row)]
        names = [MODEL_SIZES.get(row.model_size, row.model_size), METHODS.get(row.method, row.method)]
        if row.missing and row.average is not None:
            cells[-1] += "*"
            footnotes.append(f"{' '.join(names)} lacks {', '.join(row.missing)}")
        lines.append("| " + " | ".join(names + cells) + " |")
    if footnotes:
        lines += ["", "\\* average over the benchmarks evaluated only: " + "; ".join(footnotes) + "."]
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[TableRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in ordered(rows):
        values = ["" if value is None else f"{value:.1f}" for value in _cells(row)]
        writer.writerow([MODEL_SIZES.get(row.model_size, row.model_size), METHODS.get(row.method, row.method), *values])
    return buffer.getvalue()
