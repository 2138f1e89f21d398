"""The seeded agent loop gives every response its own reproducible sampling seed."""

import asyncio
import hashlib
from types import SimpleNamespace

import pytest
from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from lambda_grpo.seeded_agent_loop import NAME, SeededSingleTurnAgentLoop, response_seed


def test_seed_is_a_pure_function_of_rollout_seed_index_and_position():
    expected = int.from_bytes(hashlib.blake2b(b"42/7/3", digest_size=8).digest(), "big") % 2**31
    assert response_seed(42, 7, 3) == expected
    seeds = {response_seed(42, index, position) for index in range(200) for position in range(16)}
    assert len(seeds) == 200 * 16  # every response of every group differs from the others
    assert response_seed(43, 7, 3) != response_seed(42, 7, 3)


def test_registered_under_its_name():
    assert _agent_loop_registry[NAME]["_target_"].endswith("seeded_agent_loop.SeededSingleTurnAgentLoop")


def test_run_adds_the_seed_and_keeps_the_rest(monkeypatch):
    seen = {}

    async def fake_run(self, sampling_params, **kwargs):
        seen.update(sampling_params=sampling_params, kwargs=kwargs)
        return "output"

    monkeypatch.setattr(SingleTurnAgentLoop, "run", fake_run)
    loop = object.__new__(SeededSingleTurnAgentLoop)
    loop.rollout_config = SimpleNamespace(seed=42)
    params = {"temperature": 1.0, "top_p": 1.0}
    assert asyncio.run(loop.run(params, index=7, session_id=3, raw_prompt=[])) == "output"
    assert seen["sampling_params"] == {"temperature": 1.0, "top_p": 1.0, "seed": response_seed(42, 7, 3)}
    assert params == {"temperature": 1.0, "top_p": 1.0}  # the caller's dict is shared by the group: untouched
    with pytest.raises(KeyError, match="dataset index"):
        asyncio.run(loop.run(params, session_id=0, raw_prompt=[]))
