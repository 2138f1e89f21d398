"""Shared test setup. Tests run on CPU; nothing here reaches a model or dataset hub."""

import os
import sys
from pathlib import Path

# Keep every test offline and quiet, whatever the caller's environment says.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")

# `make test` runs .venv/bin/python without activating the venv: put its console scripts (ray, hadolint,
# shellcheck, ...) on PATH for the subprocesses the tests start, as an activated venv would.
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
