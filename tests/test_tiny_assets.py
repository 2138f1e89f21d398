"""Tests of lambda_grpo.tiny_assets: determinism, caching, atomicity, tokenizer, model, toy task, reward."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lambda_grpo import tiny_assets
from lambda_grpo.end_of_turn import turn_stop_token_ids
from lambda_grpo.tiny_assets import (
    DATA_SOURCE,
    EOS_TOKEN,
    IM_END,
    LENGTH_CAP_CHARS,
    TinySpec,
    compute_score,
    ensure_tiny_assets,
)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return ensure_tiny_assets(tmp_path_factory.mktemp("tiny_cache"))


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_two_builds_are_byte_identical(assets, tmp_path):
    again = ensure_tiny_assets(tmp_path)
    for first, second in ((assets.model_dir, again.model_dir), (assets.train_file.parent, again.train_file.parent)):
        assert first.name == second.name  # same cache key
        assert _digest_tree(first) == _digest_tree(second)
    assert "model.safetensors" in _digest_tree(again.model_dir)


def test_cached_assets_are_reused_without_rebuilding(assets, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("rebuilt a cached asset")

    for name in ("build_tokenizer", "build_model", "build_toy_task"):
        monkeypatch.setattr(tiny_assets, name, fail)
    assert ensure_tiny_assets(assets.model_dir.parent) == assets


def test_cache_dir_defaults_to_env_variable(monkeypatch, tmp_path):
    monkeypatch.setenv(tiny_assets.CACHE_ENV, str(tmp_path / "c"))
    assert tiny_assets.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv(tiny_assets.CACHE_ENV)
    assert tiny_assets.default_cache_dir() == Path.home() / ".cache" / "lambda_grpo" / "tiny"


def test_spec_change_changes_the_cache_key():
    assert TinySpec().key("model") != TinySpec(num_hidden_layers=1).key("model")
    # The tokenizer does not depend on the model sizes, so it is shared.
    assert TinySpec().key("tokenizer") == TinySpec(num_hidden_layers=1).key("tokenizer")


def test_crash_during_build_leaves_no_asset_behind(assets, tmp_path, monkeypatch):
    def crash(path, *args, **kwargs):
        (Path(path) / "config.json").write_text("{}")  # half-written
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(tiny_assets, "build_model", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ensure_tiny_assets(tmp_path)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert [name for name in leftovers if name.startswith("model-") or ".tmp-" in name] == []
    assert any(name.startswith("tokenizer-") for name in leftovers)  # finished assets stay


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"head_dim": 16, "hidden_size": 16}, "head_dim"),
        ({"hidden_size": 96}, "hidden_size"),
        ({"p_turn_end": 0.6, "p_digit": 0.5}, "p_turn_end"),
        ({"vocab_size": 100}, "vocab_size"),
    ],
)
def test_spec_rejects_bad_values_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TinySpec(**kwargs)


def test_tokenizer_round_trips_and_has_chatml_template(assets):
    from transformers import AutoTokenizer

    for directory in (assets.tokenizer_dir, assets.model_dir):
        tokenizer = AutoTokenizer.from_pretrained(directory)
        text = "What is 7 + 8? Answer: 15. Ünïcödé ✓"
        assert tokenizer.decode(tokenizer.encode(text)) == text
        assert tokenizer.eos_token == tokenizer.pad_token == EOS_TOKEN  # as Qwen2.5 base models
        assert IM_END in tokenizer.all_special_tokens  # the end of a turn, dropped by skip_special_tokens
        assert len(tokenizer) <= TinySpec().vocab_size
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
        )
        assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        ids = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True, return_dict=False)
        assert tokenizer.convert_tokens_to_ids(IM_END) in ids  # special tokens are single ids


def test_model_loads_generates_and_follows_the_unigram_prior(assets):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = TinySpec()
    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir).eval()
    config = json.loads((assets.model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    eos, turn_end = tokenizer.convert_tokens_to_ids(EOS_TOKEN), tokenizer.convert_tokens_to_ids(IM_END)
    assert config["head_dim"] == 64 and config["eos_token_id"] == tokenizer.eos_token_id == eos
    assert json.loads((assets.model_dir / "generation_config.json").read_text())["eos_token_id"] == eos

    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    with torch.no_grad():
        probs = model(torch.tensor([prompt])).logits[0, -1].softmax(-1)
    digits = [tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    assert probs[turn_end].item() == pytest.approx(spec.p_turn_end, rel=0.2)
    assert probs[eos].item() < 1e-9  # EOS never comes: a sampler must stop at the end of the turn
    assert probs[digits].sum().item() == pytest.approx(spec.p_digit, rel=0.2)

    def lengths(stop_ids):
        torch.manual_seed(0)
        out = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=True, num_return_sequences=16,
                             eos_token_id=stop_ids, pad_token_id=eos)
        return [int((row[len(prompt) :] != eos).sum()) for row in out]

    stopped = lengths(turn_stop_token_ids(tokenizer))
    assert min(stopped) < 8 and max(stopped) == 16, stopped  # lengths vary between short and the limit
    assert lengths([eos]) == [16] * 16  # stopping at EOS alone runs every response to the limit


def test_toy_task_parquet_has_verl_schema(assets):
    import pyarrow.parquet as pq

    train = pq.read_table(assets.train_file).to_pylist()
    val = pq.read_table(assets.val_file).to_pylist()
    assert (len(train), len(val)) == (TinySpec().n_train, TinySpec().n_val)
    row = train[0]
    assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
    assert row["data_source"] == DATA_SOURCE and row["ability"] == "math"
    assert row["prompt"][0]["role"] == "user"
    a, b = map(int, row["prompt"][0]["content"].removeprefix("What is ").split("?")[0].split(" + "))
    assert row["reward_model"] == {"style": "rule", "ground_truth": str(a + b)}
    assert [r["extra_info"]["index"] for r in train] == list(range(len(train)))
    assert {r["extra_info"]["split"] for r in val} == {"val"}


@pytest.mark.parametrize(
    "solution, truth, preference, score, acc",
    [
        ("7", "7", "correct", 1.0, 1.0),
        ("7 and 9", "7", "correct", 1.0, 1.0),
        ("the answer is 12", "12", "correct", 1.0, 1.0),
        ("5", "7", "correct", 0.5 * 0.8, 0.0),
        ("17", "7", "correct", 0.0, 0.0),
        ("-3", "7", "correct", 0.0, 0.0),
        ("no digits", "7", "correct", 0.0, 0.0),
        ("", "7", "correct", 0.0, 0.0),
        ("", "7", "short", 1.0, 0.0),
        ("7" * 16, "7", "short", 0.75, 0.0),
        ("x" * 100, "7", "short", 0.0, 0.0),
        ("", "7", "long", 0.0, 0.0),
        ("7" * 16, "7", "long", 0.25, 0.0),
        ("7", "7", "long", 1 / LENGTH_CAP_CHARS, 1.0),
        ("x" * 100, "7", "long", 1.0, 0.0),
    ],
)
def test_compute_score_table(solution, truth, preference, score, acc):
    result = compute_score(DATA_SOURCE, solution, truth, extra_info={}, preference=preference)
    assert result["score"] == pytest.approx(score)
    assert result["acc"] == acc
    assert result["response_chars"] == len(solution)


def test_compute_score_rejects_bad_input():
    with pytest.raises(ValueError, match="preference"):
        compute_score(DATA_SOURCE, "7", "7", preference="medium")
    with pytest.raises(ValueError, match="ground_truth"):
        compute_score(DATA_SOURCE, "7", "seven")


def test_compute_score_loads_through_verl_custom_reward_config():
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    config = OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": "pkg://lambda_grpo.tiny_assets",
                    "name": "compute_score",
                    "reward_kwargs": {"preference": "long"},
                }
            }
        }
    )
    fn = get_custom_reward_fn(config)
    assert fn(data_source=DATA_SOURCE, solution_str="x" * 32, ground_truth="1", extra_info={})["score"] == 0.5


def test_random_model_rewards_differ_within_groups(assets):
    """Under the untrained model, every preference gives some group of 4 samples unequal rewards."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir).eval()
    rows = pq.read_table(assets.train_file).to_pylist()[:4]
    torch.manual_seed(0)
    groups = []
    for row in rows:
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
        out = model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=True, num_return_sequences=4,
                             eos_token_id=turn_stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)
        groups.append((row, [tokenizer.decode(r[len(prompt) :], skip_special_tokens=True) for r in out]))
    for preference in tiny_assets.PREFERENCES:
        spreads = [
            len({compute_score(DATA_SOURCE, s, row["reward_model"]["ground_truth"], preference=preference)["score"] for s in samples})
            for row, samples in groups
        ]
        assert max(spreads) > 1, (preference, groups)


def test_config_resolver_names_the_cached_assets(assets, monkeypatch):
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationResolutionError

    monkeypatch.setenv(tiny_assets.CACHE_ENV, str(assets.model_dir.parent))
    cfg = OmegaConf.create({"model": "${lambda_grpo.tiny:model_dir}", "train": "${lambda_grpo.tiny:train_file}"})
    assert (cfg.model, cfg.train) == (str(assets.model_dir), str(assets.train_file))
    with pytest.raises(InterpolationResolutionError, match="unknown tiny asset 'weights'"):
        OmegaConf.create({"x": "${lambda_grpo.tiny:weights}"}).x


def test_cli_prints_paths(assets):
    result = subprocess.run(
        [sys.executable, "-m", "lambda_grpo.tiny_assets", "--cache-dir", str(assets.model_dir.parent), "--field", "model_dir"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == str(assets.model_dir)
    assert "--cache-dir" in subprocess.run(
        [sys.executable, "-m", "lambda_grpo.tiny_assets", "--help"], capture_output=True, text=True, check=True
    ).stdout
