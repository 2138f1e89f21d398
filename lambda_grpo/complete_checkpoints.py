"""Complete checkpoints: a marker written after the whole save, and a resume that never picks a partial one.

verl 0.9.1 saves step N (`_save_checkpoint`, verl/trainer/ppo/v1/trainer_base.py) in this order: every actor rank
writes its shards into global_step_N/actor/ (model; optimizer, which holds λ; extra state; rank 0 also huggingface/
and fsdp_config.json); the trainer writes global_step_N/data.pt (the dataloader's position), then verl's tracker
latest_checkpointed_iteration.txt := N (`open(path, "w")`: truncated, then written); lambda_grpo's trainer then adds
lambda_grpo.json. `trainer.resume_mode=auto` resumes from the step the tracker names, without looking inside
(`find_latest_ckpt_path`). A job killed during the save leaves, for verl alone:

| killed while ...                               | the tracker says | verl resumes                                 |
|------------------------------------------------|------------------|----------------------------------------------|
| the ranks write global_step_N/actor            | N-1              | from N-1 (right)                             |
| the tracker is being written                   | "" (truncated)   | not at all: int("") raises at start-up       |
| lambda_grpo.json is written                    | N                | from N, without its lambda_grpo.json         |
| verl's rotation (max_actor_ckpt_to_keep) rmtree's an old actor/ | N | from N (right); the old one is half gone |

and a file truncated later (a full disk, a copy cut short) is found only when torch.load fails on it.

What this module adds:
- `marks_complete` wraps the trainer's `_save_checkpoint`: it removes global_step_N's marker before the save (a
  folder being written never carries one, also when a resumed run saves step N again over an older save), and
  after the whole save writes MARKER: the step and every file of global_step_N with its size, written under a
  temporary name, fsynced and renamed (atomic on POSIX file systems, NFS and Lustre included).
- A checkpoint is complete when its marker is there and every file it lists has the listed size (`why_incomplete`);
  verl's rotation deletes global_step_K/actor of old checkpoints, which makes them incomplete too.
- `prepare_resume`, at every start before Ray (`python -m lambda_grpo.main`): with `trainer.resume_mode=auto` it
  makes verl's tracker name the latest complete checkpoint (rewritten atomically, with a notice naming what was
  incomplete and why) when it names another, cannot be read, or is missing while a complete checkpoint exists.
  A folder with a tracker and checkpoints of which none is complete (checkpoints written before lambda_grpo
  marked them have no marker) stops the start with `ResumeError`, which says how to choose: never a silent start
  from scratch over them. With `resume_path` the named checkpoint is the user's choice: an incomplete one draws a
  warning.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lambda_grpo.data.outputs import write_text_atomically

MARKER = "lambda_grpo_complete.json"
"""The completeness marker inside global_step_<N>/."""

TRACKER = "latest_checkpointed_iteration.txt"
"""verl's tracker of the latest checkpoint
(verl.utils.checkpoint.checkpoint_manager.get_checkpoint_tracker_filename)."""

STEP_DIR = re.compile(r"global_step_(\d+)")


class ResumeError(RuntimeError):
    """The checkpoint folder holds checkpoints, but none that a resume may start from."""


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / f"global_step_{step}"


def _files(folder: Path) -> dict[str, int]:
    """Every regular file under `folder` except the marker (and its temporary copy): relative path → size."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith((MARKER, f".{MARKER}")):
            files[path.relative_to(folder).as_posix()] = path.stat().st_size
    return files


def mark_complete(folder: Path, step: int) -> None:
    """Write global_step_<step>'s marker: the step and each of its files with its size (after the whole save)."""
    write_text_atomically(folder / MARKER, json.dumps({"global_step": step, "files": _files(folder)}, indent=1))


