"""Map source rows to verl's RL parquet schema, and write them.

One row per problem (verl's `RLHFDataset` reads these columns; `data_source` also keys verl's validation metrics,
`val-core/<data_source>/acc/mean@N`):

    data_source   str    the dataset's name, e.g. "math500"
    prompt        list   [{"role": "user", "content": problem + " " + INSTRUCTION}]   (chat; the template is
                         applied by verl's agent loop / our evaluator)
    ability       str    "math"
    reward_model  struct {"style": "rule", "ground_truth": str}
    extra_info    struct {"split": str, "index": int (row position in this file), "source_index": int (row
                         position in the source), "question": str (the problem), "answer": str (= ground truth),
                         "metadata": str (JSON of the spec's metadata fields)}

The schema is fixed (`SCHEMA`), so files of different datasets concatenate in verl (`data.train_files` lists).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from lambda_grpo.data.specs import DatasetSpec, Unmappable

INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
"""Appended to every problem: verl's MATH instruction; the reward extracts the boxed answer."""

SCHEMA = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", pa.string())])),
        (
            "extra_info",
            pa.struct(
                [
                    ("split", pa.string()),
                    ("index", pa.int64()),
                    ("source_index", pa.int64()),
                    ("question", pa.string()),
                    ("answer", pa.string()),
                    ("metadata", pa.string()),
                ]
            ),
        ),
    ]
)


@dataclass(frozen=True)
class Rejected:
    """A source row that was not mapped: its position in the source and why."""

    source_index: int
    reason: str


@dataclass
class MappedDataset:
    spec: DatasetSpec
    source_rows: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def verl_row(spec: DatasetSpec, source_index: int, problem: str, answer: str, metadata: Mapping[str, Any]) -> dict:
    """One row of `SCHEMA` (extra_info.index is set when the file is written)."""
    return {
        "data_source": spec.name,
        "prompt": [{"role": "user", "content": f"{problem} {INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": {
            "split": spec.split,
            "index": -1,
            "source_index": source_index,
            "question": problem,
            "answer": answer,
            "metadata": json.dumps(dict(metadata), sort_keys=True, ensure_ascii=False, default=str),
        },
    }


def map_rows(spec: DatasetSpec, source_rows: Sequence[Any]) -> MappedDataset:
    """Map every source row with `spec`; rows that cannot be mapped are kept in `rejected` with the reason."""
    mapped = MappedDataset(spec=spec, source_rows=len(source_rows))
    for source_index, row in enumerate(source_rows):
        if not isinstance(row, Mapping):
            mapped.rejected.append(Rejected(source_index, f"row is {type(row).__name__}, not an object"))
            continue
        try:
            problem, answer = spec.problem(row), spec.answer.read(row)
        except Unmappable as error:
            mapped.rejected.append(Rejected(source_index, str(error)))
            continue
        metadata = {name: row[name] for name in spec.metadata_fields if row.get(name) is not None}
        mapped.rows.append(verl_row(spec, source_index, problem, answer, metadata))
    return mapped


def write_parquet(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Write `rows` with `SCHEMA` to `path` (a new file; mode 0o666 minus the umask); sets extra_info.index."""
    indexed = [{**row, "extra_info": {**row["extra_info"], "index": index}} for index, row in enumerate(rows)]
    pq.write_table(pa.Table.from_pylist(indexed, schema=SCHEMA), path)
