"""λ as a trained parameter of the actor's optimizer (pure torch + torch.distributed; no verl import).

λ lives outside FSDP: nothing in verl synchronises, clips, saves or restores it. `LambdaAdamW` is the
actor's AdamW with λ added as one extra parameter group, and owns everything λ needs:

- **Gradient sync.** Before every step λ's gradient is averaged over the data-parallel group
  (all-reduce SUM / world size). verl scales each rank's loss by dp_size/T_global and lets FSDP *average*
  the model's gradients, so the average is the gradient of the global-batch loss, for λ as for the model.
  Every rank joins the all-reduce (a rank whose micro-batches never touched λ contributes 0), so no rank
  can deadlock or drift.
- **Skipped updates.** If the averaged gradient is not finite (NaN/inf on any rank), λ is left unchanged
  on every rank, exactly as verl's engine skips the model update when its grad norm is not finite. When the
  model's grad norm is not finite verl does not call `step` at all and zeroes the gradients instead; a λ
  gradient that reaches `zero_grad` unconsumed is counted as a skipped update too. Every skip is recorded
  with its cause, so the driver can warn and stop a run whose λ no longer learns (`take_step_report`).
- **Clipping.** The actor's `clip_grad` covers `module.parameters()` only, so λ is not clipped: λ is a
  single scalar under Adam, whose step is ≈ lr whatever the gradient's scale, and `bounds` clamp it after
  each step. Folding it into the model's norm would couple λ's step size to billions of unrelated
  gradients.
- **Learning rate.** λ has its own lr, no weight decay, and by default ignores the actor's LR schedule
  (warm-up, decay): verl's scheduler rescales every group, so `step` restores λ's lr unless
  `follow_lr_schedule` is set.
- **Checkpoints.** `state_dict` carries λ's value next to its Adam moments; verl saves and loads the
  optimizer state per rank with every actor checkpoint, so resume restores λ on every rank.
- **Fixed λ** (`trainable=False`, the ablation): λ is a constant tensor, gets no parameter group and no
  optimizer state, and never changes.
- **Per-step report.** `take_step_report()` returns λ, the λ the first update since the last report was
  computed with, the averaged gradient of every update since then and the causes of the updates skipped
  since then, and starts the next report.

The loss path finds λ through `active_lambda_optimizer()`: one actor, hence one λ optimizer, per worker
process. Wire it with verl's optimizer hook: `actor.optim.optimizer_impl=lambda_grpo.learnable_lambda`,
`actor.optim.optimizer=LambdaAdamW`, and the λ options in `actor.optim.override_optimizer_config`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lambda_grpo.weights import OptionError

logger = logging.getLogger(__name__)

STATE_KEY = "lambda_grpo"

_active_optimizer: LambdaAdamW | None = None


@dataclass(frozen=True)
class LambdaOptions:
    """How λ is initialised and trained; validated on construction.

    Attributes:
        init: starting value; 0.0 starts exactly at DAPO's token-mean aggregation.
        lr: λ's own learning rate (Adam step size), >= 0.
        bounds: (low, high); λ is clamped into them after every step. init must lie inside.
        trainable: False fixes λ at `init` (ablation): no gradient, no optimizer state.
        follow_lr_schedule: True lets the actor's LR scheduler (warm-up, decay) scale λ's lr too.
    """

    init: float = 0.0
    lr: float = 1e-2
    bounds: tuple[float, float] = (-10.0, 10.0)
    trainable: bool = True
    follow_lr_schedule: bool = False

    def __post_init__(self) -> None:
        low, high = self.bounds
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise OptionError("lr", f"lr must be a finite number >= 0, got {self.lr!r}")
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise OptionError("bounds", f"bounds must be two finite numbers low < high, got {list(self.bounds)!r}")
        if not (math.isfinite(self.init) and low <= self.init <= high):
            raise OptionError("init", f"init={self.init!r} lies outside bounds {list(self.bounds)}")


class LambdaAdamW(torch.optim.AdamW):
    """torch.optim.AdamW over the model's parameters, plus λ as its own parameter group.

    Args:
        params: the model's parameters (what verl's `build_optimizer` passes).
        lr, betas, weight_decay, **adamw_kwargs: the actor's AdamW settings, unchanged.
        lambda_init, lambda_lr, lambda_bounds, lambda_trainable, lambda_follow_lr_schedule:
            `LambdaOptions` (verl passes them from `actor.optim.override_optimizer_config`).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 1e-2,
        *,
        lambda_init: float = 0.0,
        lambda_lr: float = 1e-2,
        lambda_bounds: tuple[float, float] | list[float] = (-10.0, 10.0),
        lambda_trainable: bool = True,
        lambda_follow_lr_schedule: bool = False,
        **adamw_kwargs: Any,
    ) -> None:
        super().__init__(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, **adamw_kwargs)
        self.lambda_options = LambdaOptions(
            init=float(lambda_init),
            lr=float(lambda_lr),
            bounds=(float(lambda_bounds[0]), float(lambda_bounds[1])),
            trainable=bool(lambda_trainable),
            follow_lr_schedule=bool(lambda_follow_lr_schedule),
        )
        device = next((p.device for group in self.param_groups for p in group["params"]), torch.device("cpu"))
        self.lam = torch.tensor(self.lambda_options.init, dtype=torch.float32, device=device)
        if self.lambda_options.trainable:
            self.lam.requires_grad_(True)
            self.add_param_group(
                {"params": [self.lam], "lr": self.lambda_options.lr, "weight_decay": 0.0, STATE_KEY: True}
            )
        self.lambda_updates = 0
        self.lambda_skipped = 0
        self._step_grads: list[float] = []
        self._step_skips: list[str] = []
        self._step_start: float | None = None
        self._grad_pending = False
        if self.lambda_options.trainable:
            self.lam.register_post_accumulate_grad_hook(self._mark_grad_pending)
        _set_active(self)

    @property
    def lambda_group(self) -> dict[str, Any] | None:
        """λ's parameter group, or None when λ is fixed."""
        return next((group for group in self.param_groups if group.get(STATE_KEY)), None)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """Average λ's gradient over ranks, drop it if not finite, step everything, clamp λ."""
        group = self.lambda_group
        if group is not None:
            self._grad_pending = False
            self._sync_lambda_grad()
            if not self.lambda_options.follow_lr_schedule:
                group["lr"] = self.lambda_options.lr
        loss = super().step(closure)
        if group is not None and self.lam.grad is not None:
            self.lam.clamp_(*self.lambda_options.bounds)
            self.lambda_updates += 1
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero every gradient; a λ gradient that no `step` consumed counts as a skipped update."""
        if self._grad_pending:
            self._record_skip(
                "the optimizer step was skipped (verl skips the whole update, λ's included, when the model's "
                "gradient norm is not finite)"
            )
            self._grad_pending = False
        super().zero_grad(set_to_none=set_to_none)

    def _mark_grad_pending(self, _: torch.Tensor) -> None:
        self._grad_pending = True
        if self._step_start is None:
            self._step_start = self.lam.detach().item()

    def _sync_lambda_grad(self) -> None:
        grad = self.lam.grad if self.lam.grad is not None else torch.zeros_like(self.lam)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            grad = grad.clone()
            dist.all_reduce(grad, op=dist.ReduceOp.SUM)
            grad /= dist.get_world_size()
        if torch.isfinite(grad):
            self.lam.grad = grad
            self._step_grads.append(float(grad))
        else:
            self.lam.grad = None
            self._record_skip(f"λ's gradient was not finite ({float(grad)}) on some rank")

    def _record_skip(self, cause: str) -> None:
        logger.warning("λ update skipped: %s; λ left unchanged", cause)
        self.lambda_skipped += 1
        self._step_skips.append(cause)

    def state_dict(self) -> dict[str, Any]:
        """AdamW's state dict (λ's moments included) plus λ's value and counters under STATE_KEY."""
        state = super().state_dict()
        state[STATE_KEY] = {
            "value": self.lam.detach().cpu().clone(),
            "trainable": self.lambda_options.trainable,
            "updates": self.lambda_updates,
            "skipped": self.lambda_skipped,
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore AdamW's state and λ; a fixed λ keeps its configured value."""
        state_dict = dict(state_dict)
        saved = state_dict.pop(STATE_KEY, None)
        if saved is None:
            raise ValueError(
                "this optimizer checkpoint holds no λ: it was not written by LambdaAdamW "
                "(e.g. a run with a fixed scheme such as dapo or grpo); start a fresh run instead of resuming it"
            )
        if bool(saved["trainable"]) != self.lambda_options.trainable:
            raise ValueError(
                f"checkpoint has lambda trainable={saved['trainable']}, this run has "
                f"trainable={self.lambda_options.trainable}; resume with the setting the run was started with"
            )
        super().load_state_dict(state_dict)
        value = torch.as_tensor(saved["value"], dtype=torch.float32)
        if self.lambda_options.trainable:
            self.lam.data.copy_(value.to(self.lam.device))
        elif float(value) != self.lambda_options.init:
            logger.warning("fixed λ: keeping the configured %s, not the checkpoint's %s", self.lambda_options.init, float(value))
        self.lambda_updates = int(saved["updates"])
        self.lambda_skipped = int(saved["skipped"])

    def lambda_state(self) -> dict[str, float | int | bool]:
        """λ and its cumulative update counters, as plain Python values (for logging and checkpoints)."""
        return {
            "lambda": self.lam.detach().item(),
            "updates": self.lambda_updates,
            "skipped": self.lambda_skipped,
            "trainable": self.lambda_options.trainable,
        }

    def take_step_report(self) -> dict[str, Any]:
        """`lambda_state()` plus what happened since the last report, then start a new one.

        Returns, besides lambda_state's keys: "lambda_start", the value of λ when the first gradient since the
        last report reached it (the λ that weighted the first micro-batch of the first update; None if no
        gradient came), "grads", the DP-averaged gradient of every λ update since the last report (in order),
        and "skips", the cause of every update skipped since then.
        """
        report = {**self.lambda_state(), "lambda_start": self._step_start, "grads": self._step_grads,
                  "skips": self._step_skips}
        self._step_grads, self._step_skips, self._step_start = [], [], None
        return report


def active_lambda_optimizer() -> LambdaAdamW:
    """The λ optimizer of this process (the actor's), or a RuntimeError saying how to install one."""
    if _active_optimizer is None:
        raise RuntimeError(
            "no λ in this process: the actor's optimizer is not lambda_grpo.learnable_lambda.LambdaAdamW. "
            "Set actor_rollout_ref.actor.optim.optimizer_impl=lambda_grpo.learnable_lambda and "
            "actor_rollout_ref.actor.optim.optimizer=LambdaAdamW (algo=lambda_grpo does this)."
        )
    return _active_optimizer


def _set_active(optimizer: LambdaAdamW | None) -> None:
    global _active_optimizer
    _active_optimizer = optimizer
