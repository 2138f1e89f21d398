"""The driver's λ bookkeeping: step metrics, warnings for skipped λ updates, the stop after too many in a row,
and the batch weight diagnostics. (The trainer as a whole runs in tests/test_cpu_pipeline.py.)"""

import sys
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from verl.trainer.ppo.v1 import PPOTrainerSync
from verl.utils import tensordict_utils as tu

from lambda_grpo.group_fields import GROUP_LENGTHS_KEY, group_fields
from lambda_grpo.trainer import LambdaGRPOTrainer
from lambda_grpo.weights import WeightOptions, response_weights

SKIP = "λ's gradient was not finite (nan) on some rank"


def trainer(scheme="lambda", limit=3, lam=0.0):
    """A LambdaGRPOTrainer with only the state its λ bookkeeping reads (no Ray, no workers)."""
    driver = object.__new__(LambdaGRPOTrainer)
    driver.config = OmegaConf.create({"lambda_grpo": {"max_consecutive_skipped_steps": limit}})
    driver.weight_options = WeightOptions(scheme, max_response_length=16)
    driver.learns_lambda = scheme == "lambda"
    driver.lambda_value = lam
    driver.consecutive_skipped_steps = 0
    driver.global_steps = 7
    return driver


def report(grads=(0.25, -0.75), skips=(), lam=0.1, skipped=0):
    return {"lambda": lam, "grads": list(grads), "skips": list(skips), "updates": 5, "skipped": skipped,
            "trainable": True}


def test_step_metrics_report_the_mean_gradient_of_all_the_steps_updates():
    metrics = trainer()._lambda_step_metrics(report())
    assert metrics == {"actor/lambda": 0.1, "actor/lambda_grad": -0.25, "actor/lambda_grpo/lambda_updates": 2,
                       "actor/lambda_grpo/lambda_skipped_steps": 0}


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
        metrics = driver._lambda_step_metrics(report(grads=[], skips=[SKIP, SKIP]))
        assert "actor/lambda_grad" not in metrics
    driver.global_steps = 10
    with pytest.raises(RuntimeError, match=r"3 training steps in a row \(last: step 10: λ's gradient was not finite.*"
                                           r"lambda_grpo.max_consecutive_skipped_steps=3"):
        driver._lambda_step_metrics(report(grads=[], skips=[SKIP]))


def test_batch_weight_metrics_cover_padding_rows_and_the_preference_strength():
    lengths = torch.tensor([3, 9, 5, 0, 7, 2, 0])
    uids = ["a", "a", "b", "pad1", "b", "a", "pad1"]
    mask = (torch.arange(9) < lengths[:, None]).long()
    fields = group_fields(uids, mask, 4)
    metrics = trainer(lam=2.0)._weight_metrics(fields, lengths, uids)
    expected = response_weights(lengths, uids, "lambda", lam=2.0)
    assert metrics["actor/lambda_grpo/batch_weight_max"] == pytest.approx(expected.max().item(), rel=1e-6)
    assert metrics["actor/lambda_grpo/empty_rows"] == 2 and metrics["actor/lambda_grpo/weight_long_short_ratio"] > 1
    grpo = trainer("grpo")._weight_metrics(fields, lengths, uids)
    assert grpo["actor/lambda_grpo/batch_weight_max"] == pytest.approx((26 / 7) / 2)  # μ̄ over all 7 rows / |o|


class FakeTransferQueue:
    """The two TransferQueue calls the driver makes, over one in-memory batch."""

    def __init__(self, fields: dict):
        self.fields = fields

    def kv_batch_get(self, keys, partition_id, select_fields):
        return tu.get_tensordict({name: self.fields[name] for name in select_fields})

    def kv_batch_put(self, keys, partition_id, fields):
        self.fields.update(fields.items())


def test_group_fields_hold_the_lengths_as_generated_before_verls_rejection(monkeypatch):
    """verl's rollout correction zeroes rejected tokens of response_mask inside _compute_advantage; |o_i| in z
    must stay the generated length, so the driver reads the masks before verl's step runs."""
    lengths = [3, 6, 4, 5]
    masks = [torch.ones(length, dtype=torch.long) for length in lengths]
    queue = FakeTransferQueue({"uid": ["a"] * 4, "response_mask": torch.nested.as_nested_tensor(masks, layout=torch.jagged)})
    monkeypatch.setitem(sys.modules, "transfer_queue", queue)

    def verl_compute_advantage(self, batch, metrics):  # token-level rejection: the last 2 tokens of every row
        queue.fields["response_mask"] = torch.nested.as_nested_tensor(
            [torch.cat([mask[:-2], torch.zeros(2, dtype=torch.long)]) for mask in masks], layout=torch.jagged)
        return batch

    monkeypatch.setattr(PPOTrainerSync, "_compute_advantage", verl_compute_advantage)
    driver = trainer()
    driver.config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"n": 4}}})
    metrics = {}
    driver._compute_advantage(SimpleNamespace(keys=["k"] * 4, partition_id="train"), metrics)
    assert queue.fields[GROUP_LENGTHS_KEY][0].tolist() == [3.0, 6.0, 4.0, 5.0]
    assert metrics["actor/lambda_grpo/empty_rows"] == 0


def test_a_group_wider_than_rollout_n_stops_the_run_on_the_driver(monkeypatch):
    masks = [torch.ones(2, dtype=torch.long)] * 5
    queue = FakeTransferQueue({"uid": ["a"] * 5, "response_mask": torch.nested.as_nested_tensor(masks, layout=torch.jagged)})
    monkeypatch.setitem(sys.modules, "transfer_queue", queue)
    driver = trainer()
    driver.config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"n": 4}}})
    with pytest.raises(RuntimeError, match=r"step 7: prompt group 'a' has 5 non-empty .*rollout.n=4"):
        driver._compute_advantage(SimpleNamespace(keys=["k"] * 5, partition_id="train"), {})
    assert GROUP_LENGTHS_KEY not in queue.fields
