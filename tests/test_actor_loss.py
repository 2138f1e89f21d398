"""The actor's loss path, called the way verl 0.9.1's engine calls it, on a tiny random causal LM.

The batch is a TensorDict built with verl's `tensordict_utils`, split by verl's own `prepare_micro_batches`
(fixed-size and token-balanced dynamic micro-batches), with `dp_size` / `batch_num_tokens` /
`global_batch_size` attached as verl's FSDP engine attaches them, and two of verl's zero-mask `pad…` rows
and an empty response. The loss function is the partial the trainer installs with `set_loss_fn`; the
model's per-token log-probs enter in the unpadded layout the engine produces, and λ is the one of the
process's `LambdaAdamW`.
"""

import functools
import math

import pytest
import torch
import transformers
from verl.utils import tensordict_utils as tu
from verl.workers.config import ActorConfig, PolicyLossConfig
from verl.workers.engine.utils import prepare_micro_batches

from verl.workers.utils.losses import ppo_loss

from lambda_grpo.actor_loss import actor_loss
from lambda_grpo.group_fields import group_fields
from lambda_grpo.learnable_lambda import LambdaAdamW
from lambda_grpo.surrogates import surrogate_for
from lambda_grpo.weights import WeightOptions, response_weights

PROMPT_LEN, MAX_RESPONSE, VOCAB, N = 3, 7, 50, 4
PAD = "pad0f3a"
# Two interleaved groups of 4, one of 2 with an empty response ("q3"), and two of verl's padding rows.
RESPONSE_LENGTHS = [7, 2, 5, 0, 3, 6, 1, 4, 7, 5, 0, 0]
UIDS = ["q1", "q2", "q1", PAD, "q2", "q2", "q1", "q1", "q2", "q3", "q3", PAD]


def tiny_model():
    torch.manual_seed(0)
    config = transformers.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return transformers.Qwen2ForCausalLM(config).float()


def token_log_probs(model, input_ids, attention_mask):
    """log π(x_{t+1} | x_≤t) at every valid position t, concatenated over sequences (the engine's rmpad layout)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    next_log_probs = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    next_log_probs = torch.cat([next_log_probs, torch.zeros_like(next_log_probs[:, :1])], dim=1)
    return next_log_probs[attention_mask.bool()]


def make_batch(model, use_dynamic_bsz):
    generator = torch.Generator().manual_seed(1)
    batch = len(RESPONSE_LENGTHS)
    response_mask = (torch.arange(MAX_RESPONSE) < torch.tensor(RESPONSE_LENGTHS)[:, None]).long()
    prompts = torch.randint(0, VOCAB, (batch, PROMPT_LEN), generator=generator)
    responses = torch.randint(0, VOCAB, (batch, MAX_RESPONSE), generator=generator) * response_mask
    input_ids = torch.cat([prompts, responses], dim=1)
    attention_mask = torch.cat([torch.ones_like(prompts), response_mask], dim=1)
    with torch.no_grad():
        flat = token_log_probs(model, input_ids, attention_mask)
    old_log_probs = _response_part(flat, attention_mask) + 0.05 * torch.randn(batch, MAX_RESPONSE, generator=generator)
    advantages = torch.randn(batch, 1, generator=generator).expand(batch, MAX_RESPONSE) * response_mask
    tensors = {
        "prompts": prompts, "responses": responses, "input_ids": input_ids, "attention_mask": attention_mask,
        "position_ids": torch.cumsum(attention_mask, 1) - 1, "response_mask": response_mask,
        "loss_mask": response_mask, "old_log_probs": old_log_probs * response_mask, "advantages": advantages,
        **group_fields(UIDS, response_mask, group_size=N),
    }
    data = tu.get_tensordict(tensors, non_tensor_dict={
        "use_dynamic_bsz": use_dynamic_bsz, "micro_batch_size_per_gpu": 2, "max_token_len_per_gpu": 24,
        # what FSDPEngine.forward_backward_batch attaches before splitting (one data-parallel rank)
        "batch_num_tokens": int(response_mask.sum()), "dp_size": 1, "global_batch_size": batch,
    })
    return data


def _response_part(flat, attention_mask):
    """The engine's no_padding_2_padding for log-probs: the response slice of each sequence, right-padded."""
    out, offset = [], 0
    for row in attention_mask:
        length = int(row.sum())
        response = length - PROMPT_LEN
        out.append(torch.nn.functional.pad(flat[offset + length - response - 1: offset + length - 1],
                                           (0, MAX_RESPONSE - response)))
        offset += length
    return torch.stack(out)


