"""`make install-gpu`: one set of GPU pins (pyproject's `gpu` extra, constraints-gpu.txt, docker/Dockerfile),
the install order that works, and pip's own resolve of the pinned stack against the package registry.

No GPU here: these tests check what a CPU machine can. The resolve uses pip's dry run with
`--use-feature=fast-deps` (each wheel's METADATA read by HTTP range requests): measured on the CI
machine, 37-77 s and ~110 MB received, where a plain dry run downloads every wheel (3.7 GB written:
torch, vllm, the CUDA libraries; 46 s on its fast link) because the registry it reaches serves no
PEP 658 metadata files. The flash-attn step downloads its 8.4 MB sdist (9-43 s).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CONSTRAINTS = REPO / "constraints-gpu.txt"


def exact_pins(lines: list[str]) -> dict[str, str]:
    """{canonical name: version} of `name==version` requirements (comments and blanks skipped)."""
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (spec,) = requirement.specifier
        assert spec.operator == "==", f"not an exact pin: {line}"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def gpu_extra() -> list[str]:
    return PYPROJECT["project"]["optional-dependencies"]["gpu"]


def constraint_pins() -> dict[str, str]:
    return exact_pins(CONSTRAINTS.read_text().splitlines())


def test_gpu_extra_and_constraints_pin_the_same_versions():
    verl = next(r for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "verl")
    assert exact_pins([*gpu_extra(), verl]) == constraint_pins()


def test_pins_are_verls_own_for_the_gpu_stack():
    """verl 0.9.1's `vllm`, `fsdp` and flash-attn extras pin these; ours must be the same versions."""
    ours = constraint_pins()
    verl_pins = {}
    for line in requires("verl"):
        requirement = Requirement(line)
        extra = str(requirement.marker or "")
        if any(f'extra == "{name}"' in extra for name in ("vllm", "fsdp", "flash-attn-cu130torch211")):
            exact = [s.version for s in requirement.specifier if s.operator == "=="]
            if exact:
                verl_pins[canonicalize_name(requirement.name)] = exact[0]
    shared = {"torch", "torchvision", "torchaudio", "vllm", "transformers", "flash-attn"}
    assert shared <= set(verl_pins), sorted(shared - set(verl_pins))
    assert {name: ours[name] for name in shared} == {name: verl_pins[name] for name in shared}
    # Unpinned by verl: ours must lie in the ranges it declares (TransferQueue in verl-core, ray in the base).
    declared = {canonicalize_name(Requirement(line).name): Requirement(line) for line in requires("verl")}
    for name in ("transferqueue", "ray"):
        assert declared[name].specifier.contains(ours[name]), (name, ours[name], str(declared[name]))


def test_ray_pin_is_above_the_floor_the_launch_scripts_check():
    floor = next(Requirement(r) for r in PYPROJECT["project"]["dependencies"] if Requirement(r).name == "ray")
    assert str(floor.specifier) == ">=2.52.0"
    assert floor.specifier.contains(constraint_pins()["ray"])
    lib = (REPO / "launch" / "lib.sh").read_text()
    assert re.search(r"^MIN_RAY_VERSION=2\.52\.0$", lib, flags=re.M)


def make_dry_run(target: str) -> list[str]:
    """The commands `make -n <target>` would run, one per line."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    result = subprocess.run(["make", "--no-print-directory", "-n", target], cwd=REPO, env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout.splitlines()


def test_install_gpu_installs_in_the_order_that_works():
    commands = make_dry_run("install-gpu")
    installs = [c for c in commands if " -m pip " in c or "/pip install" in c]
    pinned = [c for c in installs if "--upgrade pip" not in c]
    assert all("--constraint constraints-gpu.txt" in c for c in pinned), pinned
    steps = [c.split("--constraint constraints-gpu.txt", 1)[1].split() for c in pinned]
    assert steps[0] == ["torch", "torchvision", "torchaudio"]
    assert steps[1][0] == "vllm" and {"packaging", "psutil", "ninja", "wheel", "setuptools"} <= set(steps[1])
    assert steps[2] == ["--no-build-isolation", "flash-attn"]
    assert steps[3] == ["-e", "'.[gpu,test]'"]
    assert len(steps) == 4
    assert "import torch, vllm, flash_attn, verl, lambda_grpo" in commands[-1]


def test_dockerfile_installs_with_the_same_constraints_file():
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert re.search(r"^COPY constraints-gpu\.txt ", dockerfile, flags=re.M)
    runs = re.findall(r"^RUN (.*?)(?<!\\)$", dockerfile, flags=re.M | re.S)
    pip_installs = [r for r in runs if "pip install" in r]
    assert pip_installs and all("--constraint" in r and "constraints-gpu.txt" in r for r in pip_installs), pip_installs


def test_readme_gpu_install_is_the_make_target():
    readme = (REPO / "README.md").read_text()
    assert "make install-gpu" in readme
    assert "pip install -e '.[gpu]'" not in readme


# ----------------------------------------------------------------------------------------------
# pip's resolve against the package registry (network).


def pip(*args: str, timeout: float, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def registry():
    """Skip, saying why, where pip cannot reach its package index (as configured on this machine)."""
    probe = pip("index", "versions", "verl", "--disable-pip-version-check", timeout=120)
    if probe.returncode != 0 or "0.9.1" not in probe.stdout:
        pytest.skip(f"the package registry is unreachable from here, so the GPU stack's resolve cannot be "
                    f"checked: `pip index versions verl` said: {(probe.stderr or probe.stdout).strip()[-500:]}")


def test_pinned_gpu_stack_resolves_with_pip(registry, tmp_path):
    """This package + every pin of the `gpu` extra, resolved by pip for this interpreter and platform.

    flash-attn is left out here: its sdist runs torch code to produce its metadata, which is why
    `make install-gpu` installs it after torch, without build isolation (next test).
    """
    report = tmp_path / "report.json"
    wanted = [r for r in gpu_extra() if canonicalize_name(Requirement(r).name) != "flash-attn"]
    result = pip("install", "--dry-run", "--ignore-installed", "--use-feature=fast-deps", "--no-cache-dir",
                 "--report", str(report), "--constraint", str(CONSTRAINTS), "-e", ".", *wanted, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    resolved = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    expected = {name: version for name, version in constraint_pins().items() if name != "flash-attn"}
    assert {name: resolved.get(name) for name in expected} == expected
    assert resolved["lambda-grpo"] == "0.1.0"


def test_flash_attn_prepares_without_build_isolation_once_torch_is_installed(registry, tmp_path):
    """The third step of `make install-gpu`, up to the CUDA compile (skipped: no CUDA toolkit here)."""
    report = tmp_path / "report.json"
    env = dict(os.environ, FLASH_ATTENTION_SKIP_CUDA_BUILD="TRUE")
    result = pip("install", "--dry-run", "--ignore-installed", "--no-deps", "--no-cache-dir", "--no-build-isolation",
                 "--report", str(report), "--constraint", str(CONSTRAINTS), "flash-attn", timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (item,) = json.loads(report.read_text())["install"]
    assert (canonicalize_name(item["metadata"]["name"]), item["metadata"]["version"]) == ("flash-attn", "2.8.3")
