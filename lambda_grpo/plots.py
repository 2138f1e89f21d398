"""python -m lambda_grpo.plots: training curves of one or several runs, one PNG per quantity, one line per run.

    python -m lambda_grpo.plots --out-dir plots \\
        --run λ-GRPO=checkpoints/lambda_grpo/lambda_grpo-qwen2_5_7b/metrics \\
        --run GRPO=checkpoints/lambda_grpo/grpo-qwen2_5_7b/metrics

Inputs (a run is NAME=PATH[,PATH...]; several paths are merged, later files winning on repeated steps):
  - verl's `file` logger output (our configs enable it: trainer.logger=[console,file]): JSONL files of
    {"step": N, "data": {metric: value}} lines. `python -m lambda_grpo.main` writes one per start into
    <trainer.default_local_dir>/metrics/<start time>.jsonl (verl truncates its file on every start), so a
    run is that folder; an explicit $VERL_FILE_LOGGER_PATH names a single file instead.
  - verl's `tensorboard` logger output: a directory holding events.out.tfevents.* files ($TENSORBOARD_DIR, else
    tensorboard_log/<project_name>/<experiment_name>).

Figures (file name <- metric):
  lambda.png           <- actor/lambda                     λ after each update (λ-GRPO runs only)
  response_length.png  <- response_length/mean             mean response length in tokens
  entropy.png          <- actor/entropy                    mean token entropy of the policy
  reward.png           <- critic/score/mean                mean sequence reward (our reward: accuracy)
  val_<source>.png     <- val-core/<source>/acc/mean@<n>   validation accuracy per data source (verl's
                                                           metric_utils / ray_trainer naming)
A run without a metric has no line in that figure; a metric no run has gets no figure (both are printed).

Bad input is one line on stderr and exit status 2, never a traceback: a missing path, a folder without logs, a
JSONL line that is not verl's file-logger format, a tensorboard file that fails its checksums (a truncated last
record, as a run killed while writing leaves, is read up to there, as tensorboard does), and a run that has none
of the metrics above (its metrics are listed, to spot a wrong path or a renamed metric).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

Series = dict[str, list[tuple[int, float]]]
"""metric -> [(step, value)], steps ascending and unique."""

QUANTITIES: tuple[tuple[str, str, str], ...] = (
    ("lambda", "actor/lambda", "λ"),
    ("response_length", "response_length/mean", "mean response length (tokens)"),
    ("entropy", "actor/entropy", "entropy"),
    ("reward", "critic/score/mean", "mean reward"),
)
"""(figure name, metric, y-axis label) of the training quantities."""

VALIDATION = re.compile(r"val-core/(?P<source>.+)/acc/mean@\d+")
"""verl's headline validation metric: mean accuracy over the n samples of each prompt, per data source."""