def actor_config(loss_mode="vanilla"):
    return ActorConfig(strategy="fsdp2", rollout_n=N, ppo_micro_batch_size_per_gpu=2, clip_ratio=0.2,
                       use_kl_loss=False, entropy_coeff=0.0, policy_loss=PolicyLossConfig(loss_mode=loss_mode))


def train_step(model, optimizer, data, loss_fn):
    """One mini-batch as verl's engine runs it: zero_grad, per micro-batch forward+backward, one step."""
    optimizer.zero_grad()
    micro_batches, _ = prepare_micro_batches(data)
    total = 0.0
    for micro_batch in micro_batches:
        log_probs = token_log_probs(model, micro_batch["input_ids"], micro_batch["attention_mask"])
        loss, metrics = loss_fn(model_output={"log_probs": log_probs}, data=micro_batch, dp_group=None)
        loss.backward()
        total += loss.item()
    optimizer.step()
    return total, micro_batches, metrics


def whole_batch_reference(model, data, loss_mode, lam):
    """verl's ppo_loss on the whole, unsplit batch with f(λ) of `response_weights` in rollout_is_weights."""
    weights = response_weights(torch.tensor(RESPONSE_LENGTHS), UIDS, "lambda", lam=lam)
    reference = data.copy()
    reference["rollout_is_weights"] = weights.unsqueeze(-1).expand(data["response_mask"].shape)
    flat = token_log_probs(model, data["input_ids"], data["attention_mask"])
    # The λ gradient of vanilla's own value: for cispo λ learns from the ratio objective, which on a batch
    # this close to on-policy (|log r| ≤ 0.15, inside the clip range) is vanilla's value.
    return ppo_loss(actor_config("vanilla" if loss_mode == "cispo" else loss_mode), {"log_probs": flat}, reference)[0]


@pytest.mark.parametrize("loss_mode", ["vanilla", "cispo"])
@pytest.mark.parametrize("use_dynamic_bsz", [False, True])
def test_one_step_updates_model_and_lambda_as_the_whole_batch_would(use_dynamic_bsz, loss_mode):
    """Groups split over micro-batches, verl's padding rows and an empty response in the batch: λ's gradient
    is finite and equals the whole batch's, no update is skipped."""
    model = tiny_model()
    optimizer = LambdaAdamW(model.parameters(), lr=1e-2, lambda_init=0.5, lambda_lr=0.1)
    data = make_batch(model, use_dynamic_bsz)
    loss_fn = functools.partial(actor_loss, config=actor_config(loss_mode), options=WeightOptions("lambda", max_group_size=N),
                                surrogate=surrogate_for(loss_mode))
    lam = torch.tensor(0.5, requires_grad=True)
    reference = whole_batch_reference(model, data, loss_mode, lam)
    (reference_lam_grad,) = torch.autograd.grad(reference, lam)

    before = [p.detach().clone() for p in model.parameters()]
    total, micro_batches, metrics = train_step(model, optimizer, data, loss_fn)
    assert len(micro_batches) > 1  # the groups really were split
    if not use_dynamic_bsz:  # one micro-batch holds nothing but the empty response
        assert any(int(micro_batch["response_mask"].sum()) == 0 for micro_batch in micro_batches)
    if loss_mode == "vanilla":
        assert total == pytest.approx(reference.item(), rel=1e-5, abs=1e-7)
    report = optimizer.take_step_report()
    assert report["skips"] == [] and len(report["grads"]) == 1 and math.isfinite(report["grads"][0])
    assert report["grads"][0] == pytest.approx(reference_lam_grad.item(), rel=1e-4, abs=1e-7)
    assert abs(report["grads"][0]) > 1e-5 and optimizer.lam.item() != 0.5
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert {"actor/pg_loss", "actor/pg_clipfrac"} <= set(metrics)


def test_loss_path_refuses_a_batch_without_group_fields():
    model = tiny_model()
    LambdaAdamW(model.parameters())
    data = make_batch(model, use_dynamic_bsz=False)
    del data["lambda_grpo_group_lengths"]
    loss_fn = functools.partial(actor_loss, config=actor_config(), options=WeightOptions("lambda"),
                                surrogate=surrogate_for("vanilla"))
    with pytest.raises(KeyError, match="lambda_grpo_group_lengths"):
        loss_fn(model_output={"log_probs": torch.zeros(1)}, data=data, dp_group=None)
