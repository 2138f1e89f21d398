"""The actor's loss function for every scheme of the family (verl glue; runs in the actor's Ray workers).

verl's engine calls `loss_function(model_output=..., data=micro_batch, dp_group=...)` once per micro-batch.
`actor_loss` computes the micro-batch's response weights f_i and hands them to `lambda_grpo.loss`, which runs
verl's own `ppo_loss` with them in `rollout_is_weights`:

- λ-GRPO: f_i(λ) from the group fields the driver wrote into every sample (`lambda_grpo.group_fields`, lengths
  as generated), λ this process's `LambdaAdamW.lam`, differentiable;
- grpo / dapo / dr_grpo: f_i from the row's loss-mask length and μ̄ = T/N of the global mini-batch (verl's
  `batch_num_tokens` / `global_batch_size`, the numbers verl's own aggregation modes divide by).

Install it with verl's `set_loss_fn` RPC (the trainer does this):

    actor_rollout_wg.set_loss_fn(functools.partial(actor_loss, config=actor_config, options=options,
                                                   surrogate=surrogate_for(loss_mode)))
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict

from lambda_grpo.group_fields import GROUP_LENGTHS_KEY, POSITION_KEY
from lambda_grpo.learnable_lambda import active_lambda_optimizer
from lambda_grpo.loss import padded, token_and_row_counts, weighted_ppo_loss
from lambda_grpo.surrogates import Surrogate
from lambda_grpo.weights import WeightOptions, fixed_weights, lambda_weights


def actor_loss(
    config: Any,
    model_output: dict[str, torch.Tensor],
    data: TensorDict,
    dp_group: Any = None,
    *,
    options: WeightOptions,
    surrogate: Surrogate,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl's `ppo_loss` with the policy term weighted per response by f_i of `options.scheme`.

    Args:
        config: the actor's `ActorConfig`.
        model_output, data, dp_group: as verl's engine passes them to `ppo_loss`; for the lambda scheme
            `data` must carry the driver's group fields `lambda_grpo_group_lengths` [B, W] and
            `lambda_grpo_position` [B].
        options: the weight scheme.
        surrogate: how `config.policy_loss.loss_mode` carries the weight (lambda_grpo.surrogates).
    """
    lam = active_lambda_optimizer().lam if options.scheme == "lambda" else 0.0
    return weighted_ppo_loss(
        config, model_output, data, dp_group, row_weights=row_weights(data, options, lam), surrogate=surrogate
    )


def row_weights(data: TensorDict, options: WeightOptions, lam: float | torch.Tensor = 0.0) -> torch.Tensor:
    """f_i [B] of this micro-batch (module docstring); λ is used by the lambda scheme only."""
    if options.scheme != "lambda":
        mask = padded(data["response_mask"]).bool()
        tokens, rows = token_and_row_counts(data, mask)
        return fixed_weights(mask.sum(-1), options, mean_length=tokens / rows)
    missing = [key for key in (GROUP_LENGTHS_KEY, POSITION_KEY) if key not in data.keys()]
    if missing:
        raise KeyError(
            f"micro-batch lacks the group fields {missing}: they are written by the driver "
            "(lambda_grpo.trainer.LambdaGRPOTrainer); train through `python -m lambda_grpo.main`"
        )
    group_lengths = padded(data[GROUP_LENGTHS_KEY])
    position = padded(data[POSITION_KEY]).reshape(-1)
    # The engine runs the loss under autocast; the weights are a handful of float32 ops per response.
    with torch.autocast(device_type=group_lengths.device.type, enabled=False):
        return lambda_weights(group_lengths.float(), position, options, lam)
