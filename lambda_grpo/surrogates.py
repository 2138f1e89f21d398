"""Which of verl 0.9.1's policy losses carry λ-GRPO's per-response weight, and how (pure; no verl import).

The user picks the policy surrogate as with verl, `actor_rollout_ref.actor.policy_loss.loss_mode=<mode>`;
the `algo` group picks the aggregation on top of it. The weight reaches the surrogate through the one
per-token input every verl policy loss receives: verl's `ppo_loss` forwards the micro-batch's
`rollout_is_weights` field to it (lambda_grpo.loss puts f_i there, multiplied into the real rollout-correction
IS weights when there are any). So a surrogate carries the weight iff it multiplies `rollout_is_weights` into
its per-token loss, linearly, before aggregating. Read in verl 0.9.1's `trainer/ppo/core_algos.py`:

    loss_mode   per-token loss ℓ_it (r = π/π_old)            aggregation           λ learns from
    vanilla     max(−A·r, −A·clip(r)), dual clip              actor.loss_agg_mode   the loss
    gspo        max(−A·s_i, −A·clip(s_i)), s_i sequence ratio actor.loss_agg_mode   the loss
    sapo        −gate_τ(r)·A                                  seq-mean-token-mean   the loss
    clip_cov    max(−A·r, −A·clip(r)) · corr                  actor.loss_agg_mode   the loss
    kl_cov      −A·r (+ coef·|log r| on top-k cov. tokens)    actor.loss_agg_mode   the loss
    gpg         −A·log π                                      actor.loss_agg_mode   the ratio objective
    cispo       −sg(clip(r))·A·log π                          actor.loss_agg_mode   the ratio objective
    dro         −(A·log π − β/2·(log r)²)                     actor.loss_agg_mode   the ratio objective
    dppo_tv     −A·sg(min(r, c))·log π·valid                  actor.loss_agg_mode   the ratio objective
    dppo_kl     −A·sg(min(r, c))·log π·valid                  actor.loss_agg_mode   the ratio objective
    geo_mean    refused: a plain torch.mean over the micro-batch's rows, and the log of the weights
    bypass_mode refused: it ignores rollout_is_weights (it computes its own)

(every one of the first ten multiplies ℓ_it by rollout_is_weights just before `agg_loss`).

Aggregation. `sapo` ignores `actor.loss_agg_mode` and always aggregates by seq-mean-token-mean; the loss
rescales the weight so that the `algo` group still decides: algo=grpo over sapo is verl's sapo exactly,
algo=dapo (λ = 0) is SAPO's token loss under token-mean, and λ-GRPO is the family's loss over SAPO's token
loss. Every other surrogate aggregates by `actor.loss_agg_mode`, which start-up fixes to token-mean.

What λ learns from. λ is trained by the loss the policy minimises when that loss's value is a policy
objective (−A times an importance weight: the first five). The other five are REINFORCE-form: their value
−A·c·log π only has the right *gradient* in θ; its value grows with the response's negative log-likelihood
and has the opposite sign of the objective (the same batch would push λ the other way than under vanilla).
For them λ follows the importance-weighted policy objective of the same micro-batch, −Σ f_i Σ_t w_it·r_it·A_it
/ T (w: rollout-correction IS weights), evaluated on the same tensors and detached from the policy, which
on-policy (r = 1) gives λ exactly the gradient vanilla gives it. The policy's loss value and gradient stay
the surrogate's own.

Custom policy losses registered by other plugins are refused unless listed in
`lambda_grpo.custom_surrogates`: listing one vouches for the contract — verl's `PolicyLossFn` signature,
`rollout_is_weights` multiplied into the per-token loss linearly before aggregating, and aggregation by the
`loss_agg_mode` it is passed with `**config.global_batch_info` (`agg_loss`). λ learns from the ratio objective
for them, which asks nothing of the custom loss's value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

TOKEN_MEAN = "token-mean"
SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"
LAMBDA_FROM_LOSS = "loss"
LAMBDA_FROM_RATIO_OBJECTIVE = "ratio_objective"


@dataclass(frozen=True)
class Surrogate:
    """How one policy loss carries the weight.

    Attributes:
        loss_mode: verl's registry name.
        aggregation: the agg mode the loss applies whatever `actor.loss_agg_mode` says, or None when it
            applies `actor.loss_agg_mode`.
        lambda_objective: LAMBDA_FROM_LOSS or LAMBDA_FROM_RATIO_OBJECTIVE (module docstring).
    """

    loss_mode: str
    aggregation: str | None = None
    lambda_objective: str = LAMBDA_FROM_LOSS


SURROGATES = {
    surrogate.loss_mode: surrogate
    for surrogate in (
        Surrogate("vanilla"),
        Surrogate("gspo"),
        Surrogate("sapo", aggregation=SEQ_MEAN_TOKEN_MEAN),
        Surrogate("clip_cov"),
        Surrogate("kl_cov"),
        *(Surrogate(name, lambda_objective=LAMBDA_FROM_RATIO_OBJECTIVE)
          for name in ("gpg", "cispo", "dro", "dppo_tv", "dppo_kl")),
    )
}

REFUSED = {
    "geo_mean": "it ignores loss_agg_mode and global_batch_info (a plain torch.mean over the micro-batch's "
    "rows), so its value depends on how the batch is split and no per-response weight can make it the "
    "family's global loss; it also takes the log of rollout_is_weights (a geometric mean per sequence)",
    "bypass_mode": "it ignores rollout_is_weights (it computes its own IS weights from rollout log-probs), so "
    "the weights would silently not apply; with algorithm.rollout_correction.bypass_mode=true keep a "
    "surrogate such as vanilla",
}


class UnsupportedSurrogate(ValueError):
    """A loss_mode that cannot carry the per-response weight; the message says why."""


def surrogate_for(loss_mode: str, custom_surrogates: Iterable[str] = ()) -> Surrogate:
    """The Surrogate of `loss_mode`, or UnsupportedSurrogate saying why it cannot carry the weight."""
    if loss_mode in REFUSED:
        raise UnsupportedSurrogate(f"{loss_mode!r} cannot carry λ-GRPO's per-response weight: {REFUSED[loss_mode]}")
    if loss_mode in SURROGATES:
        return SURROGATES[loss_mode]
    if loss_mode in set(custom_surrogates):
        return Surrogate(loss_mode, lambda_objective=LAMBDA_FROM_RATIO_OBJECTIVE)
    raise UnsupportedSurrogate(
        f"{loss_mode!r} is not one of the surrogates λ-GRPO was verified on ({', '.join(SURROGATES)}). A policy "
        "loss registered by another plugin is accepted once listed in lambda_grpo.custom_surrogates, which "
        "vouches that it multiplies rollout_is_weights into its per-token loss before aggregating with the "
        "loss_agg_mode and global_batch_info it is given (see lambda_grpo/surrogates.py)"
    )
