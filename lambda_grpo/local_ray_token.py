"""The auth token of a local Ray cluster that this package starts: created private, kept private.

`python -m lambda_grpo.main` and `python -m lambda_grpo.preflight` start a local Ray cluster when no
address is given (no RAY_ADDRESS). Ray 2.60 turns token authentication on for it and, when no token
exists, writes one to ~/.ray/auth_token with a plain `open(path, "w")`
(ray/_private/authentication/authentication_token_setup.py, `generate_and_save_token`): mode 644 under
the usual umask 022, so every user of the machine can read it and run code on the cluster.
`secure_local_token`, called before Ray starts, does it first and privately, unless the caller turned
token authentication off (RAY_AUTH_MODE set to anything but `token`) or handed the token over in
RAY_AUTH_TOKEN: the token file Ray will read (RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token) is created
when missing, with a new token (32 random bytes as hex, Ray's format), mode 600, in a folder created
with mode 700; an existing file of ours that others may read is set to mode 600, with a notice.
RAY_AUTH_MODE itself is left to Ray: it caches the mode when imported and refreshes it only when it
switches token authentication on by itself, so a value set here, after `import ray`, would reach the
GCS server but not the driver.

Nothing is touched when an existing cluster is joined: its token is the cluster's business.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

def token_path() -> Path:
    """The token file Ray reads when RAY_AUTH_TOKEN is unset."""
    configured = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(configured).expanduser() if configured else Path.home() / ".ray" / "auth_token"


def _write_new_token(path: Path) -> None:
    """A new token at `path`, created with mode 600 (never readable by others, not even for a moment)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(secrets.token_hex(32))


def secure_local_token(address: str | None) -> str | None:
    """Prepare token authentication for a local cluster that Ray is about to start; a notice, or None.

    address: the `address` Ray will be given (ray_kwargs.ray_init.address); with it, or with
    RAY_ADDRESS set, Ray joins an existing cluster and nothing is done.
    """
    if address or os.environ.get("RAY_ADDRESS"):
        return None
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = token_path()
    try:
        _write_new_token(path)
        return f"Generated a Ray auth token for the local cluster in {path} (mode 600)."
    except FileExistsError:
        pass
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:
        path.chmod(0o600)
        return (f"The Ray auth token file {path} was readable by other users (mode "
                f"{stat.S_IMODE(info.st_mode):03o}); set it to 600. Anyone who read it could run code on "
                f"clusters that use it: replace it if this machine is shared (delete it; a new one is made).")
    return None
