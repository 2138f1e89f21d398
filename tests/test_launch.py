"""launch/: the cluster scripts, the runtime environment file, and `launch/submit` against a real Ray.

The `ray` tests share one Ray head for the module, started through `launch/start_head --block` on
loopback with its own ports, temp dir and auth token, and stopped (its process group) at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SUBMIT = LAUNCH / "submit"
SCRIPTS = [LAUNCH / "start_head", LAUNCH / "start_worker", SUBMIT, LAUNCH / "slurm_example.sbatch"]
RUNTIME_ENV = yaml.safe_load((LAUNCH / "runtime_env.yaml").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_block(size: int) -> int:
    """First port of `size` consecutive ports that are free on loopback now (Ray needs disjoint ones)."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 60000 - size)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + size):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {size} consecutive free ports")


def base_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any Ray address or token, venv first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def run(cmd: list[str | Path], env: dict[str, str], timeout: float = 240, cwd: Path | None = None
        ) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


# ----------------------------------------------------------------------------------------------
# Without a cluster.


def test_scripts_pass_shellcheck():
    result = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS), str(LAUNCH / "lib.sh")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", [LAUNCH / "start_head", LAUNCH / "start_worker", SUBMIT], ids=lambda p: p.name)
def test_help_documents_every_option(script):
    parsed = set(re.findall(r"^\s+(--[a-z-]+)\) \S", script.read_text(), flags=re.M)) - {"--"}
    result = run([script, "--help"], base_env())
    assert result.returncode == 0
    assert parsed and all(option in result.stdout for option in parsed), parsed


def test_submit_without_ray_fails_fast_with_how_to(tmp_path):
    start = time.monotonic()
    result = run([SUBMIT, "--address", f"http://127.0.0.1:{free_port()}", "model_size=tiny_cpu"],
                 base_env(RAY_AUTH_TOKEN_PATH=str(tmp_path / "none")), timeout=30)
    assert result.returncode == 2
    assert time.monotonic() - start < 10
    assert "no Ray job API reachable" in result.stderr
    assert "launch/start_head" in result.stderr and "ssh -N -L 8265" in result.stderr


def test_submit_rejects_unknown_option():
    result = run([SUBMIT, "--nope", "a=b"], base_env(), timeout=30)
    assert result.returncode == 1 and "unknown option '--nope'" in result.stderr


def test_worker_refuses_to_start_without_token(tmp_path):
    result = run([LAUNCH / "start_worker", "--head", "127.0.0.1:1"],
                 base_env(RAY_AUTH_TOKEN_PATH=str(tmp_path / "missing")), timeout=30)
    assert result.returncode == 1
    assert "no Ray auth token found" in result.stderr and "ray get-auth-token" in result.stderr


def test_head_refuses_disabled_auth(tmp_path):
    result = run([LAUNCH / "start_head"], base_env(RAY_AUTH_MODE="disabled"), timeout=30)
    assert result.returncode == 1 and "keep Ray's token authentication on" in result.stderr


def test_runtime_env_sets_the_plugin_and_nccl_variables():
    env_vars = RUNTIME_ENV["env_vars"]
    assert env_vars["VERL_USE_EXTERNAL_MODULES"] == "lambda_grpo.plugin"
    assert env_vars["TORCH_NCCL_AVOID_RECORD_STREAMS"] == "1"
    # verl 0.9.1 sets it only for Megatron on Hopper/Ampere; FSDP2 must not run with it.
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in env_vars
    assert all(isinstance(v, str) for v in env_vars.values())


def package_names(root: Path, tmp_path: Path) -> set[str]:
    """File names in the zip Ray builds for `root` as a working dir with our excludes."""
    from ray._private.runtime_env.packaging import create_package

    target = tmp_path / f"{root.name}.zip"
    create_package(str(root), target, include_gitignore=True, excludes=RUNTIME_ENV["excludes"])
    with zipfile.ZipFile(target) as archive:
        return {name for name in archive.namelist() if not name.endswith("/")}


