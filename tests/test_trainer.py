"""The λ-GRPO attachment on the driver: one mixin on every verl trainer mode, its worker RPCs on whatever worker
class the mode maps, the λ bookkeeping of a training step of one or several local updates (which λ weighted
which batch), warnings and stops, and the batch weight diagnostics. (The trainer as a whole runs in
tests/test_cpu_pipeline.py and tests/test_trainer_modes_e2e.py.)"""

import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from verl.experimental.separation.engine_workers import DetachActorWorker
from verl.single_controller.base.decorator import MAGIC_ATTR
from verl.trainer.ppo.v1 import PPOTrainer
from verl.utils import tensordict_utils as tu
from verl.workers.engine_workers import ActorRolloutRefWorker

from lambda_grpo.config import TRAINER_MODES, compose
from lambda_grpo.group_fields import GROUP_LENGTHS_KEY, group_fields
from lambda_grpo.trainer import (
    LambdaGRPOTaskRunner,
    LambdaGRPOTrainerMixin,
    LambdaGRPOWorkerMixin,
    lambda_grpo_trainer_class,
    merged_reports,
)
from lambda_grpo.verl_api import ACTOR_ROLES, python_class, registered_trainer, task_runner_v1_class
from lambda_grpo.weights import WeightOptions, response_weights

SKIP = "λ's gradient was not finite (nan) on some rank"


def trainer(scheme="lambda", limit=3, lam=0.0, mode="sync"):
    """A λ-GRPO trainer of `mode` with only the state its λ bookkeeping reads (no Ray, no workers)."""
    driver = object.__new__(lambda_grpo_trainer_class(mode))
    driver.config = OmegaConf.create({"lambda_grpo": {"max_consecutive_skipped_steps": limit},
                                      "actor_rollout_ref": {"rollout": {"n": 4}}})
    driver.weight_options = WeightOptions(scheme, max_response_length=16)
    driver.learns_lambda = scheme == "lambda"
    driver.lambda_value = lam
    driver.consecutive_skipped_steps = 0
    driver.global_steps = 7
    driver._step_reports, driver._step_weights = [], []
    return driver


def report(grads=(0.25, -0.75), skips=(), lam=0.1, skipped=0, start=0.0):
    return {"lambda": lam, "lambda_start": start, "grads": list(grads), "skips": list(skips), "updates": 5,
            "skipped": skipped, "trainable": True}


@pytest.mark.parametrize("mode", TRAINER_MODES)
def test_the_mixin_attaches_in_front_of_the_class_verl_registered_for_each_mode(mode):
    cls = lambda_grpo_trainer_class(mode)
    assert cls.__mro__[1:3] == (LambdaGRPOTrainerMixin, registered_trainer(mode))
    assert lambda_grpo_trainer_class(mode) is cls  # one class per mode
    assert issubclass(LambdaGRPOTaskRunner, task_runner_v1_class())
    assert "run" in vars(LambdaGRPOTaskRunner) and len(vars(LambdaGRPOTaskRunner)) <= 4  # nothing but run copied


@pytest.mark.parametrize("mode, hybrid, expected", [
    ("sync", True, ActorRolloutRefWorker),
    ("colocate_async", True, ActorRolloutRefWorker),
    ("separate_async", True, DetachActorWorker),
    ("separate_async", False, DetachActorWorker),
])
def test_the_actor_worker_of_every_mode_gets_the_lambda_rpcs(mode, hybrid, expected, tmp_path):
    """verl maps the actor to ActorRolloutRefWorker, or (separate_async) DetachActorWorker under the Actor role
    when the rollout has no replica on the training GPUs: the λ RPCs are put in front of whichever it is."""
    driver = object.__new__(lambda_grpo_trainer_class(mode))
    driver.config = compose(["model_size=qwen2_5_1_5b", f"trainer.v1.trainer_mode={mode}",
                             f"actor_rollout_ref.hybrid_engine={str(hybrid).lower()}"])
    driver._enable_hybrid_replicas = hybrid
    driver._init_resource_pool_mgr()
    (role,) = [role for role in ACTOR_ROLES if role in driver.role_worker_mapping]
    worker = python_class(driver.role_worker_mapping[role])
    assert issubclass(worker, LambdaGRPOWorkerMixin) and worker.__mro__[2] is expected
    for rpc in ("lambda_grpo_state", "lambda_grpo_step_report", "update_actor", "set_loss_fn"):
        assert hasattr(getattr(worker, rpc), MAGIC_ATTR), rpc  # registered, so verl binds it on the worker group
    if mode == "separate_async":  # verl's own DetachActorWorker RPCs survive
        assert hasattr(getattr(worker, "save_model_to_cpu"), MAGIC_ATTR)


