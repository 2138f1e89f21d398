"""lambda_grpo.complete_checkpoints: the marker after a save, and the resume that never starts from a partial one,
checked against verl's own tracker reader (find_latest_ckpt_path), on the folders a killed save leaves."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path, get_checkpoint_tracker_filename

from lambda_grpo.complete_checkpoints import (
    MARKER,
    TRACKER,
    ResumeError,
    latest_complete,
    mark_complete,
    marks_complete,
    prepare_resume,
    why_incomplete,
)

FILES = {"actor/model_world_size_2_rank_0.pt": 300, "actor/model_world_size_2_rank_1.pt": 300,
         "actor/optim_world_size_2_rank_0.pt": 600, "actor/optim_world_size_2_rank_1.pt": 600,
         "actor/huggingface/config.json": 40, "data.pt": 20, "lambda_grpo.json": 80}


def write_step(run_dir: Path, step: int, complete: bool = True) -> Path:
    """A checkpoint folder as verl and our trainer write it (sizes only matter), marked when `complete`."""
    folder = run_dir / f"global_step_{step}"
    for name, size in FILES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x" * size)
    if complete:
        mark_complete(folder, step)
    return folder


def track(run_dir: Path, text: str) -> None:
    (run_dir / TRACKER).write_text(text)


def test_the_tracker_is_verls():
    assert get_checkpoint_tracker_filename("/run") == f"/run/{TRACKER}"


def test_marker_lists_every_file_with_its_size(tmp_path):
    folder = write_step(tmp_path, 3)
    marker = json.loads((folder / MARKER).read_text())
    assert marker == {"global_step": 3, "files": dict(sorted(FILES.items()))}
    assert why_incomplete(folder) is None
    assert not list(folder.glob(f"{MARKER}.tmp*"))


@pytest.mark.parametrize(("damage", "reason"), [
    (lambda f: (f / MARKER).unlink(), f"no {MARKER}: its save did not finish"),
    (lambda f: (f / MARKER).write_text('{"global_step": 3, "fi'), f"its {MARKER} cannot be read"),
    (lambda f: (f / "actor/optim_world_size_2_rank_1.pt").write_bytes(b"x" * 17),
     "actor/optim_world_size_2_rank_1.pt has 17 bytes, 600 were written"),
    (lambda f: (f / "actor/model_world_size_2_rank_0.pt").unlink(), "actor/model_world_size_2_rank_0.pt is missing"),
])
def test_a_damaged_checkpoint_is_incomplete(tmp_path, damage, reason):
    folder = write_step(tmp_path, 3)
    damage(folder)
    assert reason in why_incomplete(folder)
    assert why_incomplete(tmp_path / "global_step_4") == "it does not exist"


def test_a_marker_moved_to_another_step_is_refused(tmp_path):
    folder = write_step(tmp_path, 3)
    other = tmp_path / "global_step_4"
    folder.rename(other)
    assert why_incomplete(other) == f"its {MARKER} is the one of global_step_3"


def fake_trainer(run_dir: Path, step: int, save) -> SimpleNamespace:
    trainer = SimpleNamespace(config=SimpleNamespace(trainer=SimpleNamespace(default_local_dir=str(run_dir))),
                              global_steps=step)
    trainer.save = lambda: marks_complete(save)(trainer)
    return trainer


def test_a_save_unmarks_first_and_marks_last(tmp_path):
    """A step saved again (after a resume from an earlier one) is unmarked while it is written; a save that raises
    leaves it unmarked."""
    write_step(tmp_path, 2)
    seen = []

    def save(trainer):
        seen.append((tmp_path / "global_step_2" / MARKER).exists())
        write_step(tmp_path, 2, complete=False)

    fake_trainer(tmp_path, 2, save).save()
    assert seen == [False] and why_incomplete(tmp_path / "global_step_2") is None

    def dies(trainer):
        (tmp_path / "global_step_2" / "data.pt").write_bytes(b"")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fake_trainer(tmp_path, 2, dies).save()
    assert why_incomplete(tmp_path / "global_step_2") == f"no {MARKER}: its save did not finish"


def test_a_save_killed_after_verls_tracker_resumes_from_the_one_before(tmp_path):
    """The tracker names step 3 (verl wrote it), but the job died before the marker: verl would resume from 3."""
    write_step(tmp_path, 1), write_step(tmp_path, 2), write_step(tmp_path, 3, complete=False)
    track(tmp_path, "3")
    assert find_latest_ckpt_path(str(tmp_path)) == str(tmp_path / "global_step_3")
    notice = prepare_resume(tmp_path, "auto", None)
    assert f"names global_step_3, which is incomplete: no {MARKER}" in notice
    assert "resuming from global_step_2, the latest complete checkpoint" in notice
    assert find_latest_ckpt_path(str(tmp_path)) == str(tmp_path / "global_step_2")
    assert prepare_resume(tmp_path, "auto", None) is None  # the next start finds nothing to repair


def test_a_tracker_cut_short_no_longer_stops_the_start(tmp_path):
    """verl opens the tracker with "w" before writing it: killed in between, verl's own start-up raises."""
    write_step(tmp_path, 1)
    track(tmp_path, "")
    with pytest.raises(ValueError):
        find_latest_ckpt_path(str(tmp_path))
    assert "cannot be read" in prepare_resume(tmp_path, "auto", None)
    assert find_latest_ckpt_path(str(tmp_path)) == str(tmp_path / "global_step_1")


def test_rotation_half_done_and_missing_tracker(tmp_path):
    write_step(tmp_path, 1), write_step(tmp_path, 2)
    (tmp_path / "global_step_2" / "actor" / "optim_world_size_2_rank_0.pt").unlink()  # rmtree killed midway
    assert "resuming from global_step_1" in prepare_resume(tmp_path, "auto", None)
    (tmp_path / TRACKER).unlink()
    assert f"{TRACKER} is missing; resuming from global_step_1" in prepare_resume(tmp_path, "auto", None)
    assert latest_complete(tmp_path) == tmp_path / "global_step_1"


def test_first_start_and_first_save_killed(tmp_path):
    assert prepare_resume(tmp_path / "new", "auto", None) is None
    write_step(tmp_path, 1, complete=False)  # killed before verl wrote its tracker: verl starts from scratch
    assert prepare_resume(tmp_path, "auto", None) is None and not (tmp_path / TRACKER).exists()
    track(tmp_path, "")
    (tmp_path / "global_step_1").rename(tmp_path / "elsewhere")
    assert "no checkpoint: training from scratch" in prepare_resume(tmp_path, "auto", None)
    assert not (tmp_path / TRACKER).exists()


def test_checkpoints_without_any_marker_stop_the_start(tmp_path):
    write_step(tmp_path, 5, complete=False)
    track(tmp_path, "5")
    with pytest.raises(ResumeError, match=r"trainer.resume_mode=resume_path trainer.resume_from_path=.*global_step_5"):
        prepare_resume(tmp_path, "auto", None)
    assert (tmp_path / TRACKER).read_text() == "5"  # untouched


def test_resume_path_and_disable_are_the_users_choice(tmp_path):
    write_step(tmp_path, 1), write_step(tmp_path, 2, complete=False)
    track(tmp_path, "2")
    assert prepare_resume(tmp_path, "resume_path", str(tmp_path / "global_step_1")) is None
    warning = prepare_resume(tmp_path, "resume_path", str(tmp_path / "global_step_2"))
    assert warning.startswith("WARNING") and "resuming from it as asked" in warning
    assert prepare_resume(tmp_path, "disable", None) is None
    assert (tmp_path / TRACKER).read_text() == "2"
