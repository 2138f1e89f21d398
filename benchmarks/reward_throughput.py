"""Throughput of lambda_grpo.reward against plain math-verify on the same samples, and verdict agreement.

    python benchmarks/reward_throughput.py                       # synthetic rollouts (see `synthetic_samples`)
    python benchmarks/reward_throughput.py --samples dump.jsonl  # e.g. verl's trainer.validation_data_dir dumps

"Plain math-verify" is what a user writes from math-verify's README, in-process on the main thread:
`verify(parse("\\boxed{" + ground_truth + "}"), parse(response))`. Ours is `compute_score` with one worker process
(`LAMBDA_GRPO_REWARD_WORKERS=1`, so one core verifies at a time in both; small single-box responses without
"final answer" get the fast path in the caller, every other verdict is computed in that worker, round trip
included). After a warm-up, each scorer runs over
each sample set `--runs` times (our caches cleared before each run) and the fastest run counts, against the noise
of a shared machine; samples/s = samples / wall seconds; the ratio reported is the median over the sample sets.
The script then checks that both give identical verdicts on
every case of the test table (tests/reward_cases.jsonl; its two pathological cases cost plain math-verify ~5 s
each) and reports disagreements on the samples. Exit status 1 if a table verdict differs or the ratio is below
--target-ratio. Not a timed test: CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES_FILE = REPO / "tests" / "reward_cases.jsonl"

_COT_SENTENCES = [
    "Let $x$ be the unknown quantity, so that $3x + 7 = {a}$.",
    "Subtracting, we get $3x = {b}$ and hence $x = \\frac{{{b}}}{{3}}$.",
    "The area of the triangle is $\\frac{{1}}{{2}} \\cdot {a} \\cdot {b} = {c}$.",
    "By the Pythagorean theorem, $a^2 + b^2 = {c}$, where $a = {a}$.",
    "We check the case $n = {a}$ separately: it gives ${b}$ solutions.",
    "Multiplying both sides by ${a}$ gives \\[ {a}y = {c}. \\]",
    "Since $\\gcd({a}, {b}) = 1$, the fraction is already in lowest terms.",
    "Summing the arithmetic series $1 + 2 + \\cdots + {a}$ gives ${c}$.",
]


_CLOSINGS = [
    "\nTherefore, the final answer is $\\boxed{{{}}}$. I hope it is correct.",
    "\nSo the answer is \\boxed{{{}}}.",
    "\n\\[\n\\boxed{{{}}}\n\\]",
]


def _answer_family(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """(ground truth, two wrong answers of the same kind, equivalent rewrites) for one problem."""
    kind = rng.random()
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
    if kind < 0.60:  # integer answers: GSM8K, AIME, AMC, most of MATH
        value = rng.randint(-50, 9999)
        rewrite = f"{value:,}" if value >= 1000 else f"{value}.0"
        return str(value), [str(value + rng.choice([-3, -1, 1])), str(value * c)], [rewrite]
    if kind < 0.75:  # fractions
        while b % a == 0 or a % b == 0:
            a, b = rng.randint(2, 99), rng.randint(2, 99)
        truth = f"\\frac{{{a}}}{{{b}}}"
        wrong = [f"\\frac{{{b}}}{{{a}}}", f"\\frac{{{a + c}}}{{{b}}}"]
        return truth, wrong, [f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}", f"\\frac{{{2 * a}}}{{{2 * b}}}"]
    templates = [  # symbolic answers: radicals, pi, intervals, polynomials
        (
            f"\\frac{{\\sqrt{{{a}}}}}{{{b}}}",
            [f"\\frac{{\\sqrt{{{a + 1}}}}}{{{b}}}", f"\\frac{{{a}}}{{{b}}}"],
            [f"\\sqrt{{{a}}}/{b}"],
        ),
        (f"{a}\\sqrt{{{b}}}", [f"{a + 1}\\sqrt{{{b}}}", f"{a * b}"], [f"\\sqrt{{{a * a * b}}}"]),
        (f"\\frac{{{a}\\pi}}{{{b}}}", [f"\\frac{{{b}\\pi}}{{{a}}}", f"{a}\\pi"], [f"{a}\\pi/{b}"]),
        (f"({a}, {a + b}]", [f"[{a}, {a + b}]", f"({a}, {a + b})"], [f"\\left({a}, {a + b}\\right]"]),
        (f"x^2 + {a}x + {b}", [f"x^2 + {b}x + {a}", f"x^2 - {a}x + {b}"], [f"{b} + {a}x + x^2"]),
    ]
    return rng.choice(templates)


def synthetic_samples(
    count: int, seed: int, group_size: int = 8, no_answer: float = 0.05, rewrite: float = 0.1
) -> list[tuple[str, str]]:
    """`count` (response, ground truth) pairs shaped like one GRPO step's rollouts on MATH-style data.

    Prompts come in groups of `group_size` responses (verl's rollout.n), consecutive as verl scores them.
    Ground truths: 60% integers, 15% fractions, 25% symbolic (radicals, multiples of pi, intervals,
    polynomials), about MATH's mix. Each response: 10-40 sentences of chain of thought with inline math (~1,600
    characters), then the answer in `\\boxed{}` in one of three closing phrases. Per response: a share
    `no_answer` is cut off before any answer (truncated at the length limit); of the rest, 54% are correct (a
    share `rewrite` of those written in an equivalent form other than the ground truth's) and 46% wrong (one of
    the group's two wrong answers: a model's wrong answers to one problem cluster).
    """
    rng = random.Random(seed)
    samples = []
    while len(samples) < count:
        truth, wrong_answers, rewrites = _answer_family(rng)
        numbers = {"a": rng.randint(2, 99), "b": rng.randint(2, 99), "c": rng.randint(100, 9999)}
        for _ in range(group_size):
            body = " ".join(rng.choice(_COT_SENTENCES).format(**numbers) for _ in range(rng.randint(10, 40)))
            if rng.random() < no_answer:
                response = body
            else:
                if rng.random() < 0.54:
                    answer = rng.choice(rewrites) if rng.random() < rewrite else truth
                else:
                    answer = rng.choice(wrong_answers)
                response = body + rng.choice(_CLOSINGS).format(answer)
            samples.append((response, truth))
    return samples[:count]


def load_samples(path: Path, response_key: str, truth_key: str) -> list[tuple[str, str]]:
    samples = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        row = json.loads(line)
        for key in (response_key, truth_key):
            if key not in row:
                raise SystemExit(f"{path}:{line_number}: no field {key!r} (fields: {sorted(row)})")
        samples.append((str(row[response_key]), str(row[truth_key])))
    return samples


def plain_math_verify(response: str, truth: str) -> bool:
    from math_verify import parse, verify

    return bool(verify(parse("\\boxed{" + truth + "}"), parse(response)))


def ours(response: str, truth: str) -> bool:
    from lambda_grpo.reward import compute_score

    return compute_score("benchmark", response, truth)["score"] == 1.0


def timed(scorer, samples: list[tuple[str, str]]) -> tuple[list[bool], float]:
    start = time.perf_counter()
    verdicts = [scorer(response, truth) for response, truth in samples]
    return verdicts, time.perf_counter() - start


def clear_our_caches() -> None:
    """Forget cached verdicts and normalised strings, so a rerun on the same samples starts cold (they live in
    the reward's worker process, the only one with LAMBDA_GRPO_REWARD_WORKERS=1)."""
    from lambda_grpo.reward import shared_pool
    from lambda_grpo.reward.verdict import clear_caches

    shared_pool().call(clear_caches, (), timeout_s=60.0)


def best_of(runs: int, scorer, samples: list[tuple[str, str]]) -> tuple[list[bool], float]:
    """Verdicts and the fastest of `runs` timings (our caches cleared before each): robust to a busy machine."""
    timings = []
    for _ in range(runs):
        clear_our_caches()
        verdicts, seconds = timed(scorer, samples)
        timings.append(seconds)
    return verdicts, min(timings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=Path, default=None, help="JSONL of responses (default: synthetic)")
    parser.add_argument("--response-key", default="output", help="response field of --samples (default: output)")
    parser.add_argument("--truth-key", default="gts", help="ground-truth field of --samples (default: gts)")
    parser.add_argument("--count", type=int, default=2000, help="synthetic samples per repeat (default: 2000)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats, synthetic seeds seed.. (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first synthetic repeat (default: 0)")
    parser.add_argument("--runs", type=int, default=2, help="timed runs per sample set, best kept (default: 2)")
    parser.add_argument("--group-size", type=int, default=8, help="responses per prompt, synthetic (default: 8)")
    parser.add_argument("--no-answer", type=float, default=0.05, help="truncated share, synthetic (default: 0.05)")
    parser.add_argument("--rewrite", type=float, default=0.1, help="correct answers in another form (default: 0.1)")
    parser.add_argument("--target-ratio", type=float, default=5.0, help="required median speed-up (default: 5.0)")
    parser.add_argument("--cases", type=Path, default=CASES_FILE, help=f"test table (default: {CASES_FILE})")
    args = parser.parse_args(argv)

    os.environ.setdefault("LAMBDA_GRPO_REWARD_WORKERS", "1")
    sys.path.insert(0, str(REPO))
    from lambda_grpo.reward.fast_path import fast_verdict
    from lambda_grpo.reward.logs import shorten_long_log_messages

    shorten_long_log_messages()  # plain math-verify's timeout warnings quote whole responses

    if args.samples:
        sample_sets = [(str(args.samples), load_samples(args.samples, args.response_key, args.truth_key))]
    else:
        sample_sets = [
            (
                f"synthetic seed {seed}",
                synthetic_samples(args.count, seed, args.group_size, args.no_answer, args.rewrite),
            )
            for seed in range(args.seed, args.seed + args.repeats)
        ]
    warmup = synthetic_samples(50, seed=-1)
    timed(plain_math_verify, warmup)
    timed(ours, warmup)

    print(f"{'samples':<24}{'n':>6}{'fast path':>11}{'plain/s':>10}{'ours/s':>10}{'ratio':>8}{'differing':>11}")
    ratios = []
    for name, samples in sample_sets:
        plain_verdicts, plain_s = best_of(args.runs, plain_math_verify, samples)
        our_verdicts, our_s = best_of(args.runs, ours, samples)
        fast_share = sum(fast_verdict(response, truth) is not None for response, truth in samples) / len(samples)
        differing = sum(a != b for a, b in zip(plain_verdicts, our_verdicts, strict=True))
        ratios.append(plain_s / our_s)
        print(
            f"{name:<24}{len(samples):>6}{fast_share:>11.0%}{len(samples) / plain_s:>10.0f}"
            f"{len(samples) / our_s:>10.0f}{ratios[-1]:>7.1f}x{differing:>11}"
        )
    ratio = statistics.median(ratios)
    print(f"median ratio: {ratio:.1f}x (target >= {args.target_ratio:.1f}x)")

    cases = [json.loads(line) for line in args.cases.read_text().splitlines()]
    table_differing = [
        case["id"]
        for case in cases
        if plain_math_verify(case["response"], case["ground_truth"]) != ours(case["response"], case["ground_truth"])
    ]
    print(f"test table: {len(cases) - len(table_differing)} of {len(cases)} verdicts identical {table_differing}")
    return 0 if not table_differing and ratio >= args.target_ratio else 1


if __name__ == "__main__":
    raise SystemExit(main())
