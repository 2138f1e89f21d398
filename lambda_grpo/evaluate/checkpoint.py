"""Find the HF model to evaluate: an HF directory as is, or a verl actor checkpoint merged by verl's own merger.

Accepted `--model` paths:
  an HF model directory      config.json plus weights (model.safetensors[.index.json] / pytorch_model.bin[...])
  a verl checkpoint root     trainer.default_local_dir, holding latest_checkpointed_iteration.txt: its latest step
  global_step_N              one saved step: its actor/ is used
  global_step_N/actor        FSDP (fsdp_config.json + model_world_size_W_rank_R.pt + huggingface/) or Megatron
                             (model/dist_ckpt + model/huggingface) actor checkpoint

What is evaluated is `resolve_checkpoint(path)`: the HF directory, or the actor checkpoint directory and its
global step, found without loading anything. It keys the evaluation's results (`runner`): pointed at a run's
directory, a later evaluation after training advanced resolves to the new step.

A checkpoint is merged with `verl.model_merger` (FSDPModelMerger / MegatronModelMerger, as
`python -m verl.model_merger merge` does) into `<work_dir>/merged_model`, built under a temporary name and renamed
when complete; a later run reuses it if it was merged from the same actor directory.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

MERGED_DIR = "merged_model"
SOURCE_MARKER = ".merged_from"
_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


_STEP_DIR = re.compile(r"global_step_(\d+)")


@dataclass(frozen=True)
class Checkpoint:
    """What `--model` resolves to: `path`, an HF model directory or a verl actor checkpoint directory; for the
    latter, its global `step` and its run directory `run_dir` (trainer.default_local_dir), when laid out as verl
    saves them (<run_dir>/global_step_<step>/actor)."""

    path: Path
    step: int | None = None
    run_dir: Path | None = None

    @property
    def label(self) -> str:
        """"global_step_<step>" for a checkpoint of a run, else the directory's name."""
        return f"global_step_{self.step}" if self.step is not None else self.path.name


def resolve_checkpoint(path: Path) -> Checkpoint:
    """The model `--model path` names (module docstring); ValueError if it is neither an HF directory nor a
    verl actor checkpoint."""
    path = path.expanduser().resolve()
    if is_hf_model_dir(path):
        return Checkpoint(path)
    actor = actor_dir(path)
    step_dir = actor.parent if actor.name == "actor" else actor
    match = _STEP_DIR.fullmatch(step_dir.name)
    if match is None:
        return Checkpoint(actor)
    return Checkpoint(actor, int(match.group(1)), step_dir.parent)


def is_hf_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / name).is_file() for name in _WEIGHTS)


def actor_dir(path: Path) -> Path:
    """The actor checkpoint directory named by `path` (root, global_step_N or actor); ValueError if none."""
    latest = path / "latest_checkpointed_iteration.txt"
    if latest.is_file():
        path = path / f"global_step_{latest.read_text().strip()}"
    if (path / "actor").is_dir():
        path = path / "actor"
    if (path / "fsdp_config.json").is_file() or (path / "model" / "dist_ckpt").is_dir():
        return path
    raise ValueError(
        f"{path} is neither an HF model directory (config.json + weights) nor a verl actor checkpoint "
        "(fsdp_config.json, or model/dist_ckpt for Megatron)"
    )


def _merge(actor: Path, target: Path) -> None:
    """verl's merger, as `python -m verl.model_merger merge --backend fsdp|megatron --local_dir actor`."""
    from verl.model_merger.base_model_merger import ModelMergerConfig

    megatron = (actor / "model" / "dist_ckpt").is_dir()
    config = ModelMergerConfig(
        operation="merge",
        backend="megatron" if megatron else "fsdp",
        local_dir=str(actor),
        target_dir=str(target),
        hf_model_config_path=str(actor / "model" / "huggingface" if megatron else actor / "huggingface"),
    )
    if megatron:
        from verl.model_merger.megatron_model_merger import MegatronModelMerger as Merger
    else:
        from verl.model_merger.fsdp_model_merger import FSDPModelMerger as Merger
    merger = Merger(config)
    merger.merge_and_save()
    merger.cleanup()


def resolve_model(checkpoint: Checkpoint, work_dir: Path) -> Path:
    """The HF model directory to evaluate for `checkpoint` (module docstring); merges into `work_dir` if needed."""
    if is_hf_model_dir(checkpoint.path):
        return checkpoint.path
    actor = checkpoint.path
    merged = work_dir / MERGED_DIR
    if merged.is_dir():
        source = (merged / SOURCE_MARKER).read_text().strip() if (merged / SOURCE_MARKER).is_file() else ""
        if source != str(actor):
            raise ValueError(f"{merged} was merged from {source or 'an unknown checkpoint'}, not {actor}: remove it")
        return merged
    work_dir.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{MERGED_DIR}.", dir=work_dir))
    try:
        print(f"[lambda_grpo.evaluate] merging {actor} with verl's model merger", flush=True)
        _merge(actor, temporary)
        (temporary / SOURCE_MARKER).write_text(f"{actor}\n")
        temporary.rename(merged)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return merged
