"""How much disk a run's checkpoints take: the estimate `lambda_grpo.preflight` checks free space against.

One verl FSDP checkpoint (verl/utils/checkpoint/fsdp_checkpoint_manager.py, `save_checkpoint`) holds, for
each of the actor's P parameters, in `actor_rollout_ref.actor.fsdp_config.model_dtype` (fp32 by default,
b bytes each), what `actor_rollout_ref.actor.checkpoint.save_contents` lists:

    'model'       the parameter shards                               1 · b
    'optimizer'   AdamW's two moments, in the parameters' dtype      2 · b   (λ's own state is 2 floats)
    'hf_model'    a full Hugging Face copy under huggingface/        1 · b   (not in verl's default)

plus, always, the model's config and tokenizer files under huggingface/ and a small `extra` state:

    bytes_per_checkpoint = P · b · (n_model + 2·n_optimizer + n_hf_model) + extra_files      [I]

(Qwen2.5-7B: 7.62e9 · 4 B · 3 = 91 GB.) How many of them exist at once
(verl/utils/checkpoint/checkpoint_manager.py, `ensure_checkpoint_capacity`, `register_checkpoint`):

    saves S:  steps s in 1..T with s % trainer.save_freq == 0, plus the last step T when it is not one
              of them (none with save_freq <= 0); T = trainer.total_training_steps, else
              trainer.total_epochs · ⌊rows / data.train_batch_size⌋ (verl's steps_per_epoch)
    kept K = trainer.max_actor_ckpt_to_keep:
              null or <= 0   every save stays                     n = S
              1              the old one stays until the new one is written   n = min(S, 2)
              >= 2           old ones are deleted down to K-1 before a save   n = min(S, K)
    required = n · bytes_per_checkpoint

Checkpoints an earlier start left in the folder are never deleted by a resumed run (verl tracks only
the paths it saved itself); they already take space, which the free space already shows.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

# Bytes per element of verl's `fsdp_config.model_dtype` names.
DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
# Files of a model folder that are weights, not the config/tokenizer files a checkpoint copies.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")


def count_parameters(model_dir: str) -> int | None:
    """P: the number of elements of every tensor in the folder's *.safetensors files, read from their
    headers (8-byte little-endian length, then JSON {name: {"dtype", "shape", "data_offsets"}}), or None
    without safetensors files."""
    files = sorted(name for name in os.listdir(model_dir) if name.endswith(".safetensors"))
    if not files:
        return None
    total = 0
    for name in files:
        with open(os.path.join(model_dir, name), "rb") as file:
            (length,) = struct.unpack("<Q", file.read(8))
            header = json.loads(file.read(length))
        total += sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
    return total


def extra_file_bytes(model_dir: str) -> int:
    """Bytes of the folder's top-level non-weight files (config, tokenizer, generation config)."""
    paths = (os.path.join(model_dir, name) for name in os.listdir(model_dir))
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p) and not p.endswith(WEIGHT_SUFFIXES))


def checkpoint_bytes(parameters: int, model_dtype: str, save_contents: Sequence[str], extra_bytes: int) -> int:
    """bytes_per_checkpoint (module docstring); raises ValueError for a dtype verl does not name."""
    if model_dtype not in DTYPE_BYTES:
        raise ValueError(f"actor_rollout_ref.actor.fsdp_config.model_dtype={model_dtype!r} is not one of "
                         f"{sorted(DTYPE_BYTES)}")
    copies = ("model" in save_contents) + 2 * ("optimizer" in save_contents) + ("hf_model" in save_contents)
    return parameters * DTYPE_BYTES[model_dtype] * copies + extra_bytes


def number_of_saves(total_steps: int, save_freq: int) -> int:
    """S (module docstring)."""
    if save_freq <= 0 or total_steps <= 0:
        return 0
    return total_steps // save_freq + (total_steps % save_freq != 0)


def checkpoints_on_disk(saves: int, max_to_keep: int | None) -> int:
    """n (module docstring)."""
    if not max_to_keep or max_to_keep <= 0:
        return saves
    return min(saves, max(max_to_keep, 2))


@dataclass(frozen=True)
class CheckpointPlan:
    """What the run's config says about checkpoints, without the model or the data.

    total_training_steps: `trainer.total_training_steps` (None: from epochs and the data).
    """

    save_freq: int
    total_training_steps: int | None
    total_epochs: int
    train_batch_size: int
    max_to_keep: int | None
    model_dtype: str
    save_contents: tuple[str, ...]

    def total_steps(self, train_rows: int | None) -> int | None:
        """T; None when it depends on the data and the number of rows is unknown."""
        if self.total_training_steps is not None:
            return self.total_training_steps
        if train_rows is None:
            return None
        return self.total_epochs * (train_rows // self.train_batch_size)

    def required_bytes(self, parameters: int, extra_bytes: int, train_rows: int | None) -> tuple[int, int] | None:
        """(n, n · bytes_per_checkpoint), or None when T is unknown and every save is kept."""
        steps = self.total_steps(train_rows)
        if steps is None:
            if not self.max_to_keep or self.max_to_keep <= 0:
                return None
            kept = max(self.max_to_keep, 2)  # at most this many, however long the run
        else:
            kept = checkpoints_on_disk(number_of_saves(steps, self.save_freq), self.max_to_keep)
        return kept, kept * checkpoint_bytes(parameters, self.model_dtype, self.save_contents, extra_bytes)
