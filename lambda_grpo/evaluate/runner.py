"""Evaluate one model on benchmark parquet files, one benchmark at a time, resumably.

Per benchmark (a parquet file in verl's schema, from `python -m lambda_grpo.data prepare`): every problem's
chat `prompt` goes through the model's chat template (add_generation_prompt, as verl's rollout does), k responses
are generated, and each is scored by `lambda_grpo.reward.compute_score` (the training reward). Written, each
file atomically:

  <out_dir>/samples/<benchmark>.jsonl   one line per problem: index, question, ground_truth, responses; once
                                        scored also scores, preds (extracted answers), reasons, accuracy (mean
                                        score). Written right after generation, so the responses survive a
                                        failure of scoring; a rerun scores them without generating again
  <out_dir>/results.json                the run's settings and, per finished benchmark, problems, k, accuracy
                                        (%, = 100 · mean over problems of the mean over the k scores: pass@1 for
                                        greedy, avg@k when sampling) and pass@k (% of problems with a correct
                                        response among the k); see `results` for how reruns use it

A benchmark already in results.json is not redone. Results are only reused for the same evaluated checkpoint and
settings (`results.load_results`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from lambda_grpo.data.outputs import write_text_atomically
from lambda_grpo.evaluate.generation import Generator, SamplingSettings
from lambda_grpo.evaluate.results import SAMPLES_DIR, load_results, save_results
from lambda_grpo.reward import compute_score
from lambda_grpo.reward.workers import default_pool_size


class ScoringError(RuntimeError):
    """Scoring a benchmark's responses failed (not the responses' fault: compute_score never raises on them)."""


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


def _write_samples(path: Path, lines: Sequence[Mapping[str, Any]]) -> None:
    write_text_atomically(path, "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))


def saved_responses(path: Path, rows: Sequence[Mapping[str, Any]], k: int) -> list[list[str]] | None:
    """The responses an earlier run saved in `path` for these rows (k each), or None if they do not fit."""
    try:
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        responses = [line["responses"] for line in lines]
        indices = [line["index"] for line in lines]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if indices != [row["extra_info"]["index"] for row in rows] or any(len(item) != k for item in responses):
        return None
    return responses


def generate_responses(
    name: str, rows: Sequence[Mapping[str, Any]], generator: Generator, tokenizer: Any, settings: SamplingSettings
) -> list[list[str]]:
    """k responses per row, each prompt through the model's chat template."""
    prompts = [tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False) for row in rows]
    responses = generator.generate(prompts, settings)
    if len(responses) != len(rows) or any(len(item) != settings.k for item in responses):
        raise RuntimeError(f"{name}: the generator returned {len(responses)} lists for {len(rows)} problems")
    return responses


def _generated_lines(rows: Sequence[Mapping[str, Any]], responses: Sequence[Sequence[str]]) -> list[dict[str, Any]]:
    return [
        {
            "index": row["extra_info"]["index"],
            "question": row["extra_info"]["question"],
            "ground_truth": row["reward_model"]["ground_truth"],
            "responses": list(row_responses),
        }
        for row, row_responses in zip(rows, responses, strict=True)
    ]


def score_benchmark(
    name: str, rows: Sequence[Mapping[str, Any]], responses: Sequence[Sequence[str]], k: int, metric: str, path: Path
) -> dict[str, Any]:
    """Score the responses, rewrite `path` with the scores, and return the benchmark's results entry."""
    try:
        scored = score_responses(rows, responses)
    except Exception as error:
        raise ScoringError(
            f"{name}: scoring failed ({type(error).__name__}: {error}); the generated responses are saved in "
            f"{path}: rerun the same command to score them without generating again"
        ) from error
    lines, accuracies, solved = _generated_lines(rows, responses), [], 0
    for line, results in zip(lines, scored, strict=True):
        scores = [result["score"] for result in results]
        accuracies.append(sum(scores) / len(scores))
        solved += any(score == 1.0 for score in scores)
        line.update(
            scores=scores,
            preds=[result["pred"] for result in results],
            reasons=[result["reason"] for result in results],
            accuracy=accuracies[-1],
        )
    _write_samples(path, lines)
    return {
        "problems": len(rows),
        "k": k,
        "metric": metric,
        "accuracy": 100.0 * sum(accuracies) / len(accuracies),
        f"pass@{k}": 100.0 * solved / len(rows),
        "samples": str(path),
    }


def evaluate_benchmark(
    name: str,
    parquet: Path,
    load_generator: Callable[[], tuple[Generator, Any]],
    settings: SamplingSettings,
    results: dict[str, Any],
    out_dir: Path,
) -> dict[str, Any]:
    """Generate (or take the responses an earlier run saved), save, score and write one benchmark (module
    docstring); returns its results entry. `results` is updated and saved once the responses are."""
    rows = pq.read_table(parquet).to_pylist()
    if not rows:
        raise ValueError(f"{parquet}: no problems")
    samples = out_dir / SAMPLES_DIR / f"{name}.jsonl"
    responses = saved_responses(samples, rows, settings.k) if name in results["generated"] else None
    if responses is not None:
        print(f"[lambda_grpo.evaluate] {name}: scoring the responses an earlier run generated ({samples})", flush=True)
    else:
        responses = generate_responses(name, rows, *load_generator(), settings)
        _write_samples(samples, _generated_lines(rows, responses))
        results["generated"] = sorted({*results["generated"], name})
        save_results(out_dir, results)
    return score_benchmark(name, rows, responses, settings.k, settings.metric, samples)


def evaluate(
    benchmarks: Mapping[str, Path],
    make_generator: Callable[[], tuple[Generator, Any]],
    settings: SamplingSettings,
    run_settings: Mapping[str, Any],
    out_dir: Path,
) -> dict[str, Any]:
    """Evaluate every benchmark not yet in `out_dir`'s results.json; returns the updated results.

    `make_generator` returns (generator, tokenizer); it is called once, and only if a benchmark needs generating,
    so a fully resumed run loads no model.
    """
    from tqdm import tqdm

    results = load_results(out_dir, run_settings)
    save_results(out_dir, results)  # the out-dir now holds these settings, before any long work
    todo = [name for name in benchmarks if name not in results["benchmarks"]]
    for name in benchmarks:
        if name not in todo:
            print(f"[lambda_grpo.evaluate] {name}: done in an earlier run, skipped", flush=True)
    loaded: list[tuple[Generator, Any]] = []

    def load_generator() -> tuple[Generator, Any]:
        if not loaded:
            loaded.append(make_generator())
        return loaded[0]

    for name in tqdm(todo, desc="benchmarks", unit="benchmark"):
        entry = evaluate_benchmark(name, benchmarks[name], load_generator, settings, results, out_dir)
        results["benchmarks"][name] = entry
        results["generated"] = [other for other in results["generated"] if other != name]
        save_results(out_dir, results)
        print(f"[lambda_grpo.evaluate] {name}: {entry['accuracy']:.1f}", flush=True)
    return results
