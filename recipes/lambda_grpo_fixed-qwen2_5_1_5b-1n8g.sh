#!/usr/bin/env bash
# Fixed-λ ablation · Qwen2.5-1.5B base · 1 node × 8 GPUs (80 GB)
# λ-GRPO's weights with λ frozen at LAMBDA (default 1.0): does learning λ matter, or only the weighting?
# LAMBDA=0 reproduces DAPO exactly. Not in the paper (its reviewers asked for it).
# Usage: LAMBDA=-1 recipes/lambda_grpo_fixed-qwen2_5_1_5b-1n8g.sh [overrides...]
# Install on the machines that train: make install-gpu (README "Quick start"), or the Docker image.
source "$(dirname "$0")/lib.sh"
lambda="${LAMBDA:-1.0}"
run_recipe model_size=qwen2_5_1_5b algo=lambda_grpo lambda_grpo.lambda_trainable=false \
    lambda_grpo.lambda_init="$lambda" trainer.experiment_name="lambda_grpo_fixed${lambda}-qwen2_5_1_5b" "$@"