def test_step_metrics_report_the_mean_gradient_of_all_the_steps_updates():
    metrics = trainer()._lambda_step_metrics(report())
    assert metrics == {"actor/lambda": 0.1, "actor/lambda_grad": -0.25, "actor/lambda_grpo/lambda_updates": 2,
                       "actor/lambda_grpo/lambda_skipped_steps": 0, "actor/lambda_grpo/lambda_start": 0.0}


def test_skipped_updates_warn_with_step_and_cause_then_stop_the_run(capsys):
    driver = trainer(limit=3)
    metrics = driver._lambda_step_metrics(report(grads=[0.5], skips=[SKIP], skipped=1))
    assert metrics["actor/lambda_grpo/lambda_updates"] == 1 and metrics["actor/lambda_grpo/lambda_skipped_steps"] == 1
    warning = capsys.readouterr().out
    assert "WARNING step 7: 1 of 2 λ updates skipped" in warning and SKIP in warning and "1 step(s) in a row" in warning
    driver._lambda_step_metrics(report())  # a clean step resets the count
    assert driver.consecutive_skipped_steps == 0
    for step in (8, 9):
        driver.global_steps = step
        metrics = driver._lambda_step_metrics(report(grads=[], skips=[SKIP, SKIP], start=None))
        assert "actor/lambda_grad" not in metrics and "actor/lambda_grpo/lambda_start" not in metrics
    driver.global_steps = 10
    with pytest.raises(RuntimeError, match=r"3 training steps in a row \(last: step 10: λ's gradient was not finite.*"
                                           r"lambda_grpo.max_consecutive_skipped_steps=3"):
        driver._lambda_step_metrics(report(grads=[], skips=[SKIP]))


def test_a_step_report_merges_its_local_updates_in_order():
    merged = merged_reports([report(grads=[0.5], lam=0.01, start=None, skips=[SKIP], skipped=1),
                             report(grads=[-0.25, 0.125], lam=0.03, start=0.01, skipped=1)])
    assert merged["lambda"] == 0.03 and merged["lambda_start"] == 0.01
    assert merged["grads"] == [0.5, -0.25, 0.125] and merged["skips"] == [SKIP] and merged["skipped"] == 1


class FakeTransferQueue:
    """The two TransferQueue calls the driver makes, over one in-memory batch per key set."""

    def __init__(self, batches: dict):
        self.batches = batches

    def kv_batch_get(self, keys, partition_id, select_fields):
        return tu.get_tensordict({name: self.batches[tuple(keys)][name] for name in select_fields})

    def kv_batch_put(self, keys, partition_id, fields):
        self.batches[tuple(keys)].update(fields.items())


def nested(lengths):
    return torch.nested.as_nested_tensor([torch.ones(n, dtype=torch.long) for n in lengths], layout=torch.jagged)


class FakeActorGroup:
    """The actor worker group's λ RPCs: each update moves λ by +0.01 (as Adam's first steps of lr 0.01 do)."""

    def __init__(self, lam=0.0):
        self.lam = lam

    def lambda_grpo_step_report(self):
        start, self.lam = self.lam, self.lam + 0.01
        return [report(grads=[-1.0], lam=self.lam, start=start)] * 2  # two ranks, equal


def test_a_step_of_several_local_updates_logs_once_each_batch_weighted_by_the_lambda_before_its_update(monkeypatch):
    """separate_async with parameter_sync_step=2 (verl's own `step` loop): two local batches, two λ updates.
    The second batch's weight diagnostics are taken at λ after the first update, which is the λ the actor's
    loss weights it with; the step logs λ once (not an average of local values), both updates, empty rows
    summed, and the λ its first update started from."""
    batches = {("a0", "a1", "a2", "a3"): {"uid": ["p", "p", "p", "p"], "response_mask": nested([2, 9, 4, 0])},
               ("b0", "b1", "b2", "b3"): {"uid": ["q", "q", "q", "pad"], "response_mask": nested([3, 8, 6, 0])}}
    queue = FakeTransferQueue(batches)
    monkeypatch.setitem(sys.modules, "transfer_queue", queue)
    base = registered_trainer("separate_async")
    local_batches = iter([SimpleNamespace(keys=list(keys), partition_id="train", tags=[{}] * 4) for keys in batches])
    lambdas_seen = []

    def verl_step(self, metrics, timing_raw):  # verl's loop: parameter_sync_step × (advantage, update)
        for _ in range(2):
            batch = next(local_batches)
            self._compute_advantage(batch, {})
            lambdas_seen.append(self.lambda_value)
            self._update_actor(batch, {})
            metrics["actor/lambda"] = 123.0  # verl's MetricsAggregator average of local values, overwritten
        return batch

    monkeypatch.setattr(base, "step", verl_step)
    monkeypatch.setattr(PPOTrainer, "_compute_advantage", lambda self, batch, metrics: batch)
    monkeypatch.setattr(PPOTrainer, "_update_actor", lambda self, batch, metrics: batch)
    driver = trainer(mode="separate_async", lam=0.5)
    driver.actor_rollout_wg = FakeActorGroup(lam=0.5)
    metrics = {}
    driver.step(metrics, {})
    assert lambdas_seen == [0.5, pytest.approx(0.51)]
    assert metrics["actor/lambda"] == pytest.approx(0.52) and metrics["actor/lambda_grpo/lambda_start"] == 0.5
    assert metrics["actor/lambda_grpo/lambda_updates"] == 2 and metrics["actor/lambda_grad"] == -1.0
    assert metrics["actor/lambda_grpo/empty_rows"] == 2
    second = response_weights(torch.tensor([3, 8, 6, 0]), ["q", "q", "q", "pad"], "lambda", lam=0.51)
    first = response_weights(torch.tensor([2, 9, 4, 0]), ["p"] * 4, "lambda", lam=0.5)
    assert metrics["actor/lambda_grpo/batch_weight_max"] == pytest.approx(max(first.max(), second.max()).item())


