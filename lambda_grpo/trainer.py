"""verl glue on the driver: verl's V1 sync trainer with the λ-GRPO plumbing, its actor worker, its TaskRunner.

What differs from `verl.trainer.main_ppo` (everything else is verl's, unchanged):
- `LambdaGRPOTrainer._compute_advantage` writes the group fields of every sample (lambda_grpo.group_fields)
  into TransferQueue, from the response masks as generated (before verl's rollout-correction rejection
  edits them), then lets verl compute the advantages; the actor's update reads the fields with the batch.
  A prompt group wider than rollout.n stops the run here, on the driver.
- `LambdaGRPOTrainer.init` installs `lambda_grpo.actor_loss.actor_loss` as the actor's loss through verl's
  `set_loss_fn` RPC, with the weight scheme and the configured surrogate (lambda_grpo.surrogates).
- `LambdaGRPOActorWorker` is verl's `ActorRolloutRefWorker` plus two read-only RPCs through which the trainer
  reads λ from every actor rank: `lambda_grpo_state` (λ, counters) and, after each update,
  `lambda_grpo_step_report` (the step's λ gradients and skipped updates). The trainer logs them, warns about
  every skipped λ update with its step and cause, stops the run after
  `lambda_grpo.max_consecutive_skipped_steps` steps in a row with one, and stops if the ranks ever disagree.
- Every step logs the response-weight distribution of the batch (lambda_grpo.weight_stats) at the λ that
  the step started with; checkpoints also get a readable `lambda_grpo.json` (λ itself is in the
  optimizer state that verl saves per rank).
- `LambdaGRPOTaskRunner` is verl's `TaskRunnerV1` building this trainer: V1 picks its trainer class by
  mode name, and the "sync" name is taken by verl's own trainer.
"""

from __future__ import annotations

import functools
import json
import os
from pprint import pprint
from typing import Any

import ray
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from verl.single_controller.base.decorator import Dispatch, register
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1 import PPOTrainerSync
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.import_utils import load_class_from_fqn
from verl.utils.logging_utils import configure_verl_logging
from verl.workers.engine_workers import ActorRolloutRefWorker

from lambda_grpo.actor_loss import actor_loss
from lambda_grpo.complete_checkpoints import marks_complete
from lambda_grpo.config import policy_surrogate, weight_options
from lambda_grpo.group_fields import GROUP_LENGTHS_KEY, POSITION_KEY, GroupTooWideError, group_fields
from lambda_grpo.learnable_lambda import active_lambda_optimizer
from lambda_grpo.weight_stats import weight_diagnostics
from lambda_grpo.weights import fixed_weights, lambda_weights

ACTOR_ROLES = (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor)


