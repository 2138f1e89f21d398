"""launch/: the cluster scripts, the runtime environment file, and `launch/submit` against a real Ray.

The `ray` tests share one Ray head for the module, started through `launch/start_head --block` on
loopback with its own ports, temp dir and auth token, and stopped (its process group) at the end.
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import json
import os
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

from local_cluster import free_port_block, script_env

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SUBMIT = LAUNCH / "submit"
SCRIPTS = [LAUNCH / "start_head", LAUNCH / "start_worker", SUBMIT, LAUNCH / "slurm_example.sbatch"]
RUNTIME_ENV = yaml.safe_load((LAUNCH / "runtime_env.yaml").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any Ray address or token, venv first on PATH."""
    return script_env(extra)


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


# ----------------------------------------------------------------------------------------------
# What a submission uploads: an allow-list (launch/upload.py).


def load_launch_module(name: str):
    spec = importlib.util.spec_from_file_location(f"launch_{name}", LAUNCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


upload = load_launch_module("upload")
checks = load_launch_module("checks")

UPLOADED = ["lambda_grpo/loss.py", "lambda_grpo/reward/fast_path.py", "configs/__init__.py", "configs/lambda_grpo.yaml",
            "configs/algo/grpo.yaml"]
# Project files a job does not need, and what `launch/submit` uploaded on a real head before (issue 14).
NOT_UPLOADED = ["README.md", "pyproject.toml", "launch/submit", "tests/test_loss.py", "recipes/lib.sh",
                ".envrc", ".env", ".ssh/id_ed25519", "id_rsa", ".git/config", ".venv/bin/python", ".pypirc", ".npmrc",
                "gcp-service-account.json", ".kaggle/kaggle.json", ".docker/config.json", ".config/gh/hosts.yml",
                "keystore.p12", "cert.pfx", "infra/terraform.tfstate", "model.pth", "last.ckpt", "weights/model.bin",
                "checkpoints/run/global_step_1/model.pt", "data/gsm8k/train.parquet", "outputs/2026-01-01/main.log",
                "lambda_grpo/.env", "lambda_grpo/.hidden/x.py", "lambda_grpo/__pycache__/loss.cpython-311.pyc",
                "lambda_grpo/notes.txt", "lambda_grpo/weights.pt", "configs/secrets.json", "configs/.netrc",
                "configs/key.pem", "configs/algo/.env.yaml"]


def make_tree(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x")


def test_upload_is_the_allow_list_whatever_else_lies_in_the_tree(tmp_path):
    make_tree(tmp_path, UPLOADED + NOT_UPLOADED)
    secret = tmp_path / "outside" / "id_rsa"
    make_tree(tmp_path, ["outside/id_rsa"])
    (tmp_path / "lambda_grpo" / "linked.py").symlink_to(secret)
    (tmp_path / "configs" / "linked").symlink_to(secret.parent, target_is_directory=True)
    assert upload.upload_files(str(tmp_path)) == sorted(UPLOADED)


def ray_package_names(folder: Path, tmp_path: Path) -> set[str]:
    """File names in the zip Ray builds for `folder` as a job's working dir (Ray's own packaging code)."""
    from ray._private.runtime_env.packaging import create_package

    target = tmp_path / "package.zip"
    create_package(str(folder), target, include_gitignore=True)
    with zipfile.ZipFile(target) as archive:
        return {name for name in archive.namelist() if not name.endswith("/")}


def test_ray_packs_exactly_the_staged_files(tmp_path):
    make_tree(tmp_path / "repo", UPLOADED + NOT_UPLOADED)
    (tmp_path / "stage").mkdir()
    assert upload.main(["stage", str(tmp_path / "repo"), str(tmp_path / "stage")]) == 0
    assert ray_package_names(tmp_path / "stage", tmp_path) == set(UPLOADED)


def test_upload_of_this_repository_is_its_code_and_configs():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout (inside the image): no list of tracked files to compare with")
    uploaded = upload.upload_files(str(REPO))
    tracked = subprocess.run(["git", "ls-files", "lambda_grpo", "configs"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    assert tracked and set(tracked) <= set(uploaded), sorted(set(tracked) - set(uploaded))
    assert all(name.startswith(("lambda_grpo/", "configs/")) and name.endswith((".py", ".yaml")) for name in uploaded)


def test_list_upload_prints_exactly_the_list_without_ray(tmp_path):
    (tmp_path / "ray").write_text("#!/bin/sh\necho 'ray must not run' >&2\nexit 99\n")
    (tmp_path / "ray").chmod(0o755)
    result = run([SUBMIT, "--list-upload"], base_env(PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}"), timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == upload.upload_files(str(REPO))


# ----------------------------------------------------------------------------------------------
# Token and listener checks (launch/checks.py).


@pytest.mark.parametrize(("token", "weak"), [("a1b2c3d4", "8 characters"), ("ab" * 32, "2 distinct characters"),
                                              (secrets.token_hex(32), None), (secrets.token_hex(16) + "\n", None)])
def test_token_strength(token, weak):
    weakness = checks.token_weakness(token)
    assert (weakness is None) if weak is None else (weak in weakness)


def write_token(path: Path, token: str, mode: int) -> Path:
    path.write_text(token)
    path.chmod(mode)
    return path


def test_token_file_must_be_private(tmp_path, capsys):
    loose = write_token(tmp_path / "loose", secrets.token_hex(32), 0o644)
    assert checks.check_token_file(str(loose), strength=False) == 1
    assert f"mode 644" in capsys.readouterr().err
    private = write_token(tmp_path / "private", secrets.token_hex(32), 0o600)
    assert checks.check_token_file(str(private), strength=True) == 0


def test_weak_token_file_fails_only_the_strength_check(tmp_path, capsys):
    weak = write_token(tmp_path / "weak", "12345678", 0o600)
    assert checks.check_token_file(str(weak), strength=False) == 0
    assert checks.check_token_file(str(weak), strength=True) == 1
    assert "too weak: it has 8 characters" in capsys.readouterr().err


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_token_file_of_another_user_is_refused(tmp_path, capsys):
    foreign = write_token(tmp_path / "foreign", secrets.token_hex(32), 0o600)
    os.chown(foreign, 65534, 65534)
    assert checks.check_token_file(str(foreign), strength=False) == 1
    assert "belongs to uid 65534" in capsys.readouterr().err


# Lines of /proc/net/tcp and /proc/net/tcp6 captured on the CI machine (Linux 6.x, x86_64), with
# listeners on 127.0.0.1:18265 (root), [::1]:18266 (root), 0.0.0.0:18267 (root), 127.0.0.1:18268 (uid 65534).
PROC_NET_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   5: 00000000:475B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41041 1 00000000e568b910 100 0 0 10 0
   9: 0100007F:4759 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41039 1 00000000baa62411 100 0 0 10 0
   9: 0100007F:475C 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 42204 1 000000008d692f57 100 0 0 10 0
  12: 0100007F:475C 0100007F:9C4E 01 00000000:00000000 00:00000000 00000000  1000        0 42299 1 0000000000000000 20 4 30 10 -1
"""
PROC_NET_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:475A 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41040 1 00000000905a18bd 100 0 0 10 0
"""


def test_proc_net_addresses_decode():
    assert checks.parse_proc_address("0100007F:4759") == (ipaddress.ip_address("127.0.0.1"), 18265)
    assert checks.parse_proc_address("00000000000000000000000001000000:475A") == (ipaddress.ip_address("::1"), 18266)


@pytest.mark.parametrize(("port", "uids"), [(18265, {0}), (18266, {0}), (18267, {0}), (18268, {65534}), (18269, set())])
def test_loopback_listeners_from_captured_proc_net(port, uids):
    """Only listening sockets count (the established connection of uid 1000 on 18268 does not)."""
    assert checks.loopback_listeners(PROC_NET_TCP, port) | checks.loopback_listeners(PROC_NET_TCP6, port) == uids


def test_loopback_listener_of_this_process_is_found_live():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert checks.loopback_listeners(Path("/proc/net/tcp").read_text(), port) == {os.getuid()}


def captured_proc_net(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "tcp").write_text(PROC_NET_TCP)
    (tmp_path / "tcp6").write_text(PROC_NET_TCP6)
    return str(tmp_path / "tcp"), str(tmp_path / "tcp6")


def test_listener_of_another_user_gets_no_token(tmp_path, capsys):
    assert checks.check_listener("http://127.0.0.1:18268", captured_proc_net(tmp_path)) == 1
    assert "served by a process of another user" in capsys.readouterr().err
    assert checks.check_listener("http://localhost:18267", captured_proc_net(tmp_path)) == 0


def test_plain_http_to_another_machine_warns(tmp_path, capsys):
    assert checks.check_listener("http://10.0.0.1:8265", captured_proc_net(tmp_path)) == 0
    assert "token crosses the network in clear" in capsys.readouterr().err
    assert checks.check_listener("https://ray.example.org", captured_proc_net(tmp_path)) == 0
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------------------------
# The scripts' checks, with a stand-in `ray` command and a stand-in job API (no cluster).

FAKE_RAY = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "ray, version ${FAKE_RAY_VERSION:-2.60.0}"; exit 0; fi
echo "$@" >> "$FAKE_RAY_LOG"
"""


@pytest.fixture
def fake_ray(tmp_path):
    """PATH with a `ray` that answers --version and records every other call in $FAKE_RAY_LOG."""
    folder = tmp_path / "fake-bin"
    folder.mkdir()
    (folder / "ray").write_text(FAKE_RAY)
    (folder / "ray").chmod(0o755)
    log = tmp_path / "ray-calls.log"
    return base_env(PATH=f"{folder}{os.pathsep}{os.environ['PATH']}", FAKE_RAY_LOG=str(log)), log


@pytest.mark.parametrize(("token", "mode", "refusal"), [(secrets.token_hex(32), 0o644, "has mode 644"),
                                                        ("hunter22", 0o600, "too weak: it has 8 characters")])
def test_head_refuses_a_readable_or_weak_token(fake_ray, tmp_path, token, mode, refusal):
    env, log = fake_ray
    token_path = write_token(tmp_path / "auth_token", token, mode)
    result = run([LAUNCH / "start_head"], dict(env, RAY_AUTH_TOKEN_PATH=str(token_path)), timeout=60)
    assert result.returncode == 1 and refusal in result.stderr
    assert not log.exists()  # `ray start` never ran


def test_head_starts_with_a_strong_private_token(fake_ray, tmp_path):
    env, log = fake_ray
    token_path = write_token(tmp_path / "auth_token", secrets.token_hex(32), 0o600)
    result = run([LAUNCH / "start_head"], dict(env, RAY_AUTH_TOKEN_PATH=str(token_path)), timeout=60)
    assert result.returncode == 0, result.stderr
    assert log.read_text().startswith("start --head ")


def test_head_refuses_a_weak_token_in_the_environment(fake_ray):
    env, log = fake_ray
    result = run([LAUNCH / "start_head"], dict(env, RAY_AUTH_TOKEN="changeme"), timeout=60)
    assert result.returncode == 1 and "RAY_AUTH_TOKEN is too weak" in result.stderr
    assert "changeme" not in result.stdout + result.stderr


def test_worker_refuses_a_readable_token(fake_ray, tmp_path):
    env, log = fake_ray
    token_path = write_token(tmp_path / "auth_token", secrets.token_hex(32), 0o640)
    result = run([LAUNCH / "start_worker", "--head", "127.0.0.1:6379"], dict(env, RAY_AUTH_TOKEN_PATH=str(token_path)),
                 timeout=60)
    assert result.returncode == 1 and "has mode 640" in result.stderr
    assert not log.exists()


@pytest.mark.parametrize("script", [[LAUNCH / "start_head"], [LAUNCH / "start_worker", "--head", "127.0.0.1:6379"],
                                    [SUBMIT, "model_size=tiny_cpu"]], ids=["start_head", "start_worker", "submit"])
def test_scripts_refuse_ray_older_than_the_floor(fake_ray, tmp_path, script):
    env, log = fake_ray
    token_path = write_token(tmp_path / "auth_token", secrets.token_hex(32), 0o600)
    result = run(script, dict(env, FAKE_RAY_VERSION="2.51.0", RAY_AUTH_TOKEN_PATH=str(token_path)), timeout=60)
    assert result.returncode == 1
    assert "Ray 2.51.0 is installed; these scripts need Ray >= 2.52.0" in result.stderr
    assert not log.exists()


FAKE_JOB_API = """
import http.server, json, sys

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.record()
        if self.path == "/api/authentication_mode":
            body = json.dumps({"authentication_mode": "token"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    do_POST = do_GET

    def record(self):
        print(self.command, self.path, "Authorization" in self.headers, flush=True)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
print("PORT", server.server_address[1], flush=True)
server.serve_forever()
"""


@contextlib.contextmanager
def fake_job_api(as_uid: int | None = None):
    """A stand-in Ray job API on loopback that says it wants a token and prints every request it gets
    (method, path, whether an Authorization header came); optionally run as another user."""
    def drop_privileges():
        os.setgid(as_uid)
        os.setuid(as_uid)

    # Another user may not be able to run this venv's interpreter (it can live under /root): any
    # python3 does, the server needs the standard library only.
    python = sys.executable if as_uid is None else shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    proc = subprocess.Popen([python, "-c", FAKE_JOB_API], stdout=subprocess.PIPE, text=True, cwd="/",
                            preexec_fn=drop_privileges if as_uid is not None else None)
    try:
        port = int(proc.stdout.readline().split()[1])
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def requests_seen(proc: subprocess.Popen) -> list[str]:
    proc.kill()
    return proc.stdout.read().splitlines()


def test_submit_refuses_a_readable_token(tmp_path):
    token_path = write_token(tmp_path / "auth_token", secrets.token_hex(32), 0o644)
    with fake_job_api() as (address, proc):
        result = run([SUBMIT, "--address", address, "model_size=tiny_cpu"],
                     base_env(RAY_AUTH_TOKEN_PATH=str(token_path)), timeout=120)
        seen = requests_seen(proc)
    assert result.returncode == 1 and "has mode 644" in result.stderr
    assert seen == ["GET /api/authentication_mode False"]


@pytest.mark.skipif(os.getuid() != 0, reason="starting a listener as another user needs root "
                                             "(the decision itself is tested on captured /proc/net/tcp above)")
def test_submit_sends_nothing_to_a_loopback_listener_of_another_user(tmp_path):
    token_path = write_token(tmp_path / "auth_token", secrets.token_hex(32), 0o600)
    with fake_job_api(as_uid=65534) as (address, proc):
        result = run([SUBMIT, "--address", address, "--no-wait", "model_size=tiny_cpu"],
                     base_env(RAY_AUTH_TOKEN_PATH=str(token_path)), timeout=120)
        seen = requests_seen(proc)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "served by a process of another user: nobody (uid 65534)" in result.stderr
    assert seen == ["GET /api/authentication_mode False"]  # no token, no job


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
            # One logical GPU: verl's worker groups ask Ray for "GPU" on the CPU platform too (preflight checks it).
            [str(LAUNCH / "start_head"), "--node-ip", "127.0.0.1", "--port", str(ports["gcs"]), "--num-gpus", "1",
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
    loaded = re.search(r"\[OK  \] node 127\.0\.0\.1 .*lambda_grpo plugin loaded: "
                       r"(/\S*working_dir_files/[^/]+)/lambda_grpo/plugin\.py", logs.stdout)
    assert loaded, logs.stdout
    # What reached the cluster is the allow-list, nothing else: the folder Ray unpacked it into.
    unpacked = Path(loaded.group(1))
    received = sorted(str(path.relative_to(unpacked)) for path in unpacked.rglob("*") if path.is_file()
                      and "__pycache__" not in path.parts)
    assert received == upload.upload_files(str(REPO))


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


# ----------------------------------------------------------------------------------------------
# How a waited-for job ended (launch/checks.py job-succeeded): `ray job submit` exits 0 for a stopped job.


@contextlib.contextmanager
def job_api_answering(status: str, message: str | None):
    """A stand-in job API on loopback whose every job has this status; it records the Authorization headers."""
    import http.server
    import threading

    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"status": status, "message": message}).encode()
            self.send_response(200 if self.path.startswith("/api/jobs/") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()


@pytest.mark.parametrize(("status", "message", "exit_status", "says"), [
    ("SUCCEEDED", None, 0, ""),
    ("STOPPED", "Job was intentionally stopped.", 1, "was stopped (launch/submit stop, or Ray stopped it)"),
    ("FAILED", "Job entrypoint command failed with exit code 1", 1, "failed: Job entrypoint command failed"),
    ("FAILED", "Job entrypoint command failed with exit code -9, last logs: ...", 1, "(killed by SIGKILL)"),
    ("RUNNING", None, 1, "is RUNNING, but its log stream ended"),
])
def test_only_a_succeeded_job_is_success(tmp_path, monkeypatch, capsys, status, message, exit_status, says):
    token = secrets.token_hex(32)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(write_token(tmp_path / "auth_token", token, 0o600)))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    with job_api_answering(status, message) as (address, seen):
        assert checks.check_job_succeeded(address, "lambda_grpo-1") == exit_status
    assert seen == [f"Bearer {token}"]
    err = capsys.readouterr().err
    assert says in err and token not in err
    if exit_status == 0:
        assert err == ""


def test_a_job_that_was_never_created_is_not_success(capsys):
    with job_api_answering("SUCCEEDED", None) as (address, seen):
        assert checks.check_job_succeeded(f"{address}/elsewhere", "lambda_grpo-1") == 1  # the stand-in answers 404
    assert "job lambda_grpo-1 was not created" in capsys.readouterr().err


def test_unreadable_job_status_is_not_success(capsys):
    assert checks.check_job_succeeded(f"http://127.0.0.1:{free_port()}", "lambda_grpo-1") == 1
    assert "could not read the status of job lambda_grpo-1" in capsys.readouterr().err
