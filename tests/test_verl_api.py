"""The verl internals λ-GRPO relies on (lambda_grpo.verl_api), pinned against the installed verl: each test
fails, naming the touch point, when an upgrade moves one."""

import inspect
from types import SimpleNamespace

import pytest
import ray
from omegaconf import OmegaConf
from verl.trainer.ppo.v1 import PPOTrainer, get_trainer_cls

from lambda_grpo.config import TRAINER_MODES
from lambda_grpo.verl_api import (
    TRAINER_HOOKS,
    TRAINER_STATE,
    python_class,
    registered_trainer,
    task_runner_v1_class,
    trainer_registered_as,
)


@pytest.mark.parametrize("mode", TRAINER_MODES)
@pytest.mark.parametrize("hook", TRAINER_HOOKS)
def test_every_mode_has_the_hooks_with_verls_parameters(mode, hook):
    method = getattr(registered_trainer(mode), hook, None)
    assert method is not None, f"verl's {mode} trainer has no {hook}"
    assert tuple(inspect.signature(method).parameters) == TRAINER_HOOKS[hook], (
        f"{registered_trainer(mode).__name__}.{hook}{inspect.signature(method)} changed")


@pytest.mark.parametrize("attribute", TRAINER_STATE)
def test_the_trainer_state_read_by_the_attachment_is_set_by_verl(attribute):
    source = inspect.getsource(inspect.getmodule(PPOTrainer))
    assert f"self.{attribute} =" in source or f"self.{attribute}: " in source, attribute


class Recorder(PPOTrainer):
    """verl's own PPOTrainer.step and _step_once, over stubs that record the pipeline stages they call."""

    def __init__(self, sync_steps: int):  # noqa: D107  (only the state step and _step_once read)
        self.calls = []
        self.parameter_sync_step = sync_steps
        self.config = OmegaConf.create({"data": {"train_batch_size": 2 * sync_steps},
                                        "actor_rollout_ref": {"rollout": {"temperature": 1.0}},
                                        "trainer": {"critic_warmup": 0}})
        self.use_reference_policy = self.use_critic = False
        self.global_steps = 1
        batches = (SimpleNamespace(tags=[{}, {}], keys=[f"{n}a", f"{n}b"], partition_id="train", extra_info={})
                   for n in range(sync_steps))
        self.replay_buffer = SimpleNamespace(sample=lambda **_: (next(batches), {}))
        self.reward_loop_manager = SimpleNamespace(reward_loop_worker_handles=[object()])

    def _record(self, name, batch):
        self.calls.append(name)
        return batch

    def prepare_step(self):
        return {}

    def on_sample_end(self):
        pass

    def on_step_end(self):
        pass

    def _balance_batch(self, batch, metrics):
        return self._record("_balance_batch", batch)

    def _compute_old_log_prob(self, batch, metrics):
        return self._record("_compute_old_log_prob", batch)

    def _compute_advantage(self, batch, metrics):
        return self._record("_compute_advantage", batch)

    def _update_actor(self, batch, metrics):
        return self._record("_update_actor", batch)


def test_a_step_runs_parameter_sync_step_local_updates_each_with_one_advantage_and_one_actor_update():
    trainer = Recorder(sync_steps=3)
    trainer.step({}, {})
    stages = ["_balance_batch", "_compute_old_log_prob", "_compute_advantage", "_update_actor"]
    assert trainer.calls == stages * 3


def test_task_runner_v1_looks_its_trainer_up_by_mode_when_it_runs():
    runner = task_runner_v1_class()
    assert runner.__name__ == "TaskRunnerV1"
    assert "get_trainer_cls(config.trainer.v1.trainer_mode)" in inspect.getsource(runner.run)


def test_the_registry_answers_the_attachment_only_inside_the_block():
    registered = get_trainer_cls("sync")
    attached = type("Attached", (registered,), {})
    with trainer_registered_as("sync", attached):
        assert get_trainer_cls("sync") is attached
    assert get_trainer_cls("sync") is registered
    with pytest.raises(RuntimeError), trainer_registered_as("sync", attached):
        raise RuntimeError("a failed run")
    assert get_trainer_cls("sync") is registered
    with pytest.raises(TypeError, match="does not extend verl's 'sync' trainer"):
        with trainer_registered_as("sync", type("Unrelated", (PPOTrainer,), {})):
            pass


def test_python_class_unwraps_a_ray_actor_class():
    class Plain:
        pass

    assert python_class(ray.remote(Plain)) is Plain
