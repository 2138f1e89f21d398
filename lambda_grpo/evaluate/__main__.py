"""python -m lambda_grpo.evaluate: score a checkpoint on the benchmark suite; collect runs into Table 1.

    python -m lambda_grpo.evaluate run --model checkpoints/lambda_grpo/lambda_grpo-qwen2_5_7b \\
        --data-dir ~/data/lambda_grpo --out-dir eval/lambda_grpo-qwen2_5_7b --method lambda_grpo --model-size qwen2_5_7b
    python -m lambda_grpo.evaluate table eval/*/results.json --out eval/table

Sampling defaults follow Qwen2.5-Math's evaluation toolkit (evaluation/math_eval.py: temperature 0, top-p 1, one
sample, 2048 new tokens, seed 0): greedy pass@1. With --k > 1 the defaults become temperature 0.6 and top-p 0.95
(the usual avg@k setting of R1-style papers), and the score is avg@k.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lambda_grpo.data.outputs import write_text_atomically
from lambda_grpo.data.specs import EVAL_SUITE
from lambda_grpo.evaluate.checkpoint import resolve_checkpoint, resolve_model
from lambda_grpo.evaluate.generation import SamplingSettings
from lambda_grpo.evaluate.results import RESULTS_NAME
from lambda_grpo.evaluate.runner import ScoringError, evaluate
from lambda_grpo.evaluate.table import csv_text, markdown, row_from_results

SUITE = [name for name, _ in EVAL_SUITE]
GREEDY = {"temperature": 0.0, "top_p": 1.0}
SAMPLED = {"temperature": 0.6, "top_p": 0.95}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lambda_grpo.evaluate",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="evaluate one checkpoint (one table row), resumably")
    run.add_argument("--model", type=Path, required=True, help="HF model dir, or verl checkpoint (root/step/actor)")
    run.add_argument("--data-dir", type=Path, required=True, help="directory of <benchmark>.parquet files")
    run.add_argument(
        "--benchmarks", default=None,
        help=f"comma-separated benchmarks (default: those of {','.join(SUITE)} present in --data-dir)",
    )  # fmt: skip
    run.add_argument("--out-dir", type=Path, required=True, help="results, samples, table (and a merged model)")
    run.add_argument("--method", required=True, help="row label: lambda_grpo, grpo, dapo, dr_grpo, base, ...")
    run.add_argument("--model-size", required=True, help="row label: qwen2_5_1_5b, qwen2_5_3b, qwen2_5_7b, ...")
    run.add_argument("--backend", choices=("vllm", "hf"), default="vllm", help="generation backend (default: vllm)")
    run.add_argument("--k", type=int, default=1, help="responses per problem (default: 1)")
    run.add_argument("--temperature", type=float, default=None, help="default: 0 if k=1 (greedy), else 0.6")
    run.add_argument("--top-p", type=float, default=None, help="default: 1.0 if greedy, else 0.95")
    run.add_argument("--max-tokens", type=int, default=2048, help="new tokens per response (default: 2048)")
    run.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    run.add_argument("--dtype", default="auto", help="weights dtype: auto, bfloat16, float32, ... (default: auto)")
    run.add_argument("--batch-size", type=int, default=8, help="hf backend: prompts per generate call (default: 8)")
    run.add_argument("--device", default=None, help="hf backend: torch device (default: cuda if available, else cpu)")
    run.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm backend: GPUs per model (default: 1)")
    run.add_argument(
        "--gpu-memory-utilization", type=float, default=0.9, help="vllm backend: GPU memory share (default: 0.9)"
    )
    run.add_argument(
        "--max-model-len", type=int, default=None, help="vllm backend: context length (default: the model's)"
    )
    table = commands.add_parser("table", help="merge results.json files of several runs into one table")
    table.add_argument("results", type=Path, nargs="+", help="results.json files (or the run directories)")
    table.add_argument("--out", type=Path, required=True, help="output prefix: writes OUT.md and OUT.csv")
    return parser


def _benchmarks(data_dir: Path, requested: str | None) -> dict[str, Path]:
    names = requested.split(",") if requested else SUITE
    unknown = sorted(set(names) - set(SUITE))
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; the suite is {SUITE}")
    found = {name: data_dir / f"{name}.parquet" for name in names if (data_dir / f"{name}.parquet").is_file()}
    missing = [name for name in names if name not in found]
    if requested and missing or not found:
        raise ValueError(
            f"no {', '.join(missing)}.parquet in {data_dir} (prepare them with python -m lambda_grpo.data)"
        )
    if missing:
        print(f"[lambda_grpo.evaluate] not in {data_dir}, skipped: {', '.join(missing)}", flush=True)
    return found


def _load_generator(args: argparse.Namespace, model_dir: Path) -> tuple[Any, Any]:
    """(generator of the chosen backend, the model's tokenizer)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template:
        raise ValueError(f"{model_dir}: the tokenizer has no chat template (the prompts are chat messages)")
    if args.backend == "hf":
        import torch

        from lambda_grpo.evaluate.generation import HfGenerator

        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        return HfGenerator(model_dir, tokenizer, device, args.dtype, args.batch_size), tokenizer
    from lambda_grpo.evaluate.generation import VllmGenerator

    engine_args = {
        "tensor_parallel_size": args.tensor_parallel_size,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "max_model_len": args.max_model_len,
        "dtype": args.dtype,
        "seed": args.seed,
    }
    return VllmGenerator(model_dir, tokenizer, engine_args), tokenizer


def _run(args: argparse.Namespace) -> int:
    defaults = GREEDY if args.k == 1 and (args.temperature is None or args.temperature == 0) else SAMPLED
    settings = SamplingSettings(
        k=args.k,
        temperature=defaults["temperature"] if args.temperature is None else args.temperature,
        top_p=defaults["top_p"] if args.top_p is None else args.top_p,
        max_tokens=args.max_tokens,
        seed=args.seed,
    )
    benchmarks = _benchmarks(args.data_dir.expanduser(), args.benchmarks)
    checkpoint = resolve_checkpoint(args.model)
    where = f" ({checkpoint.label} of {checkpoint.run_dir})" if checkpoint.run_dir is not None else ""
    print(f"[lambda_grpo.evaluate] model: {checkpoint.path}{where}", flush=True)
    run_settings = {
        "model": str(checkpoint.path),
        "step": checkpoint.step,
        "run_dir": None if checkpoint.run_dir is None else str(checkpoint.run_dir),
        "method": args.method,
        "model_size": args.model_size,
        "backend": args.backend,
        "sampling": settings.as_dict(),
    }
    out_dir = args.out_dir.expanduser()
    results = evaluate(
        benchmarks, lambda: _load_generator(args, resolve_model(checkpoint, out_dir)), settings, run_settings, out_dir
    )
    row = row_from_results(results)
    write_text_atomically(out_dir / "table.md", markdown([row]))
    write_text_atomically(out_dir / "table.csv", csv_text([row]))
    print(markdown([row]), end="")
    print(f"[lambda_grpo.evaluate] {settings.metric} in %; results: {out_dir / RESULTS_NAME}")
    return 0


def _table(args: argparse.Namespace) -> int:
    rows = []
    for path in args.results:
        file = path / RESULTS_NAME if path.is_dir() else path
        rows.append(row_from_results(json.loads(file.read_text(encoding="utf-8"))))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(args.out.with_suffix(".md"), markdown(rows))
    write_text_atomically(args.out.with_suffix(".csv"), csv_text(rows))
    print(markdown(rows), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args) if args.command == "run" else _table(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ScoringError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
