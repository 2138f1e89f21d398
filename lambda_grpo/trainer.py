"""verl glue on the driver: the λ-GRPO plumbing, attached to whichever verl V1 trainer the mode names.

verl 0.9.1 registers one trainer class per `trainer.v1.trainer_mode` (`register_trainer`): `sync`,
`colocate_async` (rollout on the training GPUs, partial rollouts across weight updates) and `separate_async`
(rollout on its own GPUs, `parameter_sync_step` updates per weight sync). λ-GRPO is written once, as
`LambdaGRPOTrainerMixin`, and `lambda_grpo_trainer_class(mode)` puts it in front of the registered class;
`LambdaGRPOTaskRunner` is verl's own `TaskRunnerV1`, which then builds that class. Every touch on verl's
private trainer API goes through `lambda_grpo.verl_api`. What the mixin adds (everything else is verl's):

- `_compute_advantage` (once per local update) writes the group fields of every sample
  (lambda_grpo.group_fields) into TransferQueue, from the response masks as generated (before verl's
  rollout-correction rejection edits them), then lets verl compute the advantages; the actor's update reads
  the fields with the batch. A prompt group wider than rollout.n stops the run here, on the driver.
- `init` installs `lambda_grpo.actor_loss.actor_loss` as the actor's loss through verl's `set_loss_fn` RPC,
  with the weight scheme and the configured surrogate (lambda_grpo.surrogates).
- The actor's worker class (whatever the mode maps: `ActorRolloutRefWorker`, or `DetachActorWorker` in
  separate_async) gets `LambdaGRPOWorkerMixin`: two read-only RPCs through which the trainer reads λ from
  every actor rank, `lambda_grpo_state` (λ, counters) and `lambda_grpo_step_report` (what happened to λ
  since the last report), read after each local update.
- `step` logs once per training step, whatever the number of local updates in it: λ after the step, the λ
  its first update was computed with, the gradients and skipped updates of all its λ updates, and the
  weight distribution of all the responses it trained on, each local batch at the λ it was weighted with.
  It warns about every skipped λ update with its step and cause, stops the run after
  `lambda_grpo.max_consecutive_skipped_steps` steps in a row with one, and stops if the ranks ever disagree
  or if λ changed between two updates (nothing but the optimizer step may move it).
- Checkpoints also get a readable `lambda_grpo.json` (λ itself is in the optimizer state that verl saves
  per rank, with the actor; the async modes' TransferQueue checkpoint holds samples, which get their group
  fields when they are trained on, after the resume, as any other).

Which λ weighted which batch (README "Trainer modes, parallelism, LoRA"): λ lives in the actor's optimizer,
not in the policy the rollout serves, so generation never sees it. A batch, whatever policy versions its
responses come from, is weighted by the λ current at each of its updates: the first by λ after the previous
update.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import ray
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from verl.single_controller.base.decorator import Dispatch, register
from verl.utils.config import omega_conf_to_dataclass

from lambda_grpo.actor_loss import actor_loss
from lambda_grpo.complete_checkpoints import marks_complete
from lambda_grpo.config import policy_surrogate, weight_options
from lambda_grpo.group_fields import GROUP_LENGTHS_KEY, POSITION_KEY, GroupTooWideError, group_fields
from lambda_grpo.learnable_lambda import active_lambda_optimizer
from lambda_grpo.verl_api import (
    ACTOR_ROLES,
    python_class,
    registered_trainer,
    task_runner_v1_class,
    trainer_registered_as,
)
from lambda_grpo.weight_stats import weight_diagnostics
from lambda_grpo.weights import fixed_weights, lambda_weights

METRIC = "actor/lambda_grpo/"
"""Prefix of the λ-GRPO metrics (verl's `actor/` namespace)."""


class LambdaGRPOWorkerMixin:
    """Read-only RPCs for λ, put in front of the actor's worker class."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def lambda_grpo_state(self) -> dict[str, Any]:
        """λ of this rank and its update counters (LambdaAdamW.lambda_state)."""
        return active_lambda_optimizer().lambda_state()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def lambda_grpo_step_report(self) -> dict[str, Any]:
        """λ, its gradients and skipped updates since the last report (LambdaAdamW.take_step_report)."""
        return active_lambda_optimizer().take_step_report()


@functools.cache
def lambda_grpo_worker_class(worker_cls: type) -> type:
    """`worker_cls` with the λ RPCs (one class per base, so Ray sees a stable class)."""
    return type(f"LambdaGRPO{worker_cls.__name__}", (LambdaGRPOWorkerMixin, worker_cls), {})


class LambdaGRPOTrainerMixin:
    """λ-GRPO's group fields, loss and λ bookkeeping, for any verl V1 trainer (see the module docstring)."""

    def __init__(self, config: DictConfig) -> None:
        super().__init__(config)
        self.weight_options = weight_options(config)
        self.surrogate = policy_surrogate(config)
        self.learns_lambda = self.weight_options.scheme == "lambda"
        self.lambda_value = float(config.lambda_grpo.lambda_init) if self.learns_lambda else 0.0
        self.consecutive_skipped_steps = 0
        self._step_reports: list[dict[str, Any]] = []
        self._step_weights: list[tuple[torch.Tensor, torch.Tensor, list]] = []

    def _init_resource_pool_mgr(self) -> None:
        super()._init_resource_pool_mgr()
        for role in ACTOR_ROLES:
            if role in self.role_worker_mapping:
                worker_cls = python_class(self.role_worker_mapping[role])
                self.role_worker_mapping[role] = ray.remote(lambda_grpo_worker_class(worker_cls))

    def init(self) -> None:
        super().init()
        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        self.actor_rollout_wg.set_loss_fn(
            functools.partial(actor_loss, config=actor_config, options=self.weight_options, surrogate=self.surrogate)
        )
        print(f"[lambda_grpo] actor loss: scheme={self.weight_options.scheme} over the "
              f"{self.surrogate.loss_mode!r} surrogate (λ learns from its {self.surrogate.lambda_objective}); "
              f"trainer mode {self.config.trainer.v1.trainer_mode}")
        if self.learns_lambda:
            self.lambda_value = self._lambda_rpc("lambda_grpo_state")["lambda"]
            print(f"[lambda_grpo] λ = {self.lambda_value:.6g} at step {self.global_steps}")

    def step(self, metrics: dict, timing_raw: dict) -> Any:
        """verl's training step (its `parameter_sync_step` local updates), then the step's λ-GRPO metrics."""
        self._step_reports, self._step_weights = [], []
        batch = super().step(metrics, timing_raw)
        metrics.update(self._step_weight_metrics())
        if self.learns_lambda and self._step_reports:  # no report while the actor waits (trainer.critic_warmup)
            metrics.update(self._lambda_step_metrics(merged_reports(self._step_reports)))
        return batch

    def _compute_advantage(self, batch, metrics: dict) -> Any:
        import transfer_queue as tq

        # The masks as generated: verl's rollout correction may zero rejected tokens of response_mask in
        # super()._compute_advantage; |o_i| in z is the generated length.
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["uid", "response_mask"])
        data = data.to_padded_tensor()  # as verl's _compute_advantage reads the same fields
        uids = list(data.pop("uid").tolist())
        response_mask = data["response_mask"]
        group_size = int(self.config.actor_rollout_ref.rollout.n)
        try:
            fields = group_fields(uids, response_mask, group_size)
        except GroupTooWideError as error:
            raise RuntimeError(
                f"step {self.global_steps}: {error} (actor_rollout_ref.rollout.n={group_size}). Start-up proved "
                "h > 0 and h^λ finite only for groups of up to rollout.n; agent loops that return several "
                "outputs per trajectory are not supported. Stopping before the update."
            ) from error
        tq.kv_batch_put(keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(fields, batch_size=len(uids)))
        lengths = response_mask.sum(-1)
        self._step_weights.append((self._batch_weights(fields, lengths), lengths, uids))
        return super()._compute_advantage(batch, metrics)

    def _batch_weights(self, fields: dict, lengths: torch.Tensor) -> torch.Tensor:
        """f_i of one local batch at the λ its first update uses (fixed members: μ̄ of the batch)."""
        if self.learns_lambda:
            return lambda_weights(fields[GROUP_LENGTHS_KEY], fields[POSITION_KEY], self.weight_options,
                                  self.lambda_value)
        return fixed_weights(lengths, self.weight_options, mean_length=float(lengths.sum()) / len(lengths))

    def _step_weight_metrics(self) -> dict[str, float]:
        """Weight distribution over every response the step trained on (module docstring)."""
        if not self._step_weights:
            return {}
        weights, lengths, uids = (list(parts) for parts in zip(*self._step_weights, strict=True))
        lengths = torch.cat(lengths)
        stats = weight_diagnostics(torch.cat(weights), lengths.float(), [uid for part in uids for uid in part])
        stats["empty_rows"] = int((lengths == 0).sum())
        names = {"weight_min": "batch_weight_min", "weight_max": "batch_weight_max", "weight_mean": "batch_weight_mean"}
        return {METRIC + names.get(key, key): value for key, value in stats.items()}

    def _update_actor(self, batch, metrics: dict) -> Any:
        batch = super()._update_actor(batch, metrics)
        if self.learns_lambda:
            report = self._lambda_rpc("lambda_grpo_step_report")
            start = report["lambda_start"]
            if start is not None and start != self.lambda_value:
                raise RuntimeError(
                    f"step {self.global_steps}: the actor's update started from λ = {start!r}, but λ was "
                    f"{self.lambda_value!r} after the previous update: something other than λ's optimizer step "
                    "changed it (a checkpoint load mid-run?); stopping"
                )
            self.lambda_value = report["lambda"]
            self._step_reports.append(report)
        return batch

    def _lambda_step_metrics(self, report: dict[str, Any]) -> dict[str, float]:
        """The step's λ metrics; warns about skipped updates and stops after too many steps with one in a row."""
        metrics = {
            "actor/lambda": report["lambda"],
            METRIC + "lambda_updates": len(report["grads"]),
            METRIC + "lambda_skipped_steps": report["skipped"],
        }
        if report["lambda_start"] is not None:
            metrics[METRIC + "lambda_start"] = report["lambda_start"]
        if report["grads"]:
            metrics["actor/lambda_grad"] = sum(report["grads"]) / len(report["grads"])
        if not report["skips"]:
            self.consecutive_skipped_steps = 0
            return metrics
        self.consecutive_skipped_steps += 1
        limit = int(self.config.lambda_grpo.max_consecutive_skipped_steps)
        causes = "; ".join(sorted(set(report["skips"])))
        print(f"[lambda_grpo] WARNING step {self.global_steps}: {len(report['skips'])} of "
              f"{len(report['skips']) + len(report['grads'])} λ updates skipped ({causes}); λ = {report['lambda']:.6g}; "
              f"{self.consecutive_skipped_steps} step(s) in a row, the run stops at {limit}", flush=True)
        if self.consecutive_skipped_steps >= limit:
            raise RuntimeError(
                f"λ skipped updates in {self.consecutive_skipped_steps} training steps in a row (last: step "
                f"{self.global_steps}: {causes}); λ no longer learns, so the run stops "
                f"(lambda_grpo.max_consecutive_skipped_steps={limit}). Look for NaN/inf in the loss "
                "(actor/pg_loss, actor/grad_norm) and resume from the last checkpoint once fixed."
            )
        return metrics

    def _lambda_rpc(self, method: str) -> dict[str, Any]:
        """A λ RPC's answer, identical on every actor rank (a RuntimeError names the ranks otherwise)."""
        states = getattr(self.actor_rollout_wg, method)()
        values = [state["lambda"] for state in states]
        if len(set(values)) != 1:
            raise RuntimeError(f"λ differs across actor ranks (rank: value) {dict(enumerate(values))}; stopping")
        return states[0]

    @marks_complete
    def _save_checkpoint(self) -> None:
        super()._save_checkpoint()
        if not self.learns_lambda:
            return
        step_dir = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        state = {"global_step": self.global_steps, **self._lambda_rpc("lambda_grpo_state"),
                 **OmegaConf.to_container(self.config.lambda_grpo)}
        with open(os.path.join(step_dir, "lambda_grpo.json"), "w") as file:
            json.dump(state, file, indent=2)


