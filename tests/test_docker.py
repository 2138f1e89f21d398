"""docker/: the base image pinned by digest, a non-root image, the build-time version check, the build
context allow-list, and the linters.

No Docker engine runs here: these tests check the files, not a built image (docker/README.md says
what was and was not verified). The build context is computed with the Docker SDK for Python's own
.dockerignore matcher (`docker.utils.build.exclude_paths`), the one `docker-py` builds with.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from docker.utils.build import exclude_paths
from packaging.requirements import Requirement

import lambda_grpo

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def load_check_versions():
    spec = importlib.util.spec_from_file_location("check_versions", REPO / "docker" / "check_versions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_versions = load_check_versions()


# ----------------------------------------------------------------------------------------------
# The Dockerfile.


def test_base_image_is_pinned_by_digest_and_names_its_tag():
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^ARG BASE_IMAGE=(\S+)$", text, flags=re.M)
    assert re.fullmatch(r"verlai/verl@sha256:[0-9a-f]{64}", base), base
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", text, flags=re.M)
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    assert "verlai/verl:vllm024.dev2" in comments  # the tag the digest was published under
    assert 'org.opencontainers.image.base.name="verlai/verl:vllm024.dev2"' in text


def test_image_runs_as_an_unprivileged_numeric_user():
    text = DOCKERFILE.read_text()
    users = re.findall(r"^USER (\S+)$", text, flags=re.M)
    assert users and users[-1].isdigit() and users[-1] != "0", users
    assert f"useradd --create-home --uid {users[-1]} " in text


def test_build_checks_installed_versions_after_the_install():
    runs = re.findall(r"^RUN (.*?)(?<!\\)$", DOCKERFILE.read_text(), flags=re.M | re.S)
    install = next(r for r in runs if '--editable ".[gpu,test]"' in r)
    assert install.index("pip install") < install.index("python docker/check_versions.py")


def test_label_names_the_verl_the_package_pins():
    assert f'lambda-GRPO plugin for verl {lambda_grpo.VERL_VERSION}"' in DOCKERFILE.read_text()


def test_dockerfile_passes_hadolint():
    result = subprocess.run(["hadolint", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_smoke_script_passes_shellcheck():
    result = subprocess.run(["shellcheck", str(REPO / "docker" / "smoke.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------------------------
# docker/check_versions.py: what the build checks.


def pins() -> list[Requirement]:
    return check_versions.pinned_requirements((REPO / "pyproject.toml").read_text(),
                                              (REPO / "constraints-gpu.txt").read_text())


def pinned_stack(**changes: str | None):
    """An `installed` function: each exactly pinned package at its pin (torch as the cu130 build), every
    other one as installed here, except `changes`."""
    exact = {r.name.lower(): next(iter(r.specifier)).version for r in pins()
             if len(r.specifier) == 1 and next(iter(r.specifier)).operator == "=="}
    exact["torch"] = "2.11.0+cu130"
    exact.update({name.lower(): version for name, version in changes.items()})
    return lambda name: exact[name.lower()] if name.lower() in exact else check_versions.installed_version(name)


def test_version_check_covers_ray_verl_and_torch():
    names = {r.name.lower() for r in pins()}
    assert {"ray", "verl", "torch", "vllm", "flash-attn", "transformers", "transferqueue"} <= names


def test_version_check_passes_the_pinned_stack_with_its_cuda_label():
    report, problems = check_versions.mismatches(pins(), pinned_stack())
    assert problems == [] and "torch 2.11.0+cu130 satisfies torch==2.11.0" in report


@pytest.mark.parametrize(("changes", "problem"), [
    ({"ray": "2.51.0"}, "ray 2.51.0 does not satisfy ray[default]>=2.52.0"),
    ({"verl": "0.9.0"}, "verl 0.9.0 does not satisfy verl==0.9.1"),
    ({"torch": "2.10.0+cu128"}, "torch 2.10.0+cu128 does not satisfy torch==2.11.0"),
    ({"flash-attn": None}, "flash-attn is not installed (wanted flash-attn==2.8.3)"),
])
def test_version_check_names_each_drift(changes, problem):
    _, problems = check_versions.mismatches(pins(), pinned_stack(**changes))
    assert problem in problems


def test_version_check_script_fails_the_build_on_a_drifted_pin(tmp_path):
    """Run as the build runs it, against a constraints file no install can meet (torch 0.0.1): exit 1,
    naming the package, whatever this machine holds (the CPU install here, the CUDA stack in the image)."""
    drifted = tmp_path / "constraints.txt"
    drifted.write_text((REPO / "constraints-gpu.txt").read_text().replace("torch==2.11.0", "torch==0.0.1"))
    result = subprocess.run([sys.executable, "docker/check_versions.py", "--constraints", str(drifted)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert re.search(r"torch \S+ does not satisfy torch==0\.0\.1", result.stderr), result.stderr


# ----------------------------------------------------------------------------------------------
# The build context: an allow-list.


def context_files(root: Path) -> set[str]:
    """Regular files `docker build -f docker/Dockerfile <root>` sends, by the Docker SDK's matcher."""
    lines = (root / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return {p for p in exclude_paths(str(root), patterns, dockerfile="docker/Dockerfile") if (root / p).is_file()}


PROJECT_FILES = ["pyproject.toml", "README.md", "Makefile", "constraints-gpu.txt", "lambda_grpo/loss.py",
                 "lambda_grpo/reward/fast_path.py", "configs/lambda_grpo.yaml", "configs/algo/grpo.yaml",
                 "configs/__init__.py", "launch/submit", "launch/lib.sh", "launch/runtime_env.yaml",
                 "docker/Dockerfile", "docker/smoke.sh", "tests/test_loss.py", "tests/reward_cases.jsonl",
                 "recipes/lib.sh", "benchmarks/loss_overhead.py", ".dockerignore"]
# What `launch/submit` uploaded on a real head before the allow-list (issue 14), and more of the same.
NOT_PROJECT_FILES = [".envrc", ".env", ".ssh/id_ed25519", "id_rsa", ".git/config", ".venv/bin/python",
                     "gcp-service-account.json", ".kaggle/kaggle.json", "kaggle.json", ".pypirc", ".npmrc",
                     ".docker/config.json", ".config/gh/hosts.yml", "keystore.p12", "cert.pfx",
                     "infra/terraform.tfstate", "model.pth", "last.ckpt", "weights/pytorch_model.bin",
                     "checkpoints/global_step_1/model.pt", "data/train.parquet", "outputs/run/main.log",
                     "lambda_grpo/.env", "lambda_grpo/__pycache__/loss.cpython-311.pyc", "configs/secrets.json",
                     "configs/.netrc", "launch/id_rsa", "launch/.env", "docker/creds.json", "tests/hf_token",
                     "tests/big.safetensors", "recipes/.env", "benchmarks/results.parquet", "wandb/run/files.json"]


def test_context_is_exactly_the_project_files(tmp_path):
    for name in PROJECT_FILES + NOT_PROJECT_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / ".dockerignore").write_text(DOCKERIGNORE.read_text())
    assert context_files(tmp_path) == set(PROJECT_FILES)


def test_context_holds_every_tracked_file_of_the_image():
    """A project file added without its .dockerignore line would be missing from the image."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout (inside the image): no list of tracked files to compare with")
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.split())
    outside_image = {".gitignore", ".ci/run"}
    sent = context_files(REPO)
    assert tracked - outside_image <= sent, sorted(tracked - outside_image - sent)
    assert not [name for name in sent if name.startswith((".git/", ".venv/")) or "__pycache__" in name]


def test_no_dockerfile_specific_ignore_file_overrides_the_allow_list():
    """BuildKit reads docker/Dockerfile.dockerignore, when it exists, instead of .dockerignore."""
    assert not (REPO / "docker" / "Dockerfile.dockerignore").exists()
