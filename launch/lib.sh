# shellcheck shell=bash
# Shared helpers for the launch scripts. Sourced, never executed.
#
# Ray token authentication (Ray >= 2.52; Ray 2.60 turns it on for new local clusters): every node
# and every client must hold the same token. Ray looks it up in this order, and so do we:
#   1. the environment variable RAY_AUTH_TOKEN (the token itself; e.g. from a secret store),
#   2. the file named by RAY_AUTH_TOKEN_PATH,
#   3. the file ~/.ray/auth_token.
# With RAY_AUTH_MODE=token every GCS RPC, dashboard and job-API request must carry the token.

# Repository root: launch/ sits directly under it, whatever the caller's working directory.
LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
REPO_ROOT="$(dirname "$LAUNCH_DIR")"

die() {
    echo "error: $*" >&2
    exit 1
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

# Nodes and clients: require an existing token and switch token mode on.
require_token() {
    have_token || die "no Ray auth token found (looked at RAY_AUTH_TOKEN and $(token_file)).
$(how_to_get_token)"
    export RAY_AUTH_MODE=token
}

# Head node: use the existing token, or generate one (256 random bits as hex, as Ray's own
# generator does) into the token file, readable by its owner only. Written under a temporary name
# and renamed, so a crash never leaves a truncated token.
ensure_token() {
    if ! have_token; then
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
