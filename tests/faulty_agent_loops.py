"""Test-only agent loops: `seeded_single_turn_agent` with the faults real runs meet, made deterministic.

- `failing_seeded_agent`: the first response of every prompt fails. verl 0.9.1's V1 sync replay buffer keeps a
  group whose session failed, with the responses that did finish (it refills failed groups only with
  trainer.v1.sampler.sync_refill_failed_groups=true), so every step's batch holds n − 1 responses per prompt
  and verl pads it back to a multiple of the mini-batch with its zero-mask `pad…` rows
  (`upsample_batch_to_divisible_size`): the batches a real run makes when rollouts fail.
- `constant_group_seeded_agent`: the prompts at even dataset indices sample all their responses with one seed,
  so the group's responses, hence its rewards, are identical: DAPO's dynamic sampling
  (algorithm.filter_groups) must drop those groups and replace them.

Use (tests/ on PYTHONPATH, so verl's processes can import it):
    actor_rollout_ref.model.external_lib=faulty_agent_loops
    actor_rollout_ref.rollout.agent.default_agent_loop=failing_seeded_agent | constant_group_seeded_agent
"""

from __future__ import annotations

from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from lambda_grpo.seeded_agent_loop import SeededSingleTurnAgentLoop, response_seed


@register("failing_seeded_agent")
class FailingFirstResponseAgentLoop(SeededSingleTurnAgentLoop):
    """Raises for response 0 of every prompt; the others are sampled as `seeded_single_turn_agent` samples them."""

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        if int(kwargs["session_id"]) == 0:
            raise RuntimeError("injected rollout failure (tests/faulty_agent_loops.py)")
        return await super().run(sampling_params, **kwargs)


@register("constant_group_seeded_agent")
class ConstantGroupAgentLoop(SeededSingleTurnAgentLoop):
    """Every response to a prompt at an even dataset index is sampled as its response 0 (one seed)."""

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        index = int(kwargs["index"])
        if index % 2:
            return await super().run(sampling_params, **kwargs)
        seed = response_seed(int(self.rollout_config.seed), index, 0)
        return await SingleTurnAgentLoop.run(self, {**sampling_params, "seed": seed}, **kwargs)