class LambdaGRPOActorWorker(ActorRolloutRefWorker):
    """verl's actor/rollout/ref worker, plus read-only RPCs for λ."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def lambda_grpo_state(self) -> dict[str, Any]:
        """λ of this rank and its update counters (LambdaAdamW.lambda_state)."""
        return active_lambda_optimizer().lambda_state()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def lambda_grpo_step_report(self) -> dict[str, Any]:
        """λ, its gradients and skipped updates since the last report (LambdaAdamW.take_step_report)."""
        return active_lambda_optimizer().take_step_report()


class LambdaGRPOTrainer(PPOTrainerSync):
    """verl's V1 sync PPO trainer with group fields for the loss and λ bookkeeping."""

    def __init__(self, config: DictConfig) -> None:
        super().__init__(config)
        self.weight_options = weight_options(config)
        self.surrogate = policy_surrogate(config)
        self.learns_lambda = self.weight_options.scheme == "lambda"
        self.lambda_value = float(config.lambda_grpo.lambda_init) if self.learns_lambda else 0.0
        self.consecutive_skipped_steps = 0

    def _init_resource_pool_mgr(self) -> None:
        super()._init_resource_pool_mgr()
        for role in ACTOR_ROLES:
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(LambdaGRPOActorWorker)

    def init(self) -> None:
        super().init()
        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        self.actor_rollout_wg.set_loss_fn(
            functools.partial(actor_loss, config=actor_config, options=self.weight_options, surrogate=self.surrogate)
        )
        print(f"[lambda_grpo] actor loss: scheme={self.weight_options.scheme} over the "
              f"{self.surrogate.loss_mode!r} surrogate (λ learns from its {self.surrogate.lambda_objective})")
        if self.learns_lambda:
            self.lambda_value = self._lambda_rpc("lambda_grpo_state")["lambda"]
            print(f"[lambda_grpo] λ = {self.lambda_value:.6g} at step {self.global_steps}")

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
        metrics.update(self._weight_metrics(fields, response_mask.sum(-1), uids))
        return super()._compute_advantage(batch, metrics)

    def _weight_metrics(self, fields: dict, lengths: torch.Tensor, uids: list) -> dict[str, float]:
        """Weight distribution of this batch at the λ the step starts with (fixed members: μ̄ of the batch)."""
        if self.learns_lambda:
            weights = lambda_weights(fields[GROUP_LENGTHS_KEY], fields[POSITION_KEY], self.weight_options,
                                     self.lambda_value)
        else:
            weights = fixed_weights(lengths, self.weight_options, mean_length=float(lengths.sum()) / len(lengths))
        stats = weight_diagnostics(weights, lengths.float(), uids)
        stats["empty_rows"] = int((lengths == 0).sum())
        names = {"weight_min": "batch_weight_min", "weight_max": "batch_weight_max", "weight_mean": "batch_weight_mean"}
        return {f"actor/lambda_grpo/{names.get(key, key)}": value for key, value in stats.items()}

    def _update_actor(self, batch, metrics: dict) -> Any:
        batch = super()._update_actor(batch, metrics)
        if self.learns_lambda:
            metrics.update(self._lambda_step_metrics(self._lambda_rpc("lambda_grpo_step_report")))
        return batch

    def _lambda_step_metrics(self, report: dict[str, Any]) -> dict[str, float]:
        """The step's λ metrics; warns about skipped updates and stops after too many steps with one in a row."""
        self.lambda_value = report["lambda"]
        metrics = {
            "actor/lambda": report["lambda"],
            "actor/lambda_grpo/lambda_updates": len(report["grads"]),
            "actor/lambda_grpo/lambda_skipped_steps": report["skipped"],
        }
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


@ray.remote(num_cpus=1)
class LambdaGRPOTaskRunner:
    """verl's TaskRunnerV1.run with `LambdaGRPOTrainer` as the trainer class."""

    def run(self, config: DictConfig) -> None:
        import transfer_queue as tq

        configure_verl_logging()
        config.transfer_queue.enable = True
        pprint(OmegaConf.to_container(config, resolve=True))
        OmegaConf.resolve(config)
        tq.init(config.transfer_queue)
        trainer, succeeded = None, False
        try:
            trainer = LambdaGRPOTrainer(config=config)
            trainer.init()
            trainer.fit(_agent_loop_manager(config, trainer))
            succeeded = True
        finally:
            tracking = getattr(trainer, "logger", None)
            try:
                if tracking is not None:
                    tracking.finish(exit_code=0 if succeeded else 1)
            finally:
                tq.close()


def _agent_loop_manager(config: DictConfig, trainer: LambdaGRPOTrainer) -> Any:
    """verl's rollout manager, or the one named by actor_rollout_ref.rollout.agent.agent_loop_manager_class."""
    from verl.trainer.ppo.v1 import AgentLoopManagerTQ

    manager_fqn = config.actor_rollout_ref.rollout.get("agent", {}).get("agent_loop_manager_class")
    manager_cls = load_class_from_fqn(manager_fqn, "AgentLoopManager") if manager_fqn else AgentLoopManagerTQ
    return manager_cls.create(
        config=config,
        llm_client=trainer.get_llm_client(),
        teacher_client=trainer.get_teacher_client(),
        reward_loop_worker_handles=trainer.get_reward_handles(),
    )
