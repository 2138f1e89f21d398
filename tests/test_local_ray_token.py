"""lambda_grpo.local_ray_token: the token file of a local Ray cluster is private, before Ray starts.

The `ray` test starts a real local cluster the way the preflight (and `python -m lambda_grpo.main`)
does, in a subprocess with its own HOME: Ray 2.60 alone leaves ~/.ray/auth_token at mode 644.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lambda_grpo import local_ray_token

RAY_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME and no Ray address, auth mode or token in the environment."""
    for name in RAY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_new_local_cluster_gets_a_private_token(home):
    notice = local_ray_token.secure_local_token(None)
    token = home / ".ray" / "auth_token"
    assert notice == f"Generated a Ray auth token for the local cluster in {token} (mode 600)."
    assert re.fullmatch(r"[0-9a-f]{64}", token.read_text())
    assert (mode(token), mode(token.parent)) == (0o600, 0o700)
    assert "RAY_AUTH_MODE" not in os.environ  # Ray switches it on itself (see the module docstring)


def test_existing_readable_token_is_made_private_and_kept(home):
    token = home / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("a" * 16 + "0123456789abcdef" * 3)
    token.chmod(0o644)
    notice = local_ray_token.secure_local_token(None)
    assert mode(token) == 0o600 and token.read_text().startswith("a" * 16)
    assert "was readable by other users (mode 644); set it to 600" in notice


def test_private_token_is_left_alone(home):
    token = home / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("x" * 64)
    token.chmod(0o600)
    assert local_ray_token.secure_local_token(None) is None and token.read_text() == "x" * 64


def test_token_path_is_honoured(home, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(home / "secrets" / "ray_token"))
    local_ray_token.secure_local_token(None)
    assert mode(home / "secrets" / "ray_token") == 0o600 and not (home / ".ray").exists()


@pytest.mark.parametrize(("address", "env"), [("10.0.0.1:6379", {}), (None, {"RAY_ADDRESS": "10.0.0.1:6379"}),
                                              (None, {"RAY_AUTH_MODE": "disabled"}),
                                              (None, {"RAY_AUTH_TOKEN": "from-a-secret-store"})])
def test_nothing_is_written_when_joining_or_when_the_caller_chose(home, monkeypatch, address, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert local_ray_token.secure_local_token(address) is None
    assert not (home / ".ray").exists()


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another user needs root")
def test_token_file_of_another_user_is_not_touched(home):
    token = home / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("x" * 64)
    token.chmod(0o644)
    os.chown(token, 65534, 65534)
    assert local_ray_token.secure_local_token(None) is None and mode(token) == 0o644


LOCAL_CLUSTER = textwrap.dedent("""
    import json, os, stat, sys
    from pathlib import Path
    import ray
    from omegaconf import OmegaConf
    from lambda_grpo.preflight import connect_ray

    connect_ray(OmegaConf.create({"ray_kwargs": {"ray_init": {"num_cpus": 1, "include_dashboard": False}}}), None)
    token = Path.home() / ".ray" / "auth_token"
    print(json.dumps({"mode": stat.S_IMODE(token.stat().st_mode), "token": token.read_text(),
                      "auth_mode": os.environ.get("RAY_AUTH_MODE")}))
    ray.shutdown()
""")


@pytest.mark.ray
def test_local_cluster_started_like_the_quick_start_leaves_a_private_token(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in RAY_ENV}
    env.update(HOME=str(tmp_path), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    result = subprocess.run([sys.executable, "-c", LOCAL_CLUSTER], env=env, capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["mode"] == 0o600, facts
    assert re.fullmatch(r"[0-9a-f]{64}", facts["token"]) and facts["auth_mode"] == "token"
