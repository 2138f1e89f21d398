#!/usr/bin/env bash
# λ-GRPO (learnable λ) · Qwen2.5-7B base · 1 node × 8 GPUs (80 GB) · responses up to 16k tokens, Ulysses SP 4
# Long reasoning traces: each sequence (1k prompt + 16k response) is split over a sequence-parallel group of
# 4 GPUs (8 GPUs = 2 data-parallel groups of 4), so a GPU holds 16,384 tokens of a micro-batch, as in the 2k
# recipe, while a micro-batch packs up to 4 × 16,384 tokens (verl: token budget × SP size); the reference
# model follows the actor's SP size. λ needs nothing more under SP (README "Trainer modes, parallelism, LoRA").
# 256 prompts × 8 responses per step keep a step's rollout time in reach.
# Expected result and cost: not measured (no 8-GPU run here). Per GPU the actor holds the tokens of the 2k
# recipe's estimate plus Ulysses' all-to-all buffers (7 of the 28 heads over the whole sequence in attention);
# vLLM's KV cache (1.41M tokens per engine) holds ~80 sequences of 17k tokens at once.
# Usage: recipes/lambda_grpo-qwen2_5_7b-1n8g-ulysses4-resp16k.sh [overrides...]   (LAUNCHER=cluster: ray job submit)
# Install on the machines that train: make install-gpu (flash-attn, which Ulysses needs), or the Docker image.
source "$(dirname "$0")/lib.sh"
run_recipe model_size=qwen2_5_7b algo=lambda_grpo \
    actor_rollout_ref.actor.ulysses_sequence_parallel_size=4 \
    data.max_response_length=16384 \
    data.train_batch_size=256 \
    actor_rollout_ref.actor.ppo_mini_batch_size=64 \
    "$@"
