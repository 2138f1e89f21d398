"""Where a response ends: the stop token ids of a tokenizer and its chat template (shared by training and evaluation).

A base model's declared EOS is often not the token its chat template closes a turn with: Qwen2.5 base models
declare `<|endoftext|>` as EOS, while their ChatML template ends every assistant message with `<|im_end|>`. A
sampler that stops only at EOS lets such a model close its answer and keep going (a new `<|im_start|>user`,
repetitions) until the length limit, and every length-dependent quantity (λ-GRPO's z-scores, |o_i|, the
token-mean normaliser) then measures that junk. So generation stops at

    stop_ids = {tokenizer EOS} ∪ end_of_turn_token_ids(tokenizer) ∪ extra_ids

where the end-of-turn token is read from the chat template the prompts are rendered with, not named by hand:
the template renders a probe assistant message, and the first token after the probe's text is the end of turn
if it is a special token (ChatML `<|im_end|>`, Llama 3 `<|eot_id|>`, Gemma `<end_of_turn>`, Mistral `</s>`). A
template that closes turns with plain text has no such token; then only EOS (and `extra_ids`) stop.

Used by the rollout agent loop (lambda_grpo.agent_loop: training and validation) and by the evaluator
(lambda_grpo.evaluate.generation), so all three stop at the same tokens. The stop token itself stays the last
token of the response, as EOS does: it is sampled, counted in |o_i| and trained on like any other token.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PROBE = "LambdaGrpoEndOfTurnProbe"
"""Assistant text rendered to find what the template writes after a message (plain ASCII, found verbatim)."""


def end_of_turn_token_ids(tokenizer: Any, template_kwargs: Mapping[str, Any] | None = None) -> tuple[int, ...]:
    """The special token the chat template writes right after an assistant message's content, or ().

    Renders [user "1 + 1?", assistant PROBE] with `tokenizer.apply_chat_template(..., **template_kwargs)` (the
    template the tokenizer carries and the keyword arguments the prompts are rendered with, as verl's agent
    loop and the evaluator render them), tokenizes the text after PROBE, and keeps its first token if it is
    special. Raises ValueError if the tokenizer has no chat template or the template drops the assistant's text.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{type(tokenizer).__name__} ({getattr(tokenizer, 'name_or_path', '?')}) has no chat template: the end "
            "of a chat turn cannot be derived; use a tokenizer with one (prompts are chat messages)"
        )
    messages = [{"role": "user", "content": "1 + 1?"}, {"role": "assistant", "content": PROBE}]
    rendered = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=False, **dict(template_kwargs or {})
    )
    if PROBE not in rendered:
        name = getattr(tokenizer, "name_or_path", "?")
        raise ValueError(f"the chat template of {name} drops the assistant's text, so no end of turn: {rendered!r}")
    after = rendered[rendered.rindex(PROBE) + len(PROBE) :]
    ids = tokenizer.encode(after, add_special_tokens=False)
    return (ids[0],) if ids and _is_special(tokenizer, ids[0]) else ()


def turn_stop_token_ids(
    tokenizer: Any, extra_ids: Iterable[int] = (), template_kwargs: Mapping[str, Any] | None = None
) -> list[int]:
    """Sorted, distinct ids that end a response: the tokenizer's EOS, the template's end of turn, `extra_ids`."""
    ids = set(end_of_turn_token_ids(tokenizer, template_kwargs)) | {int(i) for i in extra_ids}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _is_special(tokenizer: Any, token_id: int) -> bool:
    added = getattr(tokenizer, "added_tokens_decoder", {}).get(token_id)
    return token_id in set(tokenizer.all_special_ids) or bool(added is not None and added.special)
