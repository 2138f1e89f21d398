"""λ as a parameter of the actor optimizer: options, fixed mode, bounds, LR schedule, checkpoints, and
gradient synchronisation over real torch.distributed (gloo) processes."""

from pathlib import Path

import pytest
import torch
from gloo_ranks import run_ranks
from verl.workers.config import FSDPOptimizerConfig
from verl.workers.config.optimizer import build_optimizer

from lambda_grpo import learnable_lambda
from lambda_grpo.learnable_lambda import LambdaAdamW, LambdaOptions, active_lambda_optimizer

WORKER = Path(__file__).with_name("lambda_sync_worker.py")


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def _push_lambda(optimizer, gradient, steps=1):
    for _ in range(steps):
        optimizer.zero_grad()
        if optimizer.lam.requires_grad:
            (optimizer.lam * gradient).backward()
        optimizer.step()


def test_trainable_lambda_is_its_own_param_group_without_weight_decay():
    optimizer = LambdaAdamW(_model().parameters(), lr=1e-3, weight_decay=0.1, lambda_lr=0.02, lambda_init=0.5)
    group = optimizer.lambda_group
    assert group is not None and group["params"] == [optimizer.lam]
    assert group["weight_decay"] == 0.0 and group["lr"] == 0.02
    assert optimizer.lam.dtype == torch.float32 and optimizer.lam.item() == 0.5
    _push_lambda(optimizer, gradient=1.0)  # d loss/dλ > 0: Adam steps λ down by ≈ lr
    assert optimizer.lam.item() == pytest.approx(0.5 - 0.02, rel=1e-4)
    assert active_lambda_optimizer() is optimizer


def test_fixed_lambda_never_changes_and_has_no_optimizer_state():
    optimizer = LambdaAdamW(_model().parameters(), lambda_init=1.5, lambda_trainable=False)
    assert optimizer.lambda_group is None and not optimizer.lam.requires_grad
    _push_lambda(optimizer, gradient=1.0, steps=3)
    assert optimizer.lam.item() == 1.5
    assert all(optimizer.lam is not p for group in optimizer.param_groups for p in group["params"])
    assert optimizer.lam not in optimizer.state


def test_bounds_are_respected_after_every_step():
    optimizer = LambdaAdamW(_model().parameters(), lambda_lr=0.7, lambda_bounds=(-1.0, 1.0))
    _push_lambda(optimizer, gradient=-1.0, steps=5)  # pushes λ up by ≈ 0.7 per step
    assert optimizer.lam.item() == 1.0
    _push_lambda(optimizer, gradient=1.0, steps=12)
    assert optimizer.lam.item() == -1.0


@pytest.mark.parametrize("follow", [False, True])
def test_lr_schedule_applies_to_lambda_only_when_asked(follow):
    optimizer = LambdaAdamW(_model().parameters(), lambda_lr=0.1, lambda_follow_lr_schedule=follow)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.0)  # warm-up from 0, as verl's
    _push_lambda(optimizer, gradient=-1.0, steps=2)
    scheduler.step()
    assert (optimizer.lam.item() == 0.0) is follow


def test_nonfinite_gradient_leaves_lambda_unchanged():
    optimizer = LambdaAdamW(_model().parameters(), lambda_init=0.25)
    _push_lambda(optimizer, gradient=float("inf"))
    assert optimizer.lam.item() == 0.25 and optimizer.lambda_skipped == 1 and optimizer.lambda_updates == 0
    (cause,) = optimizer.take_step_report()["skips"]
    assert "not finite (inf)" in cause


def test_an_update_verl_skips_is_counted_with_its_cause():
    """verl's engine zeroes the gradients instead of stepping when the model's grad norm is not finite."""
    optimizer = LambdaAdamW(_model().parameters(), lambda_init=0.25)
    optimizer.zero_grad()
    (optimizer.lam * 2.0).backward()
    optimizer.zero_grad()  # verl: "grad_norm is not finite" → zero_grad, no step
    _push_lambda(optimizer, gradient=1.0)  # the next mini-batch steps normally
    assert optimizer.lambda_skipped == 1 and optimizer.lambda_updates == 1
    report = optimizer.take_step_report()
    assert report["grads"] == [1.0] and len(report["skips"]) == 1 and "optimizer step was skipped" in report["skips"][0]
    assert optimizer.take_step_report()["skips"] == []  # a report covers the time since the last one


def test_step_report_lists_every_update_of_the_step():
    optimizer = LambdaAdamW(_model().parameters())
    for gradient in (0.5, -1.5, 2.0):
        _push_lambda(optimizer, gradient=gradient)
    report = optimizer.take_step_report()
    assert report["grads"] == [0.5, -1.5, 2.0] and report["skips"] == [] and report["updates"] == 3
    assert report["lambda"] == optimizer.lam.item() and optimizer.take_step_report()["grads"] == []


