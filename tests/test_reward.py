"""compute_score on the shared case table, its result contract, and its use through verl's reward plumbing."""

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lambda_grpo import reward
from lambda_grpo.reward import MAX_INPUT_CHARS, REASONS, VERL_INFRASTRUCTURE_KWARGS, compute_score
from lambda_grpo.reward.verdict import QUICK_MAX_RESPONSE_CHARS
from lambda_grpo.reward.workers import MARGIN_S

CASES_FILE = Path(__file__).with_name("reward_cases.jsonl")
CASES = [json.loads(line) for line in CASES_FILE.read_text().splitlines()]
QUICK_CASES = [case for case in CASES if case["category"] != "pathological"]
PATHOLOGICAL_CASES = [case for case in CASES if case["category"] == "pathological"]
RESULT_TYPES = {"score": float, "acc": float, "pred": str, "reason": str, "verifier": str}


def _assert_contract(result: dict) -> None:
    assert {key: type(value) for key, value in result.items()} == RESULT_TYPES
    assert result["score"] == result["acc"] in (0.0, 1.0)
    assert result["reason"].split(":")[0] in REASONS
    assert result["verifier"] in ("fast", "math_verify", "none")


def test_case_table_covers_the_required_categories():
    categories = {case["category"] for case in CASES}
    assert len(CASES) >= 40
    assert categories == {"equivalent", "wrong", "no_answer", "garbage", "pathological"}
    assert len({case["id"] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", QUICK_CASES, ids=[case["id"] for case in QUICK_CASES])
def test_case_table(case):
    result = compute_score("math500", case["response"], case["ground_truth"])
    _assert_contract(result)
    assert result["score"] == case["expected_score"], result


def test_fast_path_settles_the_common_cases():
    verifiers = {
        case["id"]: compute_score("x", case["response"], case["ground_truth"])["verifier"] for case in QUICK_CASES
    }
    for case_id in ("frac_identical", "units_text_cm", "gsm8k_hashes", "wrong_sqrt", "no_answer_refusal"):
        assert verifiers[case_id] == "fast"
    for case_id in ("symbolic_expand", "decimal_trailing_zero", "wrong_hedging", "no_answer_empty_box"):
        assert verifiers[case_id] == "math_verify"


@pytest.fixture()
def fresh_pool(monkeypatch):
    """compute_score's pool as a fresh process would have it: no worker started yet (closed afterwards)."""
    monkeypatch.setattr(reward, "_pool", None)
    yield
    reward.shared_pool().close()


def _timed_score(solution, ground_truth, timeout_s):
    start = time.perf_counter()
    result = compute_score("x", solution, ground_truth, timeout_s=timeout_s)
    return result, time.perf_counter() - start


# Responses that hold the verifier for seconds to minutes: math-verify's extraction patterns, which the fast path
# runs too, are quadratic on them (the first took 27 s in the caller's process before the fast path moved into
# the workers, whatever timeout_s was).
SLOW_TO_EXTRACT = {"ones": "1 " * 40_000, "open_brackets": "\\[" * 20_000, "lines_of_digits": "1\n" * 40_000}


@pytest.mark.parametrize("case", PATHOLOGICAL_CASES, ids=[case["id"] for case in PATHOLOGICAL_CASES])
def test_pathological_input_returns_within_the_timeout_worker_start_included(case, fresh_pool):
    timeout_s = 1.0
    result, elapsed = _timed_score(case["response"], case["ground_truth"], timeout_s)
    assert elapsed < timeout_s + MARGIN_S
    _assert_contract(result)
    assert (result["score"], result["reason"]) == (0.0, "timeout")
    # The killed worker is replaced: the next call gets a verdict.
    assert compute_score("x", r"\boxed{3} or \boxed{3}", "3")["score"] == 1.0


@pytest.mark.parametrize("name", SLOW_TO_EXTRACT)
def test_slow_to_extract_input_returns_within_the_timeout(name):
    compute_score("x", r"\boxed{1}", "1")  # a warm worker
    result, elapsed = _timed_score(SLOW_TO_EXTRACT[name], "1", timeout_s=1.0)
    assert elapsed < 1.0 + MARGIN_S
    _assert_contract(result)
    assert result["score"] == 0.0


# Responses at the limits of the caller's own fast path (verdict.quick_verdict), shaped to be slow for it.
AT_QUICK_LIMITS = {
    "digits": "1 " * 8000 + r"\boxed{" + "1 " * 120 + "}",
    "thousands": "1," * 8100 + r"\boxed{1}",
    "dollars": "$$" + "1 " * 8000 + r"\boxed{" + r"\dfrac{,\}\frac{\infty!\$ -!" * 8 + "}",
    "brackets": "\\[" * 8100 + r"\boxed{\frac{1}{2}}",
}


@pytest.mark.parametrize("name", AT_QUICK_LIMITS)
def test_input_at_the_callers_limits_returns_within_the_timeout(name):
    assert len(AT_QUICK_LIMITS[name]) <= QUICK_MAX_RESPONSE_CHARS
    compute_score("x", r"\boxed{1}", "1")  # warm: the margin is the whole budget here
    result, elapsed = _timed_score(AT_QUICK_LIMITS[name], "2", timeout_s=0.05)
    assert elapsed < 0.05 + MARGIN_S
    _assert_contract(result)


@pytest.mark.parametrize(
    "solution",
    [
        "x " + "7" * 4301,  # more digits than Python's int-string limit: raised SympifyError in today's main
        "7" * 50_000,
        r"\boxed{" + "9" * 5000 + "}",
        "#### -09",
        "The answer is ٣",
        "\\boxed{" * 3000,
        "}" * 3000 + r"\boxed{1}",
        "\x00\ud800 \\boxed{\x00}",
        "",
    ],
)
def test_odd_responses_never_raise(solution):
    result = compute_score("x", solution, "2", timeout_s=2.0)
    _assert_contract(result)
    assert result["score"] == 0.0


def test_overlong_inputs_are_not_verified():
    long_response = "x" * MAX_INPUT_CHARS + r"\boxed{1}"
    for solution, truth in ((long_response, "1"), (r"\boxed{1}", "1" * (MAX_INPUT_CHARS + 1))):
        result = compute_score("x", solution, truth)
        assert (result["score"], result["reason"], result["verifier"]) == (0.0, "invalid_input", "none")


def test_shared_pool_is_per_process(monkeypatch):
    first = reward.shared_pool()
    assert reward.shared_pool() is first
    monkeypatch.setattr(reward, "_pool", first)  # restored afterwards
    monkeypatch.setattr(reward, "_pool_pid", -1)  # as seen from a forked child
    assert reward.shared_pool() is not first


def test_concurrent_calls_from_threads_with_one_hanging():
    """verl calls compute_score from executor threads; math-verify alone cannot time out there."""
    jobs = [(case["response"], case["ground_truth"], case["expected_score"]) for case in QUICK_CASES[:24]]
    hanging = PATHOLOGICAL_CASES[0]
    with ThreadPoolExecutor(max_workers=4) as pool:
        hang = pool.submit(compute_score, "x", hanging["response"], hanging["ground_truth"], timeout_s=1.0)
        futures = [(pool.submit(compute_score, "x", response, truth), expected) for response, truth, expected in jobs]
        assert [future.result()["score"] for future, _ in futures] == [expected for _, expected in futures]
        assert hang.result()["reason"] == "timeout"


@pytest.mark.parametrize(
    "solution, ground_truth",
    [(None, "1"), (b"\\boxed{1}", "1"), ("\\boxed{1}", None), ("\\boxed{1}", "   "), ("\\boxed{1}", ["1"])],
)
def test_invalid_inputs_score_zero_without_raising(solution, ground_truth):
    result = compute_score("x", solution, ground_truth)
    _assert_contract(result)
    assert (result["score"], result["reason"], result["verifier"]) == (0.0, "invalid_input", "none")


def test_numeric_ground_truth_is_converted():
    assert compute_score("x", r"\boxed{72}", 72)["score"] == 1.0
    assert compute_score("x", r"\boxed{0.5}", 0.5)["score"] == 1.0


def test_keyword_arguments():
    infrastructure = {name: None for name in VERL_INFRASTRUCTURE_KWARGS}
    assert compute_score("x", r"\boxed{3}", "3", extra_info={"index": 0}, **infrastructure)["score"] == 1.0
    with pytest.raises(TypeError, match="timeout"):
        compute_score("x", r"\boxed{3}", "3", timeout=2.0)
    with pytest.raises(ValueError, match="timeout_s"):
        compute_score("x", r"\boxed{3}", "3", timeout_s=0)


def test_loaded_by_verl_as_custom_reward_function():
    """verl resolves `pkg://lambda_grpo.reward` and merges reward_kwargs into every call."""
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": "pkg://lambda_grpo.reward",
                    "name": "compute_score",
                    "reward_kwargs": {"timeout_s": 3.0},
                }
            }
        }
    )
    reward_fn = get_custom_reward_fn(config)
    result = reward_fn(data_source="gsm8k", solution_str="#### 72", ground_truth="72", extra_info={})
    assert result["score"] == 1.0
    misspelt = OmegaConf.merge(config, {"reward": {"custom_reward_function": {"reward_kwargs": {"timeout": 1}}}})
    with pytest.raises(TypeError):  # verl passes reward_kwargs through: a misspelt key fails loudly
        get_custom_reward_fn(misspelt)(data_source="gsm8k", solution_str="#### 72", ground_truth="72", extra_info={})


