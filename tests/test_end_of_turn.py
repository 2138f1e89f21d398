"""The stop ids come from the tokenizer's own chat template, whatever token it closes turns with."""

import copy

import pytest

from lambda_grpo.end_of_turn import end_of_turn_token_ids, turn_stop_token_ids
from lambda_grpo.tiny_assets import EOS_TOKEN, IM_END, build_tokenizer

LLAMA3_LIKE = (
    "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>"
    "{% endfor %}"
)
MISTRAL_LIKE = "{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]" \
               "{% else %}{{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
PLAIN_TEXT = "{% for m in messages %}### {{ m['role'] }}:\n{{ m['content'] }}\n\n{% endfor %}"
SWITCHED = "{% for m in messages %}{{ m['content'] }}{% if chat %}<|im_end|>{% else %}\n{% endif %}{% endfor %}"


@pytest.fixture(scope="module")
def chatml(tmp_path_factory):
    """The tiny tokenizer: Qwen2.5 base's layout, EOS <|endoftext|> and ChatML turns ending with <|im_end|>."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tokenizer(tmp_path_factory.mktemp("tokenizer")))


def _with_template(tokenizer, template, extra_special=()):
    other = copy.deepcopy(tokenizer)
    if extra_special:
        other.add_special_tokens({"additional_special_tokens": list(extra_special)})
    other.chat_template = template
    return other


def test_chatml_turns_end_at_im_end_which_is_not_eos(chatml):
    im_end, eos = chatml.convert_tokens_to_ids(IM_END), chatml.convert_tokens_to_ids(EOS_TOKEN)
    assert chatml.eos_token_id == eos != im_end
    assert end_of_turn_token_ids(chatml) == (im_end,)
    assert turn_stop_token_ids(chatml) == sorted([eos, im_end])
    assert turn_stop_token_ids(chatml, [eos, 7]) == sorted([eos, im_end, 7])  # extra ids, no duplicates


def test_other_templates_give_their_own_end_of_turn(chatml):
    llama = _with_template(chatml, LLAMA3_LIKE, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
    assert end_of_turn_token_ids(llama) == (llama.convert_tokens_to_ids("<|eot_id|>"),)
    mistral = _with_template(chatml, MISTRAL_LIKE)
    assert end_of_turn_token_ids(mistral) == (mistral.eos_token_id,)
    assert turn_stop_token_ids(mistral) == [mistral.eos_token_id]


def test_the_template_is_rendered_with_the_prompts_keyword_arguments(chatml):
    switched = _with_template(chatml, SWITCHED)
    assert end_of_turn_token_ids(switched, {"chat": True}) == (chatml.convert_tokens_to_ids(IM_END),)
    assert turn_stop_token_ids(switched, template_kwargs={"chat": False}) == [chatml.eos_token_id]


def test_a_template_that_ends_turns_with_plain_text_stops_at_eos_only(chatml):
    plain = _with_template(chatml, PLAIN_TEXT)
    assert end_of_turn_token_ids(plain) == ()
    assert turn_stop_token_ids(plain) == [plain.eos_token_id]


def test_no_template_or_a_template_without_the_answer_is_an_error(chatml):
    with pytest.raises(ValueError, match="no chat template"):
        end_of_turn_token_ids(_with_template(chatml, None))
    with pytest.raises(ValueError, match="drops the assistant's text"):
        end_of_turn_token_ids(_with_template(chatml, "{% for m in messages %}{{ m['role'] }}{% endfor %}"))