def test_step_report_names_the_lambda_its_first_gradient_was_computed_with():
    """The async modes log which λ weighted a step's first batch: λ when the first gradient reached it."""
    optimizer = LambdaAdamW(_model().parameters(), lambda_init=0.25)
    assert optimizer.take_step_report()["lambda_start"] is None  # no gradient since the last report
    _push_lambda(optimizer, gradient=1.0, steps=2)
    report = optimizer.take_step_report()
    assert report["lambda_start"] == 0.25 and report["lambda"] != 0.25
    _push_lambda(optimizer, gradient=1.0)
    assert optimizer.take_step_report()["lambda_start"] == report["lambda"]  # the next report starts afresh


def test_state_dict_round_trip_restores_lambda_and_its_moments():
    optimizer = LambdaAdamW(_model().parameters(), lambda_lr=0.05)
    _push_lambda(optimizer, gradient=-2.0, steps=3)
    state = optimizer.state_dict()
    assert float(state["lambda_grpo"]["value"]) == optimizer.lam.item()

    restored = LambdaAdamW(_model().parameters(), lambda_lr=0.05)
    restored.load_state_dict(state)
    assert restored.lam.item() == optimizer.lam.item() and restored.lambda_updates == 3
    _push_lambda(optimizer, gradient=-2.0)
    _push_lambda(restored, gradient=-2.0)
    assert restored.lam.item() == optimizer.lam.item()  # Adam moments came back too


def test_loading_a_checkpoint_without_lambda_or_with_another_mode_is_refused():
    plain = torch.optim.AdamW(_model().parameters())
    with pytest.raises(ValueError, match="holds no λ"):
        LambdaAdamW(_model().parameters()).load_state_dict(plain.state_dict())
    fixed = LambdaAdamW(_model().parameters(), lambda_trainable=False)
    with pytest.raises(ValueError, match="trainable=False"):
        LambdaAdamW(_model().parameters()).load_state_dict(fixed.state_dict())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=-0.1), "lr must be"),
        (dict(init=11.0), "outside bounds"),
        (dict(bounds=(1.0, -1.0)), "low < high"),
    ],
)
def test_bad_options_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LambdaOptions(**kwargs)


def test_built_through_verl_optimizer_hook():
    config = FSDPOptimizerConfig(
        lr=3e-6,
        betas=[0.9, 0.95],
        optimizer_impl="lambda_grpo.learnable_lambda",
        optimizer="LambdaAdamW",
        override_optimizer_config={"lambda_init": 0.2, "lambda_lr": 0.03, "lambda_bounds": [-5, 5]},
    )
    optimizer = build_optimizer(_model().parameters(), config)
    assert isinstance(optimizer, LambdaAdamW)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.95) and optimizer.param_groups[0]["lr"] == 3e-6
    assert optimizer.lambda_options == LambdaOptions(init=0.2, lr=0.03, bounds=(-5.0, 5.0))


def test_no_lambda_optimizer_says_how_to_install_one(monkeypatch):
    monkeypatch.setattr(learnable_lambda, "_active_optimizer", None)
    with pytest.raises(RuntimeError, match="optimizer_impl=lambda_grpo.learnable_lambda"):
        active_lambda_optimizer()


def _run_ranks(world: int, scenario: str, out: Path, steps: int = 6) -> list[dict]:
    return run_ranks(WORKER, world, ["--scenario", scenario, "--steps", str(steps)], out)


@pytest.fixture(scope="module")
def single_process_lambda(tmp_path_factory):
    """λ after each step of one process that saw the whole batch (dp = 1)."""
    return _run_ranks(1, "train", tmp_path_factory.mktemp("single"))[0]["lambda"]


@pytest.mark.distributed
@pytest.mark.parametrize("world", [2, 4])
def test_lambda_is_identical_on_all_ranks_and_equals_single_process(world, tmp_path, single_process_lambda):
    reference = single_process_lambda
    ranks = _run_ranks(world, "train", tmp_path / f"dp{world}")
    assert all(result["lambda"] == ranks[0]["lambda"] for result in ranks)  # bit-identical
    assert ranks[0]["lambda"] == pytest.approx(reference, rel=1e-5, abs=1e-7)
    assert len(set(reference)) == len(reference)  # λ moved at every step: the comparison is not vacuous


@pytest.mark.distributed
def test_nonfinite_gradient_on_one_rank_changes_lambda_on_no_rank(tmp_path):
    ranks = _run_ranks(2, "nonfinite", tmp_path)
    for result in ranks:
        trajectory = result["lambda"]
        assert trajectory[2] == trajectory[1] and trajectory[3] != trajectory[2]
        assert result["skipped"] == 1
    assert ranks[0]["lambda"] == ranks[1]["lambda"]


@pytest.mark.distributed
def test_save_restore_continue_matches_an_uninterrupted_run(tmp_path):
    uninterrupted = _run_ranks(2, "train", tmp_path / "straight", steps=8)
    resumed = _run_ranks(2, "resume", tmp_path / "resumed", steps=4)
    for straight, again in zip(uninterrupted, resumed):
        assert again["lambda"] == straight["lambda"]
