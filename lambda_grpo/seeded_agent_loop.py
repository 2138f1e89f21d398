"""verl's single-turn agent loop with a sampling seed of its own for every response (verl glue).

verl's `single_turn_agent` leaves vLLM's sampler unseeded: all requests draw from one engine-wide random
stream, so which draws a response gets depends on how the server happened to batch and order the requests,
and two runs of the same config pair the same draws with different prompts. Its `rollout.full_determinism`
instead gives every request the same seed, which makes the n responses to one prompt identical. This loop
seeds response k of the prompt at dataset index i with

    seed = blake2b("{rollout.seed}/{i}/{k}") mod 2^31

so a run samples the same responses whatever the timing, and the responses of a group still differ.
Logits computed in different batches can still differ in the last bits, which on GPUs without batch-invariant
kernels can change a draw; on the CPU platform the tiny runs are reproducible.

Use: actor_rollout_ref.rollout.agent.default_agent_loop=seeded_single_turn_agent, and import this module in
the agent-loop workers with actor_rollout_ref.model.external_lib=lambda_grpo.seeded_agent_loop
(model_size=tiny_cpu sets both).
"""

from __future__ import annotations

import hashlib
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

NAME = "seeded_single_turn_agent"


def response_seed(rollout_seed: int, index: int, position: int) -> int:
    """The sampling seed of response `position` to the prompt at dataset index `index`."""
    digest = hashlib.blake2b(f"{rollout_seed}/{index}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**31


@register(NAME)
class SeededSingleTurnAgentLoop(SingleTurnAgentLoop):
    """`single_turn_agent` with `sampling_params["seed"] = response_seed(rollout.seed, index, session_id)`."""

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        if "index" not in kwargs or "session_id" not in kwargs:
            raise KeyError(
                f"{NAME} needs each prompt's dataset index ('index', from extra_info.index) and its position in "
                f"the group ('session_id'); got fields {sorted(kwargs)}"
            )
        seed = response_seed(int(self.rollout_config.seed), int(kwargs["index"]), int(kwargs["session_id"]))
        return await super().run({**sampling_params, "seed": seed}, **kwargs)