def test_naive_reward_manager_turns_extra_keys_into_reward_extra_info(tmp_path):
    """verl's NaiveRewardManager decodes the response, calls us in an executor thread, keeps our keys."""
    import numpy as np
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoTokenizer
    from verl import DataProto
    from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager

    from lambda_grpo.tiny_assets import ensure_tiny_assets

    tokenizer = AutoTokenizer.from_pretrained(ensure_tiny_assets(tmp_path).tokenizer_dir)
    manager = NaiveRewardManager(OmegaConf.create({}), tokenizer, compute_score)
    outputs = []
    for response, truth in ((r"So \boxed{x^2+2x+1}.", "(x+1)^2"), (r"So \boxed{7}.", "8")):
        prompt_ids = tokenizer("What is it?", return_tensors="pt")["input_ids"]
        response_ids = tokenizer(response, return_tensors="pt")["input_ids"]
        data = DataProto.from_dict(
            tensors={
                "prompts": prompt_ids,
                "responses": response_ids,
                "attention_mask": torch.ones(1, prompt_ids.shape[1] + response_ids.shape[1], dtype=torch.long),
            },
            non_tensors={
                "data_source": np.array(["math500"], dtype=object),
                "reward_model": np.array([{"style": "rule", "ground_truth": truth}], dtype=object),
                "extra_info": np.array([{"index": 0}], dtype=object),
            },
        )
        outputs.append(manager.loop.run_until_complete(manager.run_single(data)))
    assert [output["reward_score"] for output in outputs] == [1.0, 0.0]
    assert [output["reward_extra_info"]["pred"] for output in outputs] == ["x^2+2x+1", "7"]
    assert outputs[0]["reward_extra_info"].keys() == outputs[1]["reward_extra_info"].keys() == RESULT_TYPES.keys()


def test_the_first_call_of_a_process_is_within_the_bound_too():
    """Nothing is imported or started yet: the verifier's import (about 1 s) and the worker's start must not
    hold the first call beyond its timeout."""
    code = (
        "import time; from lambda_grpo.reward import compute_score; start = time.perf_counter(); "
        "result = compute_score('x', r'So \\boxed{1}.', '1', timeout_s=0.2); "
        "print(time.perf_counter() - start, result['reason'])"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    elapsed, reason = output.stdout.split()
    assert float(elapsed) < 0.2 + MARGIN_S and reason in ("timeout", "match")
