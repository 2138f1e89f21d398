"""Evaluate one model on benchmark parquet files, one benchmark at a time, resumably.

Per benchmark (a parquet file in verl's schema, from `python -m lambda_grpo.data prepare`): every problem's
chat `prompt` goes through the model's chat template (add_generation_prompt, as verl's rollout does), k responses
are generated, and each is scored by `lambda_grpo.reward.compute_score` (the training reward). Then, atomically:

  <out_dir>/samples/<benchmark>.jsonl   one line per problem: index, question, ground_truth, responses, scores,
                                        preds (extracted answers), reasons, accuracy (mean score)
  <out_dir>/results.json                the run's settings and, per finished benchmark, problems, k, accuracy
                                        (%, = 100 · mean over problems of the mean over the k scores: pass@1 for
                                        greedy, avg@k when sampling) and pass@k (% of problems with a correct
                                        response among the k)

A benchmark already in results.json is not redone. Results are only reused under the same settings (model,
method, model size, sampling): a different request on the same out_dir is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from lambda_grpo.evaluate.generation import Generator, SamplingSettings
from lambda_grpo.reward import compute_score
from lambda_grpo.reward.workers import default_pool_size

RESULTS_NAME = "results.json"
SAMPLES_DIR = "samples"


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_results(out_dir: Path, run_settings: Mapping[str, Any]) -> dict[str, Any]:
    """results.json of `out_dir` if its settings equal `run_settings`, a fresh one if absent; ValueError otherwise."""
    path = out_dir / RESULTS_NAME
    if not path.is_file():
        return {"settings": dict(run_settings), "benchmarks": {}}
    results = json.loads(path.read_text(encoding="utf-8"))
    if results.get("settings") != dict(run_settings):
        raise ValueError(
            f"{path} holds results for other settings:\n  {results.get('settings')}\nnot\n  {dict(run_settings)}\n"
            "use another --out-dir (or delete that one) to evaluate with these settings"
        )
    return results


def _score(job: tuple[Mapping[str, Any], str]) -> dict[str, Any]:
    row, response = job
    return compute_score(row["data_source"], response, row["reward_model"]["ground_truth"])


def score_responses(rows: Sequence[Mapping[str, Any]], responses: Sequence[Sequence[str]]) -> list[list[dict]]:
    """compute_score for every response (in threads: the reward's worker pool verifies in parallel)."""
    jobs = [(row, response) for row, row_responses in zip(rows, responses, strict=True) for response in row_responses]
    with ThreadPoolExecutor(max_workers=default_pool_size()) as pool:
        results = list(pool.map(_score, jobs))
    per_row, position = [], 0
    for row_responses in responses:
        per_row.append(results[position : position + len(row_responses)])
        position += len(row_responses)
    return per_row


def evaluate_benchmark(
    name: str, parquet: Path, generator: Generator, tokenizer: Any, settings: SamplingSettings, out_dir: Path
) -> dict[str, Any]:
    """Generate, score and write one benchmark's samples (module docstring); returns its results entry."""
    rows = pq.read_table(parquet).to_pylist()
    if not rows:
        raise ValueError(f"{parquet}: no problems")
    prompts = [tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False) for row in rows]
    responses = generator.generate(prompts, settings)
    if len(responses) != len(rows) or any(len(item) != settings.k for item in responses):
        raise RuntimeError(f"{name}: the generator returned {len(responses)} lists for {len(rows)} problems")
    scored = score_responses(rows, responses)
    lines, accuracies, solved = [], [], 0
    for row, row_responses, results in zip(rows, responses, scored, strict=True):
        scores = [result["score"] for result in results]
        accuracies.append(sum(scores) / len(scores))
        solved += any(score == 1.0 for score in scores)
        lines.append(
            {
                "index": row["extra_info"]["index"],
                "question": row["extra_info"]["question"],
                "ground_truth": row["reward_model"]["ground_truth"],
                "responses": row_responses,
                "scores": scores,
                "preds": [result["pred"] for result in results],
                "reasons": [result["reason"] for result in results],
                "accuracy": accuracies[-1],
            }
        )
    samples = out_dir / SAMPLES_DIR / f"{name}.jsonl"
    write_atomically(samples, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    return {
        "problems": len(rows),
        "k": settings.k,
        "metric": settings.metric,
        "accuracy": 100.0 * sum(accuracies) / len(accuracies),
        f"pass@{settings.k}": 100.0 * solved / len(rows),
        "samples": str(samples),
    }


def evaluate(
    benchmarks: Mapping[str, Path],
    make_generator: Callable[[], tuple[Generator, Any]],
    settings: SamplingSettings,
    run_settings: Mapping[str, Any],
    out_dir: Path,
) -> dict[str, Any]:
    """Evaluate every benchmark not yet in `out_dir`'s results.json; returns the updated results.

    `make_generator` returns (generator, tokenizer); it is only called if a benchmark is left to do, so a fully
    resumed run loads no model.
    """
    from tqdm import tqdm

    results = load_results(out_dir, run_settings)
    todo = [name for name in benchmarks if name not in results["benchmarks"]]
    for name in benchmarks:
        if name not in todo:
            print(f"[lambda_grpo.evaluate] {name}: done in an earlier run, skipped", flush=True)
    if not todo:
        return results
    generator, tokenizer = make_generator()
    for name in tqdm(todo, desc="benchmarks", unit="benchmark"):
        results["benchmarks"][name] = evaluate_benchmark(
            name, benchmarks[name], generator, tokenizer, settings, out_dir
        )
        write_atomically(out_dir / RESULTS_NAME, json.dumps(results, indent=2) + "\n")
        print(f"[lambda_grpo.evaluate] {name}: {results['benchmarks'][name]['accuracy']:.1f}", flush=True)
    return results
