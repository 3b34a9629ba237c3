#!/usr/bin/env bash
# ensure-rabbitmq.sh: make RabbitMQ available for private, per-test brokers and
# print the absolute path of the `rabbitmq-server` launcher script on stdout
# (and nothing else there; all logging goes to stderr).
#
#   RABBITMQ_SERVER=$(scripts/ensure-rabbitmq.sh)
#
# Idempotent: the second run finds what the first one installed. Search order:
#   1. $RABBITMQ_SERVER, when set (it must be an executable rabbitmq-server
#      launcher: if it is set but unusable this fails rather than silently
#      picking another one);
#   2. /usr/lib/rabbitmq/bin/rabbitmq-server (Debian's package);
#   3. `rabbitmq-server` on PATH, /usr/local/sbin, /usr/local/bin;
#   4. Debian's package, installed with apt-get (root only).
#
# Which launcher: Debian's /usr/sbin/rabbitmq-server is a wrapper that `su`s
# to the rabbitmq user and works in /var/lib/rabbitmq; the harness wants the
# plain launcher, /usr/lib/rabbitmq/bin/rabbitmq-server, which runs as the
# caller with whatever RABBITMQ_* environment it is given (node name, ports,
# data and log dirs in a temporary directory). The wrapper is resolved to it.
#
# No system broker: the package's postinst runs `invoke-rc.d rabbitmq-server
# start`, which without systemd starts a broker as the rabbitmq user on port
# 5672 (plus an epmd). The install runs under a policy-rc.d that denies every
# service start (scripts/lib/apt-no-start.sh: an existing one that already
# denies is kept as is; any other is set aside and put back afterwards).
# Should a system broker run anyway after our install, it is stopped through
# its init system and disabled.
#
# Erlang cookie: a private node, and the rabbitmqctl that talks to it, read
# $HOME/.erlang.cookie (the harness points HOME at a temporary directory and
# writes one there). The Debian cookie in /var/lib/rabbitmq belongs to the
# rabbitmq user and is not used. If the caller's own ~/.erlang.cookie exists
# it must be readable by its owner only, or Erlang refuses to start: that is
# checked (and fixed) here for people running a node by hand.
set -euo pipefail

log() { printf 'ensure-rabbitmq: %s\n' "$*" >&2; }

# shellcheck source-path=SCRIPTDIR source=lib/apt-no-start.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/apt-no-start.sh"

PKG_LAUNCHER=/usr/lib/rabbitmq/bin/rabbitmq-server

# Prints the path of a usable launcher, or returns 1. The path is kept as
# given (made absolute) when rabbitmq-env sits next to it, as it does in
# /usr/lib/rabbitmq/bin, so that it stays valid across package upgrades;
# otherwise it is resolved to the real file.
usable() {
    local cand=$1 real dir
    [[ -n $cand && -f $cand && -x $cand ]] || return 1
    real=$(readlink -f -- "$cand") || return 1
    if [[ $(basename -- "$real") == rabbitmq-script-wrapper ]]; then
        # Debian's su-to-rabbitmq wrapper: use the plain launcher behind it.
        real=$(dirname -- "$real")/rabbitmq-server
    elif [[ $cand == /* && -f $(dirname -- "$cand")/rabbitmq-env ]]; then
        real=$cand
    fi
    [[ -f $real && -x $real ]] || return 1
    dir=$(dirname -- "$real")
    # The launcher sources rabbitmq-env next to it; rabbitmqctl stops a node.
    if [[ ! -f $dir/rabbitmq-env || ! -x $dir/rabbitmqctl ]]; then
        log "$real: no rabbitmq-env and rabbitmqctl next to it, not a rabbitmq-server launcher"
        return 1
    fi
    if ! command -v erl >/dev/null 2>&1; then
        log "$real: erl (Erlang) is not on PATH"
        return 1
    fi
    printf '%s\n' "$real"
}

# The version of the installed server, for the log ("3.10.8"), or "?".
version_of() {
    local real
    real=$(readlink -f -- "$1")
    if [[ $real =~ rabbitmq_server-([0-9][0-9.]*)/ ]]; then
        printf '%s\n' "${BASH_REMATCH[1]}"
    else
        printf '?\n'
    fi
}

check_cookie() {
    local cookie=${HOME:-/root}/.erlang.cookie mode
    [[ -f $cookie ]] || return 0
    mode=$(stat -c %a -- "$cookie")
    if [[ $mode != 400 && $mode != 600 ]]; then
        log "$cookie has mode $mode; Erlang needs it owner-only: chmod 400"
        chmod 400 -- "$cookie"
    fi
}

found() {
    local real=$1
    check_cookie
    log "using $real (RabbitMQ $(version_of "$real"))"
    printf '%s\n' "$real"
    exit 0
}

# A run killed mid-install leaves its deny-all policy-rc.d behind: mend it.
apt_no_start_mend ensure-rabbitmq

# 1. an explicit choice is honoured or refused, never replaced.
if [[ -n ${RABBITMQ_SERVER:-} ]]; then
    if real=$(usable "$RABBITMQ_SERVER"); then
        found "$real"
    fi
    log "RABBITMQ_SERVER=$RABBITMQ_SERVER is not an executable rabbitmq-server launcher"
    exit 1
fi

# 2-3. something already there.
candidates=("$PKG_LAUNCHER")
if p=$(command -v rabbitmq-server 2>/dev/null); then
    candidates+=("$p")
fi
candidates+=(/usr/local/sbin/rabbitmq-server /usr/local/bin/rabbitmq-server)
for c in "${candidates[@]}"; do
    if real=$(usable "$c"); then
        found "$real"
    fi
done

# 4. Debian's package.
if [[ $(id -u) != 0 ]]; then
    log "no rabbitmq-server found; install it as root: apt-get install rabbitmq-server"
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "no rabbitmq-server found and no apt-get to install it with"
    exit 1
fi

# Is a broker of the rabbitmq user running? (Read-only: pgrep, never pkill.)
system_broker_running() {
    getent passwd rabbitmq >/dev/null 2>&1 && pgrep -u rabbitmq -x beam.smp >/dev/null 2>&1
}

had_broker=false
if system_broker_running; then
    had_broker=true
    log "note: a broker of the rabbitmq user is already running; it is left alone"
fi

apt_no_start_install ensure-rabbitmq rabbitmq-server

# Belt and braces: no system broker of our making may stay (port 5672).
if ! $had_broker && system_broker_running; then
    log "the install started a system broker anyway; stopping and disabling it"
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now rabbitmq-server.service >&2 || true
    elif [[ -x /etc/init.d/rabbitmq-server ]]; then
        /etc/init.d/rabbitmq-server stop >&2 || true
    fi
    # Its epmd goes too, unless a node still uses it (-kill then refuses).
    epmd -kill >/dev/null 2>&1 || true
    if system_broker_running; then
        log "a system broker still runs after stopping it: port 5672 may be taken"
        exit 1
    fi
fi
# Where systemd runs, the package enabled the unit for the next boot: undo.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1 \
    && systemctl is-enabled --quiet rabbitmq-server.service 2>/dev/null && ! $had_broker; then
    log "disabling rabbitmq-server.service (tests start private brokers)"
    systemctl disable rabbitmq-server.service >&2 || true
fi

if real=$(usable "$PKG_LAUNCHER"); then
    found "$real"
fi
log "apt-get installed rabbitmq-server but $PKG_LAUNCHER is not usable"
exit 1