def test_upload_excludes_git_checkpoints_data_and_secrets(tmp_path):
    tree = tmp_path / "repo"
    kept = ["lambda_grpo/loss.py", "configs/algo/grpo.yaml", "launch/submit", "README.md"]
    dropped = [".git/config", ".git/objects/ab/cd", "checkpoints/run/global_step_1/model.pt",
               "data/gsm8k/train.parquet", "outputs/2026-01-01/main.log", ".venv/bin/python",
               ".env", "configs/.env.local", "deploy/prod.env", "hf_token", "launch/.wandb_token.txt",
               "secrets/aws_secret.json", "lambda_grpo/__pycache__/loss.cpython-311.pyc",
               "weights/model.safetensors"]
    for name in kept + dropped:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text("x")
    names = package_names(tree, tmp_path)
    assert names == set(kept)


def test_upload_of_this_repository_holds_all_tracked_code(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "lambda_grpo", "configs", "launch", "pyproject.toml"],
                             cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    names = package_names(REPO, tmp_path)
    assert tracked and set(tracked) <= names, sorted(set(tracked) - names)
    assert not [n for n in names if n.startswith((".git/", ".venv/", "checkpoints/", "data/", "outputs/"))]


# ----------------------------------------------------------------------------------------------
# Against a real Ray head.


@dataclass
class Head:
    address: str
    env: dict[str, str]
    token_path: Path
    scratch: Path


