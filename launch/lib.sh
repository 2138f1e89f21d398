# shellcheck shell=bash
# Shared helpers for the launch scripts. Sourced, never executed.
#
# Ray token authentication (Ray >= 2.52; Ray 2.60 turns it on for new local clusters): every node
# and every client must hold the same token. Ray looks it up in this order, and so do we:
#   1. the environment variable RAY_AUTH_TOKEN (the token itself; e.g. from a secret store),
#   2. the file named by RAY_AUTH_TOKEN_PATH,
#   3. the file ~/.ray/auth_token.
# With RAY_AUTH_MODE=token every GCS RPC, dashboard and job-API request must carry the token.
# A token file must belong to you and be readable by you only (mode 600); the head also refuses a
# weak token. launch/checks.py does these checks (it never prints the token).

# Repository root: launch/ sits directly under it, whatever the caller's working directory.
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
REPO_ROOT="$(dirname "$LAUNCH_DIR")"

# Token authentication needs Ray >= 2.52 (pyproject.toml's floor; tests/test_install_gpu.py keeps them equal).
MIN_RAY_VERSION=2.52.0
CHECKS="$LAUNCH_DIR/checks.py"

die() {
    echo "error: $*" >&2
    exit 1
}

# The `ray` command must be on PATH and recent enough for token authentication.
require_ray() {
    command -v ray >/dev/null || die "the 'ray' command is not on PATH: activate the project's environment (make install creates .venv) or run inside the Docker image."
    python3 "$CHECKS" ray-version "$MIN_RAY_VERSION" || exit 1
}

# The token file Ray reads when RAY_AUTH_TOKEN is unset.
token_file() {
    echo "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
}

have_token() {
    [[ -n "${RAY_AUTH_TOKEN:-}" ]] || [[ -s "$(token_file)" ]]
}

# Where the token comes from, for messages (never the token itself).
token_source() {
    if [[ -n "${RAY_AUTH_TOKEN:-}" ]]; then
        echo "the RAY_AUTH_TOKEN environment variable"
    else
        echo "the file $(token_file)"
    fi
}

how_to_get_token() {
    cat <<EOF
Ray token authentication needs the cluster's token on every node and on the machine you submit from.
Either copy the head node's token file to $(token_file) (chmod 600), point RAY_AUTH_TOKEN_PATH at a copy,
or export RAY_AUTH_TOKEN from your secret store. On the head node, 'ray get-auth-token' prints it.
EOF
}

# A token file in use must be yours and private; with --strength (the head) also strong.
check_token() {
    if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then
        python3 "$CHECKS" token-file "$(token_file)" "$@" || exit 1
    elif [[ "${1:-}" == --strength ]]; then
        python3 "$CHECKS" token-env || exit 1
    fi
}

# Nodes and clients: require an existing, private token and switch token mode on.
require_token() {
    have_token || die "no Ray auth token found (looked at RAY_AUTH_TOKEN and $(token_file)).
$(how_to_get_token)"
    check_token
    export RAY_AUTH_MODE=token
}

# Head node: use the existing token once it passed the checks, or generate one (256 random bits as
# hex, as Ray's own generator does) into the token file, readable by its owner only. Written under a
# temporary name and renamed, so a crash never leaves a truncated token.
ensure_token() {
    if have_token; then
        check_token --strength
    else
        local path
        path="$(token_file)"
        (
            umask 077
            mkdir -p "$(dirname "$path")"
            python3 -c 'import secrets, sys; sys.stdout.write(secrets.token_hex(32))' >"$path.tmp.$$"
            mv "$path.tmp.$$" "$path"
        ) || die "could not write a new Ray auth token to $path"
        echo "Generated a new Ray auth token in $path (mode 600)."
    fi
    export RAY_AUTH_MODE=token
}

is_loopback() {
    [[ "$1" == "127.0.0.1" || "$1" == "localhost" || "$1" == "::1" ]]
}
