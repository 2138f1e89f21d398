"""Safety checks of the launch scripts: Ray's version, the auth token, and who the token is sent to.

    python3 launch/checks.py ray-version MIN            exit 1 unless the `ray` on PATH is at least MIN
    python3 launch/checks.py token-file PATH [--strength]
                                                        exit 1 unless PATH is yours and private (and strong)
    python3 launch/checks.py token-env                  exit 1 unless $RAY_AUTH_TOKEN is strong
    python3 launch/checks.py listener URL               exit 1 if a loopback URL is served by another user;
                                                        warns for plain http:// to another machine
    python3 launch/checks.py job-succeeded URL JOB_ID   exit 1 unless the job's status is SUCCEEDED (`ray job
                                                        submit` itself exits 0 for a stopped job); says why

Standard library only (it runs under whatever python3 is on PATH, also on a laptop that only submits).
The token itself is never printed, and never passed on a command line (other users can read those).
Messages go to stderr; exit status 0 means go ahead.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import re
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from urllib.parse import quote, urlsplit

# Ray's own tokens are 32 random bytes as 64 hex characters (256 bits); 32 characters is 128 bits of hex.
MIN_TOKEN_CHARS = 32
# A long token of few distinct characters ("aaaa…", "abab…") is not random; 32 random hex characters
# have fewer than 8 distinct ones with probability below 1e-7.
MIN_DISTINCT_CHARS = 8
# Sockets in state LISTEN in /proc/net/tcp{,6} (include/net/tcp_states.h: TCP_LISTEN = 10).
TCP_LISTEN = "0A"


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


def version_tuple(text: str) -> tuple[int, ...]:
    """The release numbers of a version string: "2.60.0" -> (2, 60, 0); "2.53.0rc1" -> (2, 53, 0)."""
    match = re.match(r"(\d+(?:\.\d+)*)", text.strip())
    if not match:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(part) for part in match.group(1).split("."))


def check_ray_version(minimum: str) -> int:
    """`ray --version` prints "ray, version 2.60.0"; below `minimum` there is no token authentication."""
    try:
        out = subprocess.run(["ray", "--version"], capture_output=True, text=True, timeout=120, check=True).stdout
    except (OSError, subprocess.SubprocessError) as error:
        return fail(f"could not run `ray --version` ({error}): activate the project's environment "
                    "(make install creates .venv) or run inside the Docker image.")
    found = re.search(r"version\s+(\S+)", out)
    if not found:
        return fail(f"could not read Ray's version from `ray --version`: {out.strip()!r}")
    if version_tuple(found.group(1)) < version_tuple(minimum):
        return fail(f"Ray {found.group(1)} is installed; these scripts need Ray >= {minimum} (token "
                    f"authentication, and job arguments passed without a shell). Upgrade: "
                    f"pip install 'ray[default]>={minimum}' (make install / make install-gpu do).")
    return 0


def token_weakness(token: str) -> str | None:
    """Why a token is too weak to guard a cluster, or None."""
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS:
        return f"it has {len(token)} characters, fewer than {MIN_TOKEN_CHARS}"
    if len(set(token)) < MIN_DISTINCT_CHARS:
        return f"it uses only {len(set(token))} distinct characters: it is not random"
    return None


NEW_TOKEN = ("make a new one: python3 -c 'import secrets; print(secrets.token_hex(32))' > FILE; chmod 600 FILE "
             "(or delete the file and let launch/start_head generate one), then copy it to the other nodes")


def check_token_file(path: str, strength: bool) -> int:
    """The token file must be a file of this user that no one else may read (and, on the head, strong)."""
    try:
        info = os.stat(path)
    except OSError as error:
        return fail(f"cannot read the Ray auth token file {path}: {error.strerror}")
    if not stat.S_ISREG(info.st_mode):
        return fail(f"the Ray auth token file {path} is not a regular file")
    if info.st_uid != os.getuid():
        return fail(f"the Ray auth token file {path} belongs to uid {info.st_uid}, not to you (uid "
                    f"{os.getuid()}): its owner can read or replace it. Use a token file of your own.")
    if info.st_mode & 0o077:
        return fail(f"the Ray auth token file {path} has mode {stat.S_IMODE(info.st_mode):03o}: other users "
                    f"may have read it. Fix the mode (chmod 600 {path}) and, since it may have leaked, "
                    f"replace the token: {NEW_TOKEN.replace('FILE', path)}.")
    if strength:
        with open(path, encoding="utf-8", errors="replace") as file:
            weakness = token_weakness(file.read())
        if weakness:
            return fail(f"the Ray auth token in {path} is too weak: {weakness}. {NEW_TOKEN.replace('FILE', path)}.")
    return 0


def check_token_env() -> int:
    weakness = token_weakness(os.environ.get("RAY_AUTH_TOKEN", ""))
    if weakness:
        return fail(f"the Ray auth token in RAY_AUTH_TOKEN is too weak: {weakness}. Store a new one, e.g. "
                    "python3 -c 'import secrets; print(secrets.token_hex(32))', in your secret store.")
    return 0


# ----------------------------------------------------------------------------------------------
# Who listens on a loopback port.


def parse_proc_address(hex_address: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    """An address of /proc/net/tcp ("0100007F:1F90") or tcp6 (32 hex digits): the kernel prints each
    32-bit word of the address in host byte order (little-endian here) and the port as plain hex."""
    address, port = hex_address.split(":")
    words = bytes.fromhex(address)
    raw = b"".join(words[i:i + 4][::-1] for i in range(0, len(words), 4)) if sys.byteorder == "little" else words
    ip = ipaddress.IPv4Address(raw) if len(raw) == 4 else ipaddress.IPv6Address(raw)
    return ip, int(port, 16)


def loopback_listeners(proc_net_text: str, port: int) -> set[int]:
    """uids of the sockets listening on `port` that a loopback connection may reach (bound to a loopback
    or a wildcard address), from the text of /proc/net/tcp or /proc/net/tcp6."""
    uids = set()
    for line in proc_net_text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8 or fields[3] != TCP_LISTEN:
            continue
        ip, listen_port = parse_proc_address(fields[1])
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        if listen_port == port and (ip.is_loopback or ip.is_unspecified or (mapped and mapped.is_loopback)):
            uids.add(int(fields[7]))
    return uids


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_listener(url: str, proc_net: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> int:
    """Refuse a loopback address served by another user; warn about clear-text HTTP to another machine.

    On Linux a connection to this machine's loopback reaches a socket of this network namespace, and
    /proc/net/tcp{,6} names the uid that owns each listening socket, readable without privileges. A
    listener of another user on the port of your SSH tunnel (it took the port first, or your tunnel
    died) would receive the token. root (uid 0) is trusted: it can read your token file anyway.
    """
    parts = urlsplit(url)
    host, scheme = parts.hostname or "", parts.scheme
    if not is_loopback_host(host):
        if scheme == "http":
            print(f"warning: {url} is another machine reached over plain http: the Ray auth token crosses the "
                  "network in clear. Prefer an SSH tunnel (ssh -N -L 8265:127.0.0.1:8265 HEAD) and "
                  "--address http://127.0.0.1:8265, or an https proxy in front of the job API.", file=sys.stderr)
        return 0
    port = parts.port or (443 if scheme == "https" else 80)
    texts = []
    for path in proc_net:
        try:
            with open(path, encoding="ascii") as file:
                texts.append(file.read())
        except OSError:
            continue
    if not texts:
        print(f"note: cannot see who listens on {host}:{port} on this system (no /proc/net/tcp); make sure it "
              "is your own tunnel or Ray head.", file=sys.stderr)
        return 0
    others = {uid for text in texts for uid in loopback_listeners(text, port)} - {os.getuid(), 0}
    if others:
        owners = ", ".join(f"{user_name(uid)} (uid {uid})" for uid in sorted(others))
        return fail(f"{host}:{port} is served by a process of another user: {owners}, not you "
                    f"({user_name(os.getuid())}, uid {os.getuid()}). On a shared machine that may be someone "
                    "waiting for your Ray auth token, so it is not sent. Open your own tunnel on a free port "
                    "(ssh -N -L 18265:127.0.0.1:8265 HEAD) and pass --address http://127.0.0.1:18265; a Ray "
                    "head in a container of another uid: submit from inside it (docker exec).")
    return 0


# ----------------------------------------------------------------------------------------------
# How a job ended.


def auth_headers() -> dict[str, str]:
    """The Authorization header Ray's job API wants when token authentication is on (RAY_AUTH_MODE=token,
    which launch/submit exports for such a cluster): the token read as Ray reads it."""
    if os.environ.get("RAY_AUTH_MODE") != "token":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token")
        with open(path, encoding="utf-8") as file:
            token = file.read()
    return {"Authorization": f"Bearer {token.strip()}"}


def killed_by(message: str) -> str:
    """" (killed by SIGKILL)" when Ray's message gives the entrypoint's exit code as a negative signal number."""
    code = re.search(r"exit code (-\d+)", message)
    try:
        return f" (killed by {signal.Signals(-int(code[1])).name})" if code else ""
    except ValueError:
        return ""


def job_outcome(status: str, message: str | None, job_id: str) -> str | None:
    """Why a job that ended with `status` (Ray's JobStatus name) did not succeed; None when it did."""
    if status == "SUCCEEDED":
        return None
    if status == "STOPPED":
        return (f"job {job_id} was stopped (launch/submit stop, or Ray stopped it) before its run finished. "
                "Resubmit the same command to continue from its last complete checkpoint.")
    if status == "FAILED":
        return f"job {job_id} failed: {message or 'no message from Ray'}{killed_by(message or '')}"
    return (f"job {job_id} is {status}, but its log stream ended (the connection to the job API was lost?): "
            f"follow it with launch/submit logs {job_id} --follow, or stop it with launch/submit stop {job_id}")


def check_job_succeeded(url: str, job_id: str) -> int:
    """Exit 0 iff the job API at `url` says the job SUCCEEDED; else say how it ended."""
    request = urllib.request.Request(f"{url.rstrip('/')}/api/jobs/{quote(job_id, safe='')}", headers=auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            info = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        if isinstance(error, urllib.error.HTTPError) and error.code == 404:
            return fail(f"job {job_id} was not created: its submission failed (the error is above)")
        return fail(f"could not read the status of job {job_id} from {url} ({error}); it may still be running: "
                    f"launch/submit status {job_id}")
    why = job_outcome(str(info.get("status")), info.get("message"), job_id)
    return fail(why) if why else 0


def main(argv: list[str]) -> int:
    command, args = (argv[0], argv[1:]) if argv else ("", [])
    if command == "ray-version" and len(args) == 1:
        return check_ray_version(args[0])
    if command == "token-file" and args and set(args[1:]) <= {"--strength"} and len(args) <= 2:
        return check_token_file(args[0], strength="--strength" in args[1:])
    if command == "token-env" and not args:
        return check_token_env()
    if command == "listener" and len(args) == 1:
        return check_listener(args[0])
    if command == "job-succeeded" and len(args) == 2:
        return check_job_succeeded(*args)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
