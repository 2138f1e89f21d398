#!/usr/bin/env bash
# Smoke check of the lambda_grpo image: the test suite (without the minutes-long e2e runs of verl's
# trainer) and the preflight of the tiny CPU configuration on a local Ray.
#   docker run --rm --shm-size=16g lambda_grpo:0.1.0 docker/smoke.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python -m pytest -m "not e2e" -q
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export LAMBDA_GRPO_CACHE="$scratch/tiny"
python -m lambda_grpo.preflight --node-wait-s 0 model_size=tiny_cpu \
    "data.train_files=$(python -m lambda_grpo.tiny_assets --field train_file)" \
    "data.val_files=$(python -m lambda_grpo.tiny_assets --field val_file)" \
    "actor_rollout_ref.model.path=$(python -m lambda_grpo.tiny_assets --field model_dir)" \
    "trainer.default_local_dir=$scratch/checkpoints"
