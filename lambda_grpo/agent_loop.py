"""verl's single-turn agent loop, stopping at the end of the chat turn; optionally seeded per response (verl glue).

verl 0.9.1's `single_turn_agent` sends vLLM only temperature, top-k/p, repetition penalty and logprobs, so a
response ends at the model's declared EOS or at `data.max_response_length`. Base models end a chat turn with
another token (Qwen2.5 base: EOS `<|endoftext|>`, turn end `<|im_end|>`), so their responses would run past the
answer to the length limit. Two loops, registered with verl's agent-loop registry:

- `chat_turn_agent` (every model size): adds `stop_token_ids = turn_stop_token_ids(tokenizer)`
  (lambda_grpo.end_of_turn: EOS ∪ the chat template's end-of-turn token) to every request, training and
  validation alike. verl's vLLM server passes the sampling params through to `vllm.SamplingParams`, and vLLM
  adds the generation config's EOS ids itself. The stop token stays the response's last token (in the
  response mask, counted in its length), as EOS does.
- `seeded_chat_turn_agent` (model_size=tiny_cpu and tiny_gpu): the same, plus a sampling seed of its own for
  every response. verl's loop leaves vLLM's sampler unseeded: all requests draw from one engine-wide random
  stream, so which draws a response gets depends on how the server batched and ordered the requests. Its
  `rollout.full_determinism` instead gives every request the same seed, which makes the n responses to one
  prompt identical. This loop seeds response k of the prompt at dataset index i with

      seed = blake2b("{rollout.seed}/{i}/{k}") mod 2^31

  so a run samples the same responses whatever the timing, and the responses of a group still differ. Logits
  computed in different batches can still differ in the last bits, which on GPUs without batch-invariant
  kernels can change a draw; on the CPU platform the tiny runs are reproducible.

Use: actor_rollout_ref.rollout.agent.default_agent_loop=chat_turn_agent|seeded_chat_turn_agent, with this module
imported in the agent-loop workers through actor_rollout_ref.model.external_lib=lambda_grpo.agent_loop (the
primary config sets both).
"""

from __future__ import annotations

import hashlib
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from lambda_grpo.end_of_turn import turn_stop_token_ids

NAME = "chat_turn_agent"
SEEDED_NAME = "seeded_chat_turn_agent"


def response_seed(rollout_seed: int, index: int, position: int) -> int:
    """The sampling seed of response `position` to the prompt at dataset index `index`."""
    digest = hashlib.blake2b(f"{rollout_seed}/{index}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**31


@register(NAME)
class ChatTurnAgentLoop(SingleTurnAgentLoop):
    """`single_turn_agent` whose requests also stop at the chat template's end of turn."""

    def request_params(self, sampling_params: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        """A new dict: `sampling_params` with the turn's stop ids added to any already there.

        `fields` are the prompt's dataset fields (verl's agent-loop kwargs). The end of turn is read from the
        template as the prompt is rendered (with data.apply_chat_template_kwargs). The caller's dict is shared
        by every response of the group, so it is left untouched.
        """
        stops = turn_stop_token_ids(
            self.tokenizer, sampling_params.get("stop_token_ids") or (), self.apply_chat_template_kwargs
        )
        return {**sampling_params, "stop_token_ids": stops}

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        return await super().run(self.request_params(sampling_params, kwargs), **kwargs)


@register(SEEDED_NAME)
class SeededChatTurnAgentLoop(ChatTurnAgentLoop):
    """`chat_turn_agent` with `seed = response_seed(rollout.seed, index, session_id)` in every request."""

    def request_params(self, sampling_params: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
        if "index" not in fields or "session_id" not in fields:
            raise KeyError(
                f"{SEEDED_NAME} needs each prompt's dataset index ('index', from extra_info.index) and its position "
                f"in the group ('session_id'); got fields {sorted(fields)}"
            )
        seed = response_seed(int(self.rollout_config.seed), int(fields["index"]), int(fields["session_id"]))
        return {**super().request_params(sampling_params, fields), "seed": seed}
