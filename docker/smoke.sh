#!/usr/bin/env bash
# Smoke check of the lambda_grpo image: the test suite (without the minutes-long e2e runs of verl's
# trainer), the preflight of the tiny CPU configuration on a local Ray and, when a GPU is visible, a
# 3-step training run of model_size=tiny_gpu (the tiny model and toy task on the GPU stack: vLLM, FSDP,
# flash-attn with remove-padding, dynamic batches; about 2 minutes), whose metrics must show 3 steps and
# step-1 responses that stop at the end of the chat turn. Tiny assets and outputs go to a scratch directory.
#   docker run --rm --gpus all --shm-size=16g lambda_grpo:0.1.0 docker/smoke.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python -m pytest -m "not e2e" -q
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
export LAMBDA_GRPO_CACHE="$scratch/tiny"
python -m lambda_grpo.preflight --node-wait-s 0 model_size=tiny_cpu "trainer.default_local_dir=$scratch/checkpoints"

if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "smoke: no GPU visible (docker run --gpus all?): skipped the model_size=tiny_gpu run"
  exit 0
fi
python -m lambda_grpo.main model_size=tiny_gpu "trainer.default_local_dir=$scratch/gpu"
# response_length/clip_ratio is the share of responses that hit data.max_response_length: about 0.12 for the
# tiny model when rollouts stop at its end-of-turn token, 1.0 when they stop only at EOS.
python - "$scratch/gpu/metrics" <<'EOF'
import json, pathlib, sys
rows = [json.loads(line) for path in sorted(pathlib.Path(sys.argv[1]).glob("*.jsonl"))
        for line in path.read_text().splitlines() if line.strip()]
steps = [row["step"] for row in rows]
clip = rows[0]["data"]["response_length/clip_ratio"] if rows else float("nan")
print(f"smoke: tiny_gpu steps {steps}, step-1 response_length/clip_ratio {clip:.2f} (expected about 0.12)")
sys.exit(0 if steps == [1, 2, 3] and clip < 0.5 else 1)
EOF
