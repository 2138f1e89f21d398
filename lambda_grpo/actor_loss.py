"""The actor's loss function for every scheme of the family (verl glue; runs in the actor's Ray workers).

verl's engine calls `loss_function(config=..., model_output=..., data=micro_batch, dp_group=...)` once per
micro-batch. `weighted_ppo_loss` computes the micro-batch's response weights f_i(λ) from the group fields
the driver wrote into every sample (`lambda_grpo.group_fields`), binds them, and runs verl's own
`ppo_loss` unchanged: the policy term is the registered `lambda_grpo` loss (which picks the bound weights
up), while entropy and KL terms, `global_batch_info` and the metric conventions stay exactly verl's.

Install it with verl's `set_loss_fn` RPC (the trainer does this):

    actor_rollout_wg.set_loss_fn(functools.partial(weighted_ppo_loss, config=actor_config, options=options))
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict
from verl.workers.utils.losses import ppo_loss

from lambda_grpo.group_fields import GROUP_LENGTHS_KEY, POSITION_KEY
from lambda_grpo.learnable_lambda import active_lambda_optimizer
from lambda_grpo.loss import LOSS_NAME, sample_weights_bound
from lambda_grpo.weights import WeightOptions, weights_from_group_lengths


def weighted_ppo_loss(
    config: Any,
    model_output: dict[str, torch.Tensor],
    data: TensorDict,
    dp_group: Any = None,
    *,
    options: WeightOptions,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """verl's `ppo_loss` with the `lambda_grpo` policy term weighted by f_i(λ) of `options.scheme`.

    Args:
        config: the actor's `ActorConfig`; its `policy_loss.loss_mode` must be "lambda_grpo".
        model_output, data, dp_group: as verl's engine passes them to `ppo_loss`; `data` must carry
            the driver's group fields `lambda_grpo_group_lengths` [B, W] and `lambda_grpo_position` [B].
        options: the weight scheme; for "lambda", λ is this process's `LambdaAdamW.lam` (with gradient).
    """
    loss_mode = config.policy_loss.get("loss_mode", "vanilla")
    if loss_mode != LOSS_NAME:
        raise ValueError(
            f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode!r}: the λ-GRPO loss path only applies its "
            f"weights through the {LOSS_NAME!r} policy loss; set it to {LOSS_NAME!r}"
        )
    missing = [key for key in (GROUP_LENGTHS_KEY, POSITION_KEY) if key not in data.keys()]
    if missing:
        raise KeyError(
            f"micro-batch lacks the group fields {missing}: they are written by the driver "
            "(lambda_grpo.trainer.LambdaGRPOTrainer); train through `python -m lambda_grpo.main`"
        )
    group_lengths = _dense(data[GROUP_LENGTHS_KEY])
    position = _dense(data[POSITION_KEY]).reshape(-1)
    lam = active_lambda_optimizer().lam if options.scheme == "lambda" else 0.0
    # The engine runs the loss under autocast; the weights are a handful of float32 ops per response.
    with torch.autocast(device_type=group_lengths.device.type, enabled=False):
        sample_weights = weights_from_group_lengths(group_lengths.float(), position, options, lam)
    with sample_weights_bound(sample_weights):
        return ppo_loss(config, model_output, data, dp_group)


def _dense(tensor: torch.Tensor) -> torch.Tensor:
    """A per-sample field as a regular tensor (TransferQueue may hand fixed-size fields back nested)."""
    return tensor.to_padded_tensor(0) if tensor.is_nested else tensor