def merged_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One training step's λ report from the reports of its local updates, in order.

    λ and the counters are the last report's, `lambda_start` the first one's that has one, gradients and
    skip causes are concatenated. `reports` must not be empty.
    """
    starts = [report["lambda_start"] for report in reports if report["lambda_start"] is not None]
    return {
        **reports[-1],
        "lambda_start": starts[0] if starts else None,
        "grads": [grad for report in reports for grad in report["grads"]],
        "skips": [skip for report in reports for skip in report["skips"]],
    }


@functools.cache
def lambda_grpo_trainer_class(mode: str) -> type:
    """verl's trainer registered for `trainer.v1.trainer_mode=mode`, with `LambdaGRPOTrainerMixin` in front."""
    base = registered_trainer(mode)
    return type(f"LambdaGRPO{base.__name__}", (LambdaGRPOTrainerMixin, base), {})


class LambdaGRPOTaskRunner(task_runner_v1_class()):
    """verl's `TaskRunnerV1`, building the λ-GRPO trainer of the configured mode."""

    def run(self, config: DictConfig) -> None:
        mode = config.trainer.v1.trainer_mode
        with trainer_registered_as(mode, lambda_grpo_trainer_class(mode)):
            super().run(config)


LambdaGRPORemoteTaskRunner = ray.remote(num_cpus=1)(LambdaGRPOTaskRunner)
"""What `run_ppo(config, task_runner_class=...)` takes."""
