"""Our agent loops stop every request at the chat turn's end; the seeded one also seeds every response."""

import asyncio
import hashlib
from types import SimpleNamespace

import pytest
from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from lambda_grpo.agent_loop import NAME, SEEDED_NAME, ChatTurnAgentLoop, SeededChatTurnAgentLoop, response_seed
from lambda_grpo.tiny_assets import EOS_TOKEN, IM_END, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """The tiny tokenizer: EOS <|endoftext|>, chat turns ending with <|im_end|> (as Qwen2.5 base)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tokenizer(tmp_path_factory.mktemp("tokenizer")))


def _loop(cls, tokenizer, monkeypatch):
    """An agent loop without verl's server plumbing; returns it and what its SingleTurnAgentLoop.run received."""
    seen = {}

    async def fake_run(self, sampling_params, **kwargs):
        seen.update(sampling_params=sampling_params, kwargs=kwargs)
        return "output"

    monkeypatch.setattr(SingleTurnAgentLoop, "run", fake_run)
    loop = object.__new__(cls)
    loop.tokenizer = tokenizer
    loop.rollout_config = SimpleNamespace(seed=42)
    loop.apply_chat_template_kwargs = {}
    return loop, seen


def test_seed_is_a_pure_function_of_rollout_seed_index_and_position():
    expected = int.from_bytes(hashlib.blake2b(b"42/7/3", digest_size=8).digest(), "big") % 2**31
    assert response_seed(42, 7, 3) == expected
    seeds = {response_seed(42, index, position) for index in range(200) for position in range(16)}
    assert len(seeds) == 200 * 16  # every response of every group differs from the others
    assert response_seed(43, 7, 3) != response_seed(42, 7, 3)


def test_registered_under_their_names():
    assert _agent_loop_registry[NAME]["_target_"] == "lambda_grpo.agent_loop.ChatTurnAgentLoop"
    assert _agent_loop_registry[SEEDED_NAME]["_target_"] == "lambda_grpo.agent_loop.SeededChatTurnAgentLoop"


def test_requests_stop_at_the_end_of_the_turn_and_at_eos(tokenizer, monkeypatch):
    loop, seen = _loop(ChatTurnAgentLoop, tokenizer, monkeypatch)
    turn_end, eos = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.convert_tokens_to_ids(EOS_TOKEN)
    assert turn_end != tokenizer.eos_token_id == eos  # the case verl's single_turn_agent gets wrong
    params = {"temperature": 1.0, "top_p": 1.0}
    assert asyncio.run(loop.run(params, index=7, session_id=3, raw_prompt=[])) == "output"
    assert seen["sampling_params"] == {"temperature": 1.0, "top_p": 1.0, "stop_token_ids": sorted([turn_end, eos])}
    assert seen["kwargs"] == {"index": 7, "session_id": 3, "raw_prompt": []}
    assert params == {"temperature": 1.0, "top_p": 1.0}  # the caller's dict is shared by the group: untouched
    # Stop ids already requested are kept.
    asyncio.run(loop.run({"stop_token_ids": [5]}, raw_prompt=[]))
    assert seen["sampling_params"]["stop_token_ids"] == sorted([5, turn_end, eos])


def test_vllm_accepts_the_request_params(tokenizer, monkeypatch):
    """verl's vLLM server builds `SamplingParams(max_tokens=..., **sampling_params)` from exactly these params."""
    from vllm import SamplingParams

    loop, _ = _loop(ChatTurnAgentLoop, tokenizer, monkeypatch)
    params = loop.request_params({"temperature": 1.0, "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0}, {})
    assert tokenizer.convert_tokens_to_ids(IM_END) in SamplingParams(max_tokens=16, **params).stop_token_ids


def test_seeded_loop_adds_the_seed_and_the_stops(tokenizer, monkeypatch):
    loop, seen = _loop(SeededChatTurnAgentLoop, tokenizer, monkeypatch)
    asyncio.run(loop.run({"temperature": 1.0}, index=7, session_id=3, raw_prompt=[]))
    assert seen["sampling_params"]["seed"] == response_seed(42, 7, 3)
    assert tokenizer.convert_tokens_to_ids(IM_END) in seen["sampling_params"]["stop_token_ids"]
    with pytest.raises(KeyError, match="dataset index"):
        asyncio.run(loop.run({}, session_id=0, raw_prompt=[]))
