#!/usr/bin/env bash
# λ-GRPO (learnable λ) · Qwen2.5-1.5B base · 1 node × 8 GPUs (80 GB)
# Paper (arXiv 2510.06870, abstract): λ-GRPO averages +1.9 points over GRPO on 8 math benchmarks at this size.
# Usage: recipes/lambda_grpo-qwen2_5_1_5b-1n8g.sh [overrides...]        LAUNCHER=cluster recipes/lambda_grpo-qwen2_5_1_5b-1n8g.sh [overrides...]
# Install on the machines that train: make install-gpu (README "Quick start"), or the Docker image.
source "$(dirname "$0")/lib.sh"
run_recipe model_size=qwen2_5_1_5b algo=lambda_grpo "$@"