def marks_complete(save: Callable[[Any], None]) -> Callable[[Any], None]:
    """Decorates a verl trainer's `_save_checkpoint`: unmark global_step_<N> before the save, mark it after.

    The trainer's `config.trainer.default_local_dir` and `global_steps` name the folder, as verl names it.
    """

    @functools.wraps(save)
    def save_and_mark(trainer: Any) -> None:
        folder = step_dir(Path(trainer.config.trainer.default_local_dir), trainer.global_steps)
        (folder / MARKER).unlink(missing_ok=True)
        save(trainer)
        mark_complete(folder, trainer.global_steps)

    return save_and_mark


def why_incomplete(folder: Path) -> str | None:
    """Why global_step_<N> is not a complete checkpoint (None when it is)."""
    if not folder.is_dir():
        return "it does not exist"
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        step, files = int(marker["global_step"]), dict(marker["files"])
    except FileNotFoundError:
        return f"no {MARKER}: its save did not finish"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"its {MARKER} cannot be read ({type(error).__name__}: {error})"
    if folder.name != f"global_step_{step}":
        return f"its {MARKER} is the one of global_step_{step}"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing (verl's max_actor_ckpt_to_keep deletes actor/ of old checkpoints)"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    return None


def checkpoint_steps(run_dir: Path) -> list[int]:
    """The steps of the global_step_<N> folders in `run_dir`, ascending."""
    if not run_dir.is_dir():
        return []
    matches = (STEP_DIR.fullmatch(path.name) for path in run_dir.iterdir() if path.is_dir())
    return sorted(int(match[1]) for match in matches if match)


def latest_complete(run_dir: Path) -> Path | None:
    """The latest complete checkpoint in `run_dir`, if any."""
    for step in reversed(checkpoint_steps(run_dir)):
        if why_incomplete(step_dir(run_dir, step)) is None:
            return step_dir(run_dir, step)
    return None


def tracked_step(run_dir: Path) -> int | str | None:
    """The step verl's tracker names; its unreadable text as a str; None without a tracker."""
    try:
        text = (run_dir / TRACKER).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return text


def prepare_resume(run_dir: Path, resume_mode: str, resume_from_path: str | None) -> str | None:
    """Make verl resume from a complete checkpoint (module docstring); the notice to print, or None."""
    if resume_mode == "resume_path":
        why = why_incomplete(Path(str(resume_from_path)))
        return None if why is None else (f"WARNING trainer.resume_from_path={resume_from_path} is not a complete "
                                         f"checkpoint ({why}); resuming from it as asked")
    if resume_mode != "auto":
        return None
    tracked = tracked_step(run_dir)
    if isinstance(tracked, int) and why_incomplete(step_dir(run_dir, tracked)) is None:
        return None
    latest = latest_complete(run_dir)
    if isinstance(tracked, int):
        why = why_incomplete(step_dir(run_dir, tracked))
        problem = f"{TRACKER} names global_step_{tracked}, which is incomplete: {why}"
    elif isinstance(tracked, str):
        problem = f"{TRACKER} cannot be read ({tracked[:40]!r}: it was cut short while being written)"
    elif latest is None:
        return None  # nothing tracked, nothing complete: a first start (verl trains from scratch)
    else:
        problem = f"{TRACKER} is missing"
    if latest is not None:
        write_text_atomically(run_dir / TRACKER, latest.name.removeprefix("global_step_"))
        return f"{run_dir}: {problem}; resuming from {latest.name}, the latest complete checkpoint"
    steps = checkpoint_steps(run_dir)
    if not steps:
        (run_dir / TRACKER).unlink()
        return f"{run_dir}: {problem}, and there is no checkpoint: training from scratch"
    named = step_dir(run_dir, tracked if isinstance(tracked, int) else steps[-1])
    raise ResumeError(
        f"trainer.default_local_dir={run_dir}: {problem}, and no checkpoint there is complete (checkpoints written "
        f"before lambda_grpo marked them have no {MARKER}). Resume from one you trust with "
        f"trainer.resume_mode=resume_path trainer.resume_from_path={named}, or start over in another "
        "trainer.default_local_dir"
    )
