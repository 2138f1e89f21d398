#!/usr/bin/env bash
# Dr. GRPO aggregation (f = μ/L_max) · Qwen2.5-1.5B base · 1 node × 8 GPUs (80 GB)
# Not run in the paper (it calls Dr. GRPO DAPO "up to a constant"); here to test that claim. Only the
# weights differ from the other recipes; Dr. GRPO's full recipe also needs
# algorithm.norm_adv_by_std_in_grpo=false actor_rollout_ref.actor.use_kl_loss=false.
# Usage: recipes/dr_grpo-qwen2_5_1_5b-1n8g.sh [overrides...]   LAUNCHER=cluster recipes/... [overrides...]
# Install on the machines that train: make install-gpu (README "Quick start"), or the Docker image.
source "$(dirname "$0")/lib.sh"
run_recipe model_size=qwen2_5_1_5b algo=dr_grpo "$@"
