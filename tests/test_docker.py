"""docker/: the image's pins agree with pyproject.toml and verl, and the Dockerfile lints clean.

No Docker engine runs here: these tests check the files, not a built image (docker/README.md says
what was and was not verified).
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import lambda_grpo

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# Package (as pyproject.toml names it) -> the Dockerfile ARG that pins it.
PIN_ARGS = {
    "verl": "VERL_VERSION",
    "torch": "TORCH_VERSION",
    "vllm": "VLLM_VERSION",
    "flash-attn": "FLASH_ATTN_VERSION",
    "transferqueue": "TRANSFER_QUEUE_VERSION",
}


def dockerfile_args(text: str) -> dict[str, str]:
    """`ARG NAME=value` lines of a Dockerfile (a name declared twice is an error)."""
    pairs = re.findall(r"^ARG\s+(\w+)=(\S+)\s*$", text, flags=re.M)
    names = [name for name, _ in pairs]
    assert len(names) == len(set(names)), f"ARG declared twice: {names}"
    return dict(pairs)


def pin_mismatches(dockerfile_text: str, pyproject: dict) -> list[str]:
    """Each way the Dockerfile's pins disagree with pyproject's `dependencies` and `gpu` extra."""
    args = dockerfile_args(dockerfile_text)
    declared = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    gpu = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["gpu"]]
    problems = [f"gpu extra has {r.name} but the Dockerfile pins no ARG for it"
                for r in gpu if r.name.lower() not in PIN_ARGS]
    for requirement in declared + gpu:
        arg = PIN_ARGS.get(requirement.name.lower())
        if arg is None:
            continue
        pinned = args.get(arg)
        exact = [s.version for s in requirement.specifier if s.operator == "=="]
        if pinned is None:
            problems.append(f"{arg} missing from the Dockerfile ({requirement})")
        elif (exact and pinned not in exact) or not requirement.specifier.contains(pinned):
            problems.append(f"{arg}={pinned} does not satisfy pyproject's {requirement}")
    return problems


def test_dockerfile_pins_match_pyproject():
    assert pin_mismatches(DOCKERFILE.read_text(), PYPROJECT) == []


def test_pin_check_catches_a_drifted_pin():
    drifted = DOCKERFILE.read_text().replace("ARG TORCH_VERSION=2.11.0", "ARG TORCH_VERSION=2.10.0")
    assert drifted != DOCKERFILE.read_text()
    assert pin_mismatches(drifted, PYPROJECT) == ["TORCH_VERSION=2.10.0 does not satisfy pyproject's torch==2.11.0"]


def test_dockerfile_pins_what_pyproject_and_the_package_name():
    args = dockerfile_args(DOCKERFILE.read_text())
    assert args["VERL_VERSION"] == lambda_grpo.VERL_VERSION == "0.9.1"
    assert (args["TORCH_VERSION"], args["VLLM_VERSION"], args["FLASH_ATTN_VERSION"]) == ("2.11.0", "0.24.0", "2.8.3")
    assert args["BASE_IMAGE"].startswith("verlai/verl:vllm024.")


def test_transformers_pin_is_in_the_range_verl_declares():
    transformers = next(Requirement(r) for r in requires("verl") if Requirement(r).name == "transformers"
                        and Requirement(r).marker is None)
    assert transformers.specifier.contains(dockerfile_args(DOCKERFILE.read_text())["TRANSFORMERS_VERSION"])


def test_dockerfile_passes_hadolint():
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_smoke_script_passes_shellcheck():
    result = subprocess.run(["shellcheck", str(REPO / "docker" / "smoke.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("pattern", [".git", ".venv", "checkpoints", "data", "**/.env", "**/*token*", "**/*secret*"])
def test_build_context_excludes_secrets_and_bulk(pattern):
    ignored = (REPO / "docker" / "Dockerfile.dockerignore").read_text().split("\n")
    assert pattern in ignored