def test_a_lambda_that_changed_between_two_updates_stops_the_run(monkeypatch):
    monkeypatch.setattr(PPOTrainer, "_update_actor", lambda self, batch, metrics: batch)
    driver = trainer(lam=0.25)
    driver.actor_rollout_wg = FakeActorGroup(lam=0.0)  # the actor's λ is not the one the last update left
    with pytest.raises(RuntimeError, match=r"step 7: the actor's update started from λ = 0.0, but λ was 0.25"):
        driver._update_actor(SimpleNamespace(), {})


def test_batch_weight_metrics_cover_padding_rows_and_the_preference_strength():
    lengths = torch.tensor([3, 9, 5, 0, 7, 2, 0])
    uids = ["a", "a", "b", "pad1", "b", "a", "pad1"]
    mask = (torch.arange(9) < lengths[:, None]).long()
    fields = group_fields(uids, mask, 4)
    driver = trainer(lam=2.0)
    driver._step_weights = [(driver._batch_weights(fields, lengths), lengths, uids)]
    metrics = driver._step_weight_metrics()
    expected = response_weights(lengths, uids, "lambda", lam=2.0)
    assert metrics["actor/lambda_grpo/batch_weight_max"] == pytest.approx(expected.max().item(), rel=1e-6)
    assert metrics["actor/lambda_grpo/empty_rows"] == 2 and metrics["actor/lambda_grpo/weight_long_short_ratio"] > 1
    grpo = trainer("grpo")
    grpo._step_weights = [(grpo._batch_weights(fields, lengths), lengths, uids)]
    assert grpo._step_weight_metrics()["actor/lambda_grpo/batch_weight_max"] == pytest.approx((26 / 7) / 2)


def test_group_fields_hold_the_lengths_as_generated_before_verls_rejection(monkeypatch):
    """verl's rollout correction zeroes rejected tokens of response_mask inside _compute_advantage; |o_i| in z
    must stay the generated length, so the driver reads the masks before verl's step runs."""
    lengths = [3, 6, 4, 5]
    masks = [torch.ones(length, dtype=torch.long) for length in lengths]
    queue = FakeTransferQueue({("k",) * 4: {"uid": ["a"] * 4, "response_mask": nested(lengths)}})
    monkeypatch.setitem(sys.modules, "transfer_queue", queue)

    def verl_compute_advantage(self, batch, metrics):  # token-level rejection: the last 2 tokens of every row
        queue.batches[("k",) * 4]["response_mask"] = torch.nested.as_nested_tensor(
            [torch.cat([mask[:-2], torch.zeros(2, dtype=torch.long)]) for mask in masks], layout=torch.jagged)
        return batch

    monkeypatch.setattr(PPOTrainer, "_compute_advantage", verl_compute_advantage)
    driver = trainer()
    driver._compute_advantage(SimpleNamespace(keys=["k"] * 4, partition_id="train"), {})
    assert queue.batches[("k",) * 4][GROUP_LENGTHS_KEY][0].tolist() == [3.0, 6.0, 4.0, 5.0]
    assert driver._step_weight_metrics()["actor/lambda_grpo/empty_rows"] == 0


def test_a_group_wider_than_rollout_n_stops_the_run_on_the_driver(monkeypatch):
    queue = FakeTransferQueue({("k",) * 5: {"uid": ["a"] * 5, "response_mask": nested([2] * 5)}})
    monkeypatch.setitem(sys.modules, "transfer_queue", queue)
    with pytest.raises(RuntimeError, match=r"step 7: prompt group 'a' has 5 non-empty .*rollout.n=4"):
        trainer()._compute_advantage(SimpleNamespace(keys=["k"] * 5, partition_id="train"), {})
    assert GROUP_LENGTHS_KEY not in queue.batches[("k",) * 5]
