#!/usr/bin/env bash
# Smoke check of the lambda_grpo image: the test suite (without the minutes-long e2e runs of verl's
# trainer) and the preflight of the tiny CPU configuration on a local Ray (its model and data are
# generated into a scratch directory on first use).
#   docker run --rm --shm-size=16g lambda_grpo:0.1.0 docker/smoke.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python -m pytest -m "not e2e" -q
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export LAMBDA_GRPO_CACHE="$scratch/tiny"
python -m lambda_grpo.preflight --node-wait-s 0 model_size=tiny_cpu "trainer.default_local_dir=$scratch/checkpoints"
