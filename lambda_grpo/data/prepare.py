"""Prepare training and evaluation sets: read, map, check overlap, optionally decontaminate, write, report.

Outputs in `out_dir` (the same inputs give byte-identical parquet files):
    <name>.parquet          one file per dataset, rows in source order (verl's schema, see `rows`): the
                            evaluation reads these
    train.parquet           the training sets concatenated in the order given (data.train_files)
    val.parquet             the evaluation sets concatenated in the order given (data.val_files: verl reports
                            validation accuracy per data_source, i.e. per benchmark)
    prepare_report.json     per dataset: source, rows read/written, every rejected row (source index, reason);
                            every train/eval overlap (rows named by source index); rows dropped by decontamination;
                            the files of the previous run that this one removed

One consistent set per run: everything is read, mapped and checked first (a dataset left with no row is an
error, and nothing is written); the files are then written into a staging folder and swapped into `out_dir`
(`outputs.StagedOutputs`), the report last. The previous run's files (those its report lists) that this run does
not write are removed, so a rerun with fewer datasets leaves no stale parquet beside the new report; a failure
before the swap leaves the previous set as it was. Other files in `out_dir` are never touched.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lambda_grpo.data.outputs import StagedOutputs
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
    removed_from_previous_run: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"


def _questions(mapped: MappedDataset) -> list[str]:
    return [row["extra_info"]["question"] for row in mapped.rows]


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


def previous_outputs(out_dir: Path) -> list[str]:
    """The file names the previous run's report in `out_dir` lists (none if there is no readable report)."""
    try:
        previous = json.loads((out_dir / REPORT_NAME).read_text(encoding="utf-8"))
        names = [Path(dataset["output"]).name for dataset in previous["datasets"]] + list(previous["combined"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in names if isinstance(name, str)]


def _check_not_empty(mapped_sets: Mapping[str, MappedDataset], dropped: Mapping[str, int]) -> None:
    """ValueError naming every dataset left without rows, and why (nothing mapped, or all dropped as overlap)."""
    problems = []
    for name, mapped in mapped_sets.items():
        if mapped.rows:
            continue
        if dropped.get(name):
            problems.append(f"{name}: all {dropped[name]} mapped rows overlap an evaluation set (--decontaminate)")
        elif mapped.rejected:
            first = mapped.rejected[0]
            problems.append(
                f"{name}: none of its {mapped.source_rows} rows could be mapped "
                f"(row {first.source_index}: {first.reason})"
            )
        else:
            problems.append(f"{name}: the source has no rows")
    if problems:
        raise ValueError("empty output, nothing written: " + "; ".join(problems))


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

    _check_not_empty({**mapped_train, **mapped_evals}, dropped)

    return _write_outputs(out_dir, mapped_train, mapped_evals, {**train, **evals}, dropped, report_overlaps)


def _write_outputs(
    out_dir: Path,
    mapped_train: Mapping[str, MappedDataset],
    mapped_evals: Mapping[str, MappedDataset],
    sources: Mapping[str, str],
    dropped: Mapping[str, int],
    overlaps: list[dict[str, Any]],
) -> PrepareReport:
    """Stage every output and the report, then swap them into `out_dir` (module docstring)."""
    report = PrepareReport(out_dir=str(out_dir.resolve()), overlaps=overlaps)
    with StagedOutputs(out_dir) as staged:
        for name, mapped in {**mapped_train, **mapped_evals}.items():
            write_parquet(mapped.rows, staged.path(f"{name}.parquet"))
            report.datasets.append(
                DatasetReport(
                    name=name,
                    role=mapped.spec.role,
                    source=sources[name],
                    output=str((out_dir / f"{name}.parquet").resolve()),
                    rows_read=mapped.source_rows,
                    rows_written=len(mapped.rows),
                    rejected=[asdict(rejected) for rejected in mapped.rejected],
                    dropped_as_overlap=dropped.get(name, 0),
                )
            )
        for role, mapped_sets in (("train", mapped_train), ("eval", mapped_evals)):
            if mapped_sets:
                rows = [row for mapped in mapped_sets.values() for row in mapped.rows]
                write_parquet(rows, staged.path(COMBINED[role]))
                report.combined[COMBINED[role]] = len(rows)
        new_files = [*report.combined, *(Path(dataset.output).name for dataset in report.datasets)]
        report.removed_from_previous_run = staged.stale(previous_outputs(out_dir), new_files)
        staged.path(REPORT_NAME).write_text(report.to_json(), encoding="utf-8")
        staged.commit(last=REPORT_NAME, remove=report.removed_from_previous_run)
    return report
