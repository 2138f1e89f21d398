"""Prepare training and evaluation sets: read, map, check overlap, optionally decontaminate, write, report.

Outputs in `out_dir` (each written atomically; the same inputs give byte-identical files):
    <name>.parquet          one file per dataset, rows in source order (verl's schema, see `rows`): the
                            evaluation reads these
    train.parquet           the training sets concatenated in the order given (data.train_files)
    val.parquet             the evaluation sets concatenated in the order given (data.val_files: verl reports
                            validation accuracy per data_source, i.e. per benchmark)
    prepare_report.json     per dataset: source, rows read/written, every rejected row (source index, reason);
                            every train/eval overlap (rows named by source index); rows dropped by decontamination
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lambda_grpo.data.overlap import Overlap, find_overlaps, overlapping_train_positions
from lambda_grpo.data.rows import MappedDataset, map_rows, write_parquet
from lambda_grpo.data.sources import read_rows
from lambda_grpo.data.specs import spec_for

REPORT_NAME = "prepare_report.json"
COMBINED = {"train": "train.parquet", "eval": "val.parquet"}
"""File name of the concatenation of all datasets of a role."""


@dataclass
class DatasetReport:
    name: str
    role: str
    source: str
    output: str
    rows_read: int
    rows_written: int
    rejected: list[dict[str, Any]]
    dropped_as_overlap: int = 0


@dataclass
class PrepareReport:
    out_dir: str
    datasets: list[DatasetReport] = field(default_factory=list)
    combined: dict[str, int] = field(default_factory=dict)  # combined file -> rows
    overlaps: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"


def _questions(mapped: MappedDataset) -> list[str]:
    return [row["extra_info"]["question"] for row in mapped.rows]


def _write_text_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)


def _overlap_entry(
    overlap: Overlap, mapped_train: Mapping[str, MappedDataset], mapped_evals: Mapping[str, MappedDataset]
) -> dict[str, Any]:
    """An overlap for the report, rows named by their positions in the source files."""

    def source_indices(mapped: MappedDataset, positions: tuple[int, ...]) -> list[int]:
        return [mapped.rows[position]["extra_info"]["source_index"] for position in positions]

    return {
        "train": overlap.train_name,
        "eval": overlap.eval_name,
        "count": len(overlap.eval_indices),
        "eval_source_indices": source_indices(mapped_evals[overlap.eval_name], overlap.eval_indices),
        "train_source_indices": source_indices(mapped_train[overlap.train_name], overlap.train_indices),
    }


def _load(name: str, source: str, role: str) -> MappedDataset:
    spec = spec_for(name)
    if spec.role != role:
        raise ValueError(f"dataset {name!r} is a {spec.role} set; pass it with --{spec.role}")
    return map_rows(spec, read_rows(source))


def prepare(
    train: Mapping[str, str], evals: Mapping[str, str], out_dir: Path, decontaminate: bool = False
) -> PrepareReport:
    """Prepare the datasets `{name: source}` of `train` and `evals` into `out_dir` (module docstring).

    With `decontaminate`, training rows whose normalised problem appears in any evaluation set are dropped (and
    counted); otherwise overlaps are only reported.
    """
    if not train and not evals:
        raise ValueError("nothing to prepare: pass at least one --train or --eval dataset")
    if set(train) & set(evals):
        raise ValueError(f"datasets passed both as train and eval: {sorted(set(train) & set(evals))}")
    mapped_train = {name: _load(name, source, "train") for name, source in train.items()}
    mapped_evals = {name: _load(name, source, "eval") for name, source in evals.items()}

    eval_questions = {name: _questions(mapped) for name, mapped in mapped_evals.items()}
    overlaps = find_overlaps({name: _questions(mapped) for name, mapped in mapped_train.items()}, eval_questions)
    report_overlaps = [_overlap_entry(overlap, mapped_train, mapped_evals) for overlap in overlaps]
    dropped: dict[str, int] = {}
    if decontaminate:
        for name, mapped in mapped_train.items():
            positions = overlapping_train_positions(_questions(mapped), eval_questions)
            mapped.rows = [row for position, row in enumerate(mapped.rows) if position not in positions]
            dropped[name] = len(positions)

    out_dir.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(out_dir=str(out_dir.resolve()))
    sources = {**train, **evals}
    for name, mapped in {**mapped_train, **mapped_evals}.items():
        output = out_dir / f"{name}.parquet"
        write_parquet(mapped.rows, output)
        report.datasets.append(
            DatasetReport(
                name=name,
                role=mapped.spec.role,
                source=sources[name],
                output=str(output.resolve()),
                rows_read=mapped.source_rows,
                rows_written=len(mapped.rows),
                rejected=[asdict(rejected) for rejected in mapped.rejected],
                dropped_as_overlap=dropped.get(name, 0),
            )
        )
    for role, mapped_sets in (("train", mapped_train), ("eval", mapped_evals)):
        if mapped_sets:
            rows = [row for mapped in mapped_sets.values() for row in mapped.rows]
            write_parquet(rows, out_dir / COMBINED[role])
            report.combined[COMBINED[role]] = len(rows)
    report.overlaps = report_overlaps
    _write_text_atomically(out_dir / REPORT_NAME, report.to_json())
    return report
