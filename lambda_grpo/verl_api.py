"""The verl 0.9.1 internals λ-GRPO relies on beyond verl's documented extension points, in one place (verl glue).

λ-GRPO attaches to whichever V1 trainer class `trainer.v1.trainer_mode` names (lambda_grpo.trainer). verl
documents the trainer registry (`register_trainer`), `set_loss_fn`, the optimizer hook and the plugin entry
points, but not the trainer methods the attachment overrides, nor how `TaskRunnerV1` finds its trainer class,
nor the Ray wrapping of worker classes. Every such touch goes through this module, and
tests/test_verl_api.py pins each one against the installed verl, so an upgrade that moves one fails there,
by name, instead of deep inside a run:

| touch point                                  | what λ-GRPO relies on                                             |
|----------------------------------------------|-------------------------------------------------------------------|
| `TRAINER_HOOKS` on every registered trainer  | the methods the attachment overrides, with these parameter names;  |
|                                              | `_compute_advantage` and `_update_actor` run once per local update |
|                                              | (`parameter_sync_step` of them per `step`)                        |
| `TRAINER_STATE`                              | trainer attributes the attachment reads                           |
| `registered_trainer`, `trainer_registered_as` | verl's trainer registry, read and (in one TaskRunner) rebound     |
| `TaskRunnerV1` (`task_runner_v1_class`)      | `run(config)` looks its trainer class up by mode at call time     |
| `python_class`                               | the Python class behind a `ray.remote` worker class               |
| `ACTOR_ROLES`                                | the roles under which the trainer maps the actor's worker class   |
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from verl.trainer.ppo.utils import Role

TRAINER_HOOKS: dict[str, tuple[str, ...]] = {
    "__init__": ("self", "config"),
    "init": ("self",),
    "_init_resource_pool_mgr": ("self",),
    "step": ("self", "metrics", "timing_raw"),
    "_compute_advantage": ("self", "batch", "metrics"),
    "_update_actor": ("self", "batch", "metrics"),
    "_save_checkpoint": ("self",),
}
"""PPOTrainer methods the λ-GRPO attachment overrides → their parameter names in verl 0.9.1."""

TRAINER_STATE = ("config", "role_worker_mapping", "actor_rollout_wg", "global_steps")
"""PPOTrainer attributes the attachment reads (set by verl's __init__, _init_resource_pool_mgr, _setup)."""

ACTOR_ROLES = (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor)
"""Roles whose worker trains the actor: hybrid with rollout (sync, colocate_async), or actor only
(separate_async with `actor_rollout_ref.hybrid_engine=false`)."""


def registered_trainer(mode: str) -> type:
    """The trainer class verl registered for `trainer.v1.trainer_mode=mode` (`register_trainer`)."""
    from verl.trainer.ppo.v1 import get_trainer_cls

    return get_trainer_cls(mode)


@contextmanager
def trainer_registered_as(mode: str, trainer_cls: type) -> Iterator[None]:
    """Within the block, verl's registry answers `trainer_cls` for `mode`; the original entry is restored after.

    verl's `TaskRunnerV1.run` builds the trainer with `get_trainer_cls(config.trainer.v1.trainer_mode)`, and
    the trainer's own code tests `trainer_mode == "sync"` in several places, so the mode name must stay the
    one verl knows. `register_trainer` refuses to rebind a taken name, so the entry is swapped directly, for
    the duration of one run in the TaskRunner's own process. `trainer_cls` must subclass the registered class.
    """
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    registered = TRAINER_REGISTRY[mode]
    if not issubclass(trainer_cls, registered):
        raise TypeError(f"{trainer_cls.__name__} does not extend verl's {mode!r} trainer {registered.__name__}")
    TRAINER_REGISTRY[mode] = trainer_cls
    try:
        yield
    finally:
        TRAINER_REGISTRY[mode] = registered


def python_class(actor_class: Any) -> type:
    """The Python class a `ray.remote(cls)` actor class wraps (the trainer's worker mapping holds those)."""
    return actor_class.__ray_metadata__.modified_class.__ray_actor_class__


def task_runner_v1_class() -> type:
    """verl's V1 TaskRunner as a plain Python class, to subclass (verl defines it under `@ray.remote`)."""
    from verl.trainer.main_ppo import TaskRunnerV1

    return python_class(TaskRunnerV1)