def _read_file_logger(path: Path) -> Iterable[tuple[int, str, float]]:
    """(step, metric, value) of every numeric metric in a verl file-logger JSONL file.

    A last line without its newline that does not parse is what a run stopped while writing leaves: it is skipped
    with a note. Any other line that is not {"step": N, "data": {...}} is an error naming the file and line.
    """
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, data = int(record["step"]), dict(record["data"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            if number == len(lines) and not text.endswith("\n"):
                print(f"note: {path}:{number}: incomplete last line (a run stopped while writing it), skipped")
                return
            raise ValueError(f"{path}:{number}: not a verl file-logger line ({error})") from None
        for metric, value in data.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield step, metric, float(value)


def _check_event_file(path: Path) -> None:
    """ValueError if a record of the tensorboard event file `path` fails its checksum (truncation is tolerated)."""
    from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow

    reader = pywrap_tensorflow.PyRecordReader_New(str(path), 0, None, None)
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return
        except errors.DataLossError as error:
            if "truncated" in error.message:
                return
            raise ValueError(f"{path}: not a readable tensorboard event file ({error.message})") from None


def _read_tensorboard(directory: Path) -> Iterable[tuple[int, str, float]]:
    try:
        from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
    except ImportError:
        raise ValueError(f"{directory}: reading tensorboard logs needs the tensorboard package") from None

    files = sorted(directory.glob("events.out.tfevents.*"))
    if not files:
        raise ValueError(f"{directory}: no verl metrics (*.jsonl) or tensorboard (events.out.tfevents.*) files")
    for file in files:
        _check_event_file(file)
        accumulator = EventAccumulator(str(file), size_guidance={SCALARS: 0})
        accumulator.Reload()
        for tag in accumulator.Tags()[SCALARS]:
            for event in accumulator.Scalars(tag):
                yield event.step, tag, float(event.value)


def read_run(paths: Iterable[Path]) -> Series:
    """All scalar metrics of one run from verl file-logger JSONL files, folders of them (read in name order:
    `python -m lambda_grpo.main` names each start's file by its start time) and/or tensorboard directories.

    Later paths (and later lines) win when a step repeats, as after a resume.
    """
    values: dict[str, dict[int, float]] = {}
    for path in paths:
        if path.is_dir() and any(path.glob("*.jsonl")):  # a metrics folder: one file per start, in time order
            records = (record for log in sorted(path.glob("*.jsonl")) for record in _read_file_logger(log))
        elif path.is_dir():
            records = _read_tensorboard(path)
        elif path.is_file():
            records = _read_file_logger(path)
        else:
            raise FileNotFoundError(f"training log not found: {path}")
        for step, metric, value in records:
            values.setdefault(metric, {})[step] = value
    return {metric: sorted(by_step.items()) for metric, by_step in values.items()}


@dataclass(frozen=True)
class Figure:
    """One figure: its file stem, metric(s) drawn, y label, and the series of each run that has the metric."""

    name: str
    metric: str
    ylabel: str
    lines: dict[str, list[tuple[int, float]]]


def figures(runs: Mapping[str, Series]) -> list[Figure]:
    """The figures to draw (module docstring) with their data; figures with no data are left out."""
    planned = list(QUANTITIES)
    validation_metrics = sorted({metric for run in runs.values() for metric in run if VALIDATION.fullmatch(metric)})
    for metric in validation_metrics:
        source = VALIDATION.fullmatch(metric)["source"]
        planned.append((f"val_{re.sub(r'[^A-Za-z0-9_.-]+', '_', source)}", metric, f"validation accuracy ({source})"))
    result = []
    for name, metric, ylabel in planned:
        lines = {run: series[metric] for run, series in runs.items() if series.get(metric)}
        if lines:
            result.append(Figure(name, metric, ylabel, lines))
    return result


def draw(figure: Figure, out_dir: Path) -> Path:
    """Write `<out_dir>/<figure.name>.png`: one line per run against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for run, points in figure.lines.items():
        steps, values = zip(*points, strict=True)
        axes.plot(steps, values, label=run, marker="o" if len(points) < 20 else None, markersize=3)
    axes.set_xlabel("training step")
    axes.set_ylabel(figure.ylabel)
    axes.set_title(figure.metric)
    axes.grid(alpha=0.3)
    axes.legend()
    fig.tight_layout()
    path = out_dir / f"{figure.name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _run_argument(text: str) -> tuple[str, list[Path]]:
    name, equals, paths = text.partition("=")
    if not equals or not name or not paths:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=PATH[,PATH...]")
    return name, [Path(path).expanduser() for path in paths.split(",")]


def check_runs(runs: Mapping[str, Series], paths: Mapping[str, list[Path]]) -> None:
    """ValueError naming each run that has none of the plotted metrics (module docstring), with what it has."""
    plotted = [metric for _, metric, _ in QUANTITIES]
    problems = []
    for name, series in runs.items():
        if any(metric in series for metric in plotted) or any(VALIDATION.fullmatch(metric) for metric in series):
            continue
        where = ",".join(map(str, paths[name]))
        found = sorted(series)
        listed = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "")
        has = f"it has {len(found)}: {listed}" if found else "it has no metrics"
        wanted = ", ".join([*plotted, "val-core/<source>/acc/mean@<n>"])
        problems.append(f"run {name!r} ({where}) has none of {wanted}; {has}")
    if problems:
        raise ValueError("; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lambda_grpo.plots",
        description="Draw λ, response length, entropy, reward and validation accuracy of training runs as PNGs.",
        epilog="Inputs: verl file-logger JSONL files or tensorboard directories (see the module docstring).",
    )
    parser.add_argument(
        "--run", type=_run_argument, action="append", required=True, metavar="NAME=PATH[,PATH...]",
        help="a run to draw, repeatable: its legend name and its log file(s)/directory(ies), merged in order",
    )  # fmt: skip
    parser.add_argument("--out-dir", type=Path, default=Path("plots"), help="where the PNGs go (default: plots)")
    args = parser.parse_args(argv)

    names = [name for name, _ in args.run]
    if len(set(names)) != len(names):
        parser.error(f"a run name is used twice: {names}")
    try:
        runs = {name: read_run(paths) for name, paths in args.run}
        check_runs(runs, dict(args.run))
        args.out_dir.mkdir(parents=True, exist_ok=True)
        drawn = figures(runs)
        for figure in drawn:
            missing = sorted(set(runs) - set(figure.lines))
            note = f" (no {figure.metric} in: {', '.join(missing)})" if missing else ""
            print(f"{draw(figure, args.out_dir)}{note}")
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for name, metric, _ in QUANTITIES:
        if name not in {figure.name for figure in drawn}:
            print(f"no run has {metric}: {name}.png not drawn")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
