"""verl glue on the driver: verl's V1 sync trainer with the λ-GRPO plumbing, its actor worker, its TaskRunner.

What differs from `verl.trainer.main_ppo` (everything else is verl's, unchanged):
- `LambdaGRPOTrainer._compute_advantage` writes the group fields of every sample (lambda_grpo.group_fields)
  into TransferQueue after verl computed the advantages; the actor's update reads them with the batch.
- `LambdaGRPOTrainer.init` installs `lambda_grpo.actor_loss.weighted_ppo_loss` as the actor's loss through
  verl's `set_loss_fn` RPC.
- `LambdaGRPOActorWorker` is verl's `ActorRolloutRefWorker` plus one RPC, `lambda_grpo_state`, through
  which the trainer reads λ from every actor rank after each update: it logs λ and its gradient, and
  stops the run if the ranks ever disagree.
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
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from verl.single_controller.base.decorator import Dispatch, register
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1 import PPOTrainerSync
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.import_utils import load_class_from_fqn
from verl.utils.logging_utils import configure_verl_logging
from verl.workers.engine_workers import ActorRolloutRefWorker

from lambda_grpo.actor_loss import weighted_ppo_loss
from lambda_grpo.config import weight_options
from lambda_grpo.group_fields import GROUP_LENGTHS_KEY, POSITION_KEY, group_fields
from lambda_grpo.learnable_lambda import active_lambda_optimizer
from lambda_grpo.weight_stats import weight_diagnostics
from lambda_grpo.weights import weights_from_group_lengths

ACTOR_ROLES = (Role.ActorRollout, Role.ActorRolloutRef, Role.Actor)


class LambdaGRPOActorWorker(ActorRolloutRefWorker):
    """verl's actor/rollout/ref worker, plus a read-only RPC for λ."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def lambda_grpo_state(self) -> dict[str, Any]:
        """λ of this rank, its last averaged gradient and update counters (see LambdaAdamW.lambda_state)."""
        return active_lambda_optimizer().lambda_state()


class LambdaGRPOTrainer(PPOTrainerSync):
    """verl's V1 sync PPO trainer with group fields for the loss and λ bookkeeping."""

    def __init__(self, config: DictConfig) -> None:
        super().__init__(config)
        self.weight_options = weight_options(config)
        self.learns_lambda = self.weight_options.scheme == "lambda"
        self.lambda_value = float(config.lambda_grpo.lambda_init) if self.learns_lambda else 0.0

    def _init_resource_pool_mgr(self) -> None:
        super()._init_resource_pool_mgr()
        for role in ACTOR_ROLES:
            if role in self.role_worker_mapping:
                self.role_worker_mapping[role] = ray.remote(LambdaGRPOActorWorker)

    def init(self) -> None:
        super().init()
        actor_config = omega_conf_to_dataclass(self.config.actor_rollout_ref.actor)
        self.actor_rollout_wg.set_loss_fn(
            functools.partial(weighted_ppo_loss, config=actor_config, options=self.weight_options)
        )
        print(f"[lambda_grpo] actor loss: lambda_grpo, scheme={self.weight_options.scheme}")
        if self.learns_lambda:
            self.lambda_value = self._lambda_state()["lambda"]
            print(f"[lambda_grpo] λ = {self.lambda_value:.6g} at step {self.global_steps}")

    def _compute_advantage(self, batch, metrics: dict) -> Any:
        import transfer_queue as tq

        batch = super()._compute_advantage(batch, metrics)
        data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["uid", "response_mask"])
        data = data.to_padded_tensor()  # as verl's _compute_advantage reads the same fields
        uids = list(data.pop("uid").tolist())
        response_mask = data["response_mask"]
        fields = group_fields(uids, response_mask, min_width=int(self.config.actor_rollout_ref.rollout.n))
        batch = tq.kv_batch_put(
            keys=batch.keys, partition_id=batch.partition_id, fields=TensorDict(fields, batch_size=len(uids))
        )
        metrics.update(self._weight_metrics(fields, response_mask.sum(-1), uids))
        return batch

    def _weight_metrics(self, fields: dict, lengths, uids: list) -> dict[str, float]:
        """Weight distribution of this batch at the λ the step starts with."""
        weights = weights_from_group_lengths(
            fields[GROUP_LENGTHS_KEY], fields[POSITION_KEY], self.weight_options, self.lambda_value
        )
        stats = weight_diagnostics(weights, lengths.float(), uids)
        names = {"weight_min": "batch_weight_min", "weight_max": "batch_weight_max", "weight_mean": "batch_weight_mean"}
        return {f"actor/lambda_grpo/{names.get(key, key)}": value for key, value in stats.items()}

    def _update_actor(self, batch, metrics: dict) -> Any:
        batch = super()._update_actor(batch, metrics)
        if self.learns_lambda:
            state = self._lambda_state()
            self.lambda_value = state["lambda"]
            metrics["actor/lambda"] = state["lambda"]
            if state["lambda_grad"] is not None:
                metrics["actor/lambda_grad"] = state["lambda_grad"]
            metrics["actor/lambda_grpo/lambda_skipped_steps"] = state["skipped"]
        return batch

    def _lambda_state(self) -> dict[str, Any]:
        """λ's state, identical on every actor rank (a RuntimeError names the ranks otherwise)."""
        states = self.actor_rollout_wg.lambda_grpo_state()
        values = [state["lambda"] for state in states]
        if len(set(values)) != 1:
            raise RuntimeError(f"λ differs across actor ranks (rank: value) {dict(enumerate(values))}; stopping")
        return states[0]

    def _save_checkpoint(self) -> None:
        super()._save_checkpoint()
        if not self.learns_lambda:
            return
        step_dir = os.path.join(self.config.trainer.default_local_dir, f"global_step_{self.global_steps}")
        state = {"global_step": self.global_steps, **self._lambda_state(), **OmegaConf.to_container(self.config.lambda_grpo)}
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