def _wait_for_job_api(address: str, token: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(f"{address}/api/version", headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"launch/start_head exited:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(request, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise TimeoutError(f"Ray job API not up after {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def head():
    # Short path: Ray's unix sockets live under the temp dir and must stay under 107 characters.
    scratch = Path(tempfile.mkdtemp(prefix="lg-ray-", dir="/tmp"))
    token_path = scratch / "auth_token"
    # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Ray keep every server of this single-node test
    # cluster on 127.0.0.1 (by default it binds the machine's address even for --node-ip 127.0.0.1).
    env = base_env(RAY_AUTH_TOKEN_PATH=str(token_path), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    names = ("gcs", "dashboard", "client", "node_manager", "object_manager", "agent_http", "agent_grpc",
             "runtime_env_agent", "metrics")
    base = free_port_block(len(names) + 100)
    ports = {name: base + i for i, name in enumerate(names)}
    worker_base = base + len(names)
    log = scratch / "head.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(LAUNCH / "start_head"), "--node-ip", "127.0.0.1", "--port", str(ports["gcs"]),
             "--dashboard-port", str(ports["dashboard"]), "--temp-dir", str(scratch / "ray"), "--block", "--",
             "--ray-client-server-port", str(ports["client"]), "--node-manager-port", str(ports["node_manager"]),
             "--object-manager-port", str(ports["object_manager"]),
             "--dashboard-agent-listen-port", str(ports["agent_http"]),
             "--dashboard-agent-grpc-port", str(ports["agent_grpc"]),
             "--runtime-env-agent-port", str(ports["runtime_env_agent"]),
             "--metrics-export-port", str(ports["metrics"]),
             "--min-worker-port", str(worker_base), "--max-worker-port", str(worker_base + 99)],
            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{ports['dashboard']}"
    try:
        deadline = time.monotonic() + 30
        while not token_path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        _wait_for_job_api(address, token_path.read_text(), proc, log)
        yield Head(address, env, token_path, scratch)
    finally:
        stop_process_group(proc)
        shutil.rmtree(scratch, ignore_errors=True)


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM `ray start --block` (it stops its node's processes), then SIGKILL its whole group."""
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.ray
def test_head_generated_a_private_token(head):
    assert re.fullmatch(r"[0-9a-f]{64}", head.token_path.read_text())
    assert stat.S_IMODE(head.token_path.stat().st_mode) == 0o600


@pytest.mark.ray
def test_job_api_refuses_missing_and_wrong_tokens(head):
    body = json.dumps({"entrypoint": "echo pwned"}).encode()
    for headers, status in (({}, 401), ({"Authorization": f"Bearer {secrets.token_hex(32)}"}, 403)):
        request = urllib.request.Request(f"{head.address}/api/jobs/", data=body, method="POST", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == status


@pytest.mark.ray
def test_submission_without_token_is_refused(head, tmp_path):
    no_token = dict(head.env, RAY_AUTH_TOKEN_PATH=str(tmp_path / "missing"))
    ours = run([SUBMIT, "--address", head.address, "model_size=tiny_cpu"], no_token, timeout=60)
    assert ours.returncode == 3 and "requires a Ray auth token" in ours.stderr
    # Ray's own client, bypassing our check, is refused by the cluster itself.
    theirs = run(["ray", "job", "submit", "--address", head.address, "--", "echo", "pwned"],
                 dict(no_token, HOME=str(tmp_path)), timeout=120)
    assert theirs.returncode != 0 and "Authentication required" in theirs.stdout + theirs.stderr


def preflight_overrides(tmp_path: Path, train_exists: bool = True) -> list[str]:
    """A valid run on this CPU-only cluster, with values that need quoting on their way through."""
    data = tmp_path / "my data"
    data.mkdir()
    if train_exists:
        (data / "train.parquet").write_bytes(b"")
    (data / "val.parquet").write_bytes(b"")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    return ["model_size=tiny_cpu",
            f"data.train_files=['{data / 'train.parquet'}']",
            f"data.val_files='{data / 'val.parquet'}'",
            f"actor_rollout_ref.model.path={tmp_path / 'model'}",
            f"trainer.default_local_dir={tmp_path / 'checkpoints'}",
            "trainer.experiment_name='preflight \"quoted\" $HOME; a & b'"]


def received_overrides(output: str) -> list[str]:
    line = next(line for line in output.splitlines() if line.startswith("overrides (as received): "))
    return json.loads(line.removeprefix("overrides (as received): "))


@pytest.mark.ray
def test_preflight_job_passes_with_runtime_env_and_overrides_intact(head, tmp_path):
    overrides = preflight_overrides(tmp_path)
    # From an unrelated directory: the upload is still the repository.
    submitted = run([SUBMIT, "--address", head.address, "--no-wait", "--preflight", *overrides], head.env, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = re.search(r"Submitting job (\S+) to", submitted.stdout).group(1)
    assert f"submit logs {job_id} --follow" in submitted.stdout
    logs = run([SUBMIT, "--address", head.address, "logs", job_id, "--follow"], head.env)
    status = run([SUBMIT, "--address", head.address, "status", job_id], head.env)
    assert "succeeded" in status.stdout.lower(), logs.stdout + logs.stderr
    assert "\nPREFLIGHT PASSED\n" in logs.stdout
    assert received_overrides(logs.stdout) == overrides
    for name, value in RUNTIME_ENV["env_vars"].items():
        assert f"{name}={value}" in logs.stdout
    # The plugin loaded in the worker from the uploaded copy of the repository.
    assert re.search(r"\[OK  \] node 127\.0\.0\.1 .*lambda_grpo plugin loaded: "
                     r".*working_dir_files/.*/lambda_grpo/plugin\.py", logs.stdout)


@pytest.mark.ray
def test_preflight_job_with_missing_data_fails_with_readable_report(head, tmp_path):
    overrides = preflight_overrides(tmp_path, train_exists=False)
    result = run([SUBMIT, "--address", head.address, "--preflight", *overrides], head.env)
    assert result.returncode == 1
    missing = tmp_path / "my data" / "train.parquet"
    assert "[FAIL] node 127.0.0.1" in result.stdout
    assert f"data.train_files: {missing} not found" in result.stdout
    assert "PREFLIGHT FAILED: 1 problem(s)" in result.stdout


@pytest.mark.ray
def test_stop_ends_a_job_waiting_for_nodes(head, tmp_path):
    overrides = [*preflight_overrides(tmp_path), "trainer.nnodes=2"]
    submitted = run([SUBMIT, "--address", head.address, "--no-wait", "--preflight", *overrides], head.env)
    job_id = re.search(r"Submitting job (\S+) to", submitted.stdout).group(1)
    stopped = run([SUBMIT, "--address", head.address, "stop", job_id], head.env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    status = run([SUBMIT, "--address", head.address, "status", job_id], head.env)
    assert "stopped" in status.stdout.lower()
