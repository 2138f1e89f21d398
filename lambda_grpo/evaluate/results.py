"""An evaluation's results.json, keyed by what was evaluated, and how a rerun on the same --out-dir treats it.

results.json holds the run's `settings` and, per benchmark, its results (see `runner`):

    settings    model (the evaluated directory: an HF model, or a verl actor checkpoint), step and run_dir (for a
                checkpoint of a run: its global step and trainer.default_local_dir), method, model_size, backend,
                sampling
    benchmarks  {benchmark: results entry}, the finished ones
    generated   benchmarks whose responses are saved in samples/ but not yet scored (scoring failed or was
                interrupted): a rerun scores them without generating again

A rerun on the same out-dir (`load_results`):
  - same settings: resumes (finished benchmarks are not redone);
  - another step of the same run, everything else equal (the usual case: --model names the run's directory and
    training advanced): the earlier step's outputs (results.json, samples/, table.md/.csv, merged_model/) are
    moved to superseded/global_step_<N>/ and the new step is evaluated from scratch;
  - anything else: refused, naming both settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lambda_grpo.data.outputs import write_text_atomically
from lambda_grpo.evaluate.checkpoint import MERGED_DIR

RESULTS_NAME = "results.json"
SAMPLES_DIR = "samples"
TABLE_NAMES = ("table.md", "table.csv")
SUPERSEDED_DIR = "superseded"
CHECKPOINT_KEYS = ("model", "step")
"""The settings that differ between two steps of one run."""


def save_results(out_dir: Path, results: Mapping[str, Any]) -> None:
    write_text_atomically(out_dir / RESULTS_NAME, json.dumps(results, indent=2) + "\n")


def _other_step_of_the_same_run(held: Mapping[str, Any], requested: Mapping[str, Any]) -> bool:
    if held.get("run_dir") is None or held.get("step") is None or requested.get("step") is None:
        return False
    rest = [key for key in {*held, *requested} if key not in CHECKPOINT_KEYS]
    return all(held.get(key) == requested.get(key) for key in rest) and held["step"] != requested["step"]


def _set_aside(out_dir: Path, label: str, moved_names: tuple[str, ...]) -> Path:
    """Move the outputs named `moved_names` of `out_dir` to superseded/<label>[-<n>]/, results.json last."""
    target = out_dir / SUPERSEDED_DIR / label
    copy = 1
    while target.exists():
        copy += 1
        target = out_dir / SUPERSEDED_DIR / f"{label}-{copy}"
    target.mkdir(parents=True)
    for name in [*moved_names, RESULTS_NAME]:
        if (out_dir / name).exists():
            os.replace(out_dir / name, target / name)
    return target


def load_results(out_dir: Path, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The results to continue for `settings` in `out_dir` (module docstring); ValueError if refused."""
    path = out_dir / RESULTS_NAME
    fresh = {"settings": dict(settings), "benchmarks": {}, "generated": []}
    if not path.is_file():
        return fresh
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        held = results["settings"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path} is not a results file of this tool ({error}): move it away or use another --out-dir"
        ) from None
    if held == dict(settings):
        results.setdefault("generated", [])
        return results
    if _other_step_of_the_same_run(held, settings):
        target = _set_aside(out_dir, f"global_step_{held['step']}", (SAMPLES_DIR, *TABLE_NAMES, MERGED_DIR))
        print(
            f"[lambda_grpo.evaluate] {held['run_dir']} is now at global_step_{settings['step']}; the results of "
            f"global_step_{held['step']} moved to {target}",
            flush=True,
        )
        return fresh
    raise ValueError(
        f"{path} holds results for other settings:\n  {held}\nnot\n  {dict(settings)}\n"
        "use another --out-dir (or delete that one) to evaluate with these settings"
    )
