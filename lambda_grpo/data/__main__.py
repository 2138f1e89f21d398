"""python -m lambda_grpo.data: prepare math datasets in verl's parquet schema, or list the declared mappings.

    python -m lambda_grpo.data list
    python -m lambda_grpo.data prepare --out-dir ~/data/lambda_grpo \\
        --train math_train=hf:DigitalLearningGmbH/MATH-lighteval@train \\
        --eval math500=path/to/math500/test.jsonl --eval aime24=path/to/aime24/test.jsonl ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lambda_grpo.data.prepare import REPORT_NAME, PrepareReport, prepare
from lambda_grpo.data.rows import INSTRUCTION
from lambda_grpo.data.sources import HUB_PREFIX
from lambda_grpo.data.specs import SPECS

SHOWN_REJECTIONS = 5


def _named_source(text: str) -> tuple[str, str]:
    name, equals, source = text.partition("=")
    if not equals or not name or not source:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=SOURCE, e.g. math500=data/math500/test.jsonl")
    return name, source


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lambda_grpo.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="print every dataset's role, field mapping and known hub copy")
    prepare_parser = commands.add_parser(
        "prepare",
        help="write <out-dir>/<name>.parquet per dataset and <out-dir>/" + REPORT_NAME,
        description=(
            "Map datasets to verl's parquet schema. SOURCE is a .jsonl/.json/.parquet file or "
            f"{HUB_PREFIX}ID[:CONFIG]@SPLIT (needs a reachable hub). Every problem gets the instruction "
            f"{INSTRUCTION!r}. Unmappable rows are reported with their index and reason; train/eval overlaps by "
            "normalised problem text are reported (and removed from training sets with --decontaminate)."
        ),
    )
    prepare_parser.add_argument("--out-dir", type=Path, required=True, help="output directory (created; required)")
    for role, what in (("train", "a training set"), ("eval", "an evaluation set")):
        prepare_parser.add_argument(
            f"--{role}",
            type=_named_source,
            action="append",
            default=[],
            metavar="NAME=SOURCE",
            help=f"{what}, repeatable; NAME in: " + ", ".join(n for n, s in SPECS.items() if s.role == role),
        )
    prepare_parser.add_argument(
        "--decontaminate",
        action="store_true",
        help="drop training rows whose normalised problem is in an evaluation set (default: only report them)",
    )
    return parser


def _list() -> None:
    for spec in SPECS.values():
        print(f"{spec.name:<14} {spec.role:<5} problem: {' | '.join(spec.problem_fields)}")
        print(f"{'':<20} answer:  {spec.answer.describe}")
        if spec.hub_copy:
            print(f"{'':<20} hub:     {HUB_PREFIX}{spec.hub_copy}")


def _print_summary(report: PrepareReport) -> None:
    print(f"{'dataset':<14}{'role':<7}{'read':>8}{'written':>9}{'rejected':>10}{'dropped':>9}  output")
    for dataset in report.datasets:
        print(
            f"{dataset.name:<14}{dataset.role:<7}{dataset.rows_read:>8}{dataset.rows_written:>9}"
            f"{len(dataset.rejected):>10}{dataset.dropped_as_overlap:>9}  {dataset.output}"
        )
        for rejected in dataset.rejected[:SHOWN_REJECTIONS]:
            print(f"    rejected row {rejected['source_index']}: {rejected['reason']}")
        if len(dataset.rejected) > SHOWN_REJECTIONS:
            print(f"    ... {len(dataset.rejected) - SHOWN_REJECTIONS} more in {REPORT_NAME}")
    for name, rows in report.combined.items():
        print(f"{name}: {rows} rows ({Path(report.out_dir) / name})")
    for overlap in report.overlaps:
        print(f"overlap: {overlap['count']} {overlap['eval']} problems also in {overlap['train']}")
    if report.removed_from_previous_run:
        print(f"removed, as this run does not write them: {', '.join(report.removed_from_previous_run)}")
    print(f"report: {Path(report.out_dir) / REPORT_NAME}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "list":
        _list()
        return 0
    names = [name for name, _ in args.train + args.eval]
    if len(set(names)) != len(names):
        print(f"error: a dataset is named twice: {names}", file=sys.stderr)
        return 2
    try:
        report = prepare(dict(args.train), dict(args.eval), args.out_dir, args.decontaminate)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    _print_summary(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
