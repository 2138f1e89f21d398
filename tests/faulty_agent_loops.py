"""Test-only agent loops: `seeded_chat_turn_agent` with the faults real runs meet, made deterministic.

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

from lambda_grpo.agent_loop import SeededChatTurnAgentLoop


@register("failing_seeded_agent")
class FailingFirstResponseAgentLoop(SeededChatTurnAgentLoop):
    """Raises for response 0 of every prompt; the others are sampled as `seeded_chat_turn_agent` samples them."""

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        if int(kwargs["session_id"]) == 0:
            raise RuntimeError("injected rollout failure (tests/faulty_agent_loops.py)")
        return await super().run(sampling_params, **kwargs)


@register("constant_group_seeded_agent")
class ConstantGroupAgentLoop(SeededChatTurnAgentLoop):
    """Every response to a prompt at an even dataset index is sampled as its response 0 (one seed)."""

    def request_params(self, sampling_params: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        if int(fields["index"]) % 2 == 0:
            fields = {**fields, "session_id": 0}
        return super().request_params(sampling_params, fields)
