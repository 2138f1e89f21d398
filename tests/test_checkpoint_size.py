"""lambda_grpo.checkpoint_size: parameter counts from safetensors headers, bytes per checkpoint, and how many
checkpoints verl keeps at once (checked against verl's own checkpoint manager)."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM
from verl.utils.checkpoint.checkpoint_manager import BaseCheckpointManager

from lambda_grpo.checkpoint_size import (CheckpointPlan, checkpoint_bytes, checkpoints_on_disk, count_parameters,
                                         extra_file_bytes, number_of_saves)

# Qwen2.5-7B's parameter count from its config.json (vocab 152064, hidden 3584, intermediate 18944, 28 layers,
# 28 query / 4 key-value heads with biases, untied embeddings): 7,615,616,512; its model card says 7.61B.
QWEN2_5_7B = 7_615_616_512


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen2 saved by transformers (safetensors, tied embeddings) and its parameter count."""
    folder = tmp_path_factory.mktemp("tiny")
    config = Qwen2Config(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    (folder / "tokenizer.json").write_text("{}" * 100)
    return folder, sum(p.numel() for p in model.parameters())


def test_parameter_count_is_read_from_the_safetensors_headers(tiny_model_dir):
    folder, parameters = tiny_model_dir
    assert count_parameters(str(folder)) == parameters


def test_parameter_count_sums_the_shards(tmp_path):
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(tmp_path / "model-00001-of-00002.safetensors"),
              metadata={"format": "pt"})
    save_file({"c": torch.zeros(2, 2, 2, dtype=torch.bfloat16)}, str(tmp_path / "model-00002-of-00002.safetensors"))
    assert count_parameters(str(tmp_path)) == 12 + 5 + 8


def test_no_safetensors_means_unknown(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    assert count_parameters(str(tmp_path)) is None


def test_extra_files_are_the_non_weight_files(tiny_model_dir):
    folder, _ = tiny_model_dir
    expected = sum(p.stat().st_size for p in folder.iterdir() if p.suffix != ".safetensors")
    assert extra_file_bytes(str(folder)) == expected > 200


def test_a_7b_checkpoint_is_fp32_parameters_and_two_adam_moments():
    assert checkpoint_bytes(QWEN2_5_7B, "fp32", ("model", "optimizer", "extra"), 0) / 1e9 == pytest.approx(91.39, abs=0.01)
    assert checkpoint_bytes(QWEN2_5_7B, "fp32", ("model", "optimizer", "hf_model"), 10**7) == 16 * QWEN2_5_7B + 10**7
    assert checkpoint_bytes(100, "bf16", ("model",), 0) == 200


def test_unknown_dtype_names_the_key():
    with pytest.raises(ValueError, match=r"actor_rollout_ref\.actor\.fsdp_config\.model_dtype='int4'"):
        checkpoint_bytes(1, "int4", ("model",), 0)


@pytest.mark.parametrize(("steps", "save_freq", "saves"), [(100, 10, 10), (105, 10, 11), (3, 10, 1), (100, -1, 0),
                                                           (100, 0, 0), (0, 10, 0)])
def test_number_of_saves_counts_every_save_freq_steps_and_the_last(steps, save_freq, saves):
    """verl saves when `save_freq > 0 and (is_last_step or global_steps % save_freq == 0)`."""
    assert number_of_saves(steps, save_freq) == saves
    assert saves == sum(1 for s in range(1, steps + 1) if save_freq > 0 and (s == steps or s % save_freq == 0))


@pytest.mark.parametrize("saves", [0, 1, 2, 5, 9])
@pytest.mark.parametrize("keep", [None, 0, 1, 2, 3, 7])
def test_checkpoints_on_disk_match_verls_checkpoint_manager(tmp_path, saves, keep):
    """Drive verl's own retention (ensure_checkpoint_capacity before a save, register_checkpoint after)
    over real folders and count the most that exist at once."""
    manager = object.__new__(BaseCheckpointManager)
    manager.previous_saved_paths = []
    most = 0
    for step in range(1, saves + 1):
        manager.ensure_checkpoint_capacity(keep)
        os.makedirs(tmp_path / f"global_step_{step}")
        most = max(most, len(os.listdir(tmp_path)))
        manager.register_checkpoint(str(tmp_path / f"global_step_{step}"), keep)
    assert checkpoints_on_disk(saves, keep) == most


def plan(**changes) -> CheckpointPlan:
    base = dict(save_freq=20, total_training_steps=None, total_epochs=2, train_batch_size=128, max_to_keep=None,
                model_dtype="fp32", save_contents=("model", "optimizer", "extra"))
    return CheckpointPlan(**{**base, **changes})


def test_total_steps_as_verl_counts_them():
    assert plan().total_steps(7500) == 2 * (7500 // 128)
    assert plan(total_training_steps=50).total_steps(None) == 50
    assert plan().total_steps(None) is None


def test_required_bytes_for_a_7b_run():
    per = checkpoint_bytes(QWEN2_5_7B, "fp32", ("model", "optimizer", "extra"), 0)
    # 2 epochs of MATH's 7,500 problems at 128 prompts a step: 116 steps, saved every 20: 6 checkpoints.
    assert plan().required_bytes(QWEN2_5_7B, 0, 7500) == (6, 6 * per)
    assert plan(max_to_keep=2).required_bytes(QWEN2_5_7B, 0, 7500) == (2, 2 * per)
    assert plan(max_to_keep=1).required_bytes(QWEN2_5_7B, 0, None) == (2, 2 * per)
    assert plan().required_bytes(QWEN2_5_7B, 0, None) is None
