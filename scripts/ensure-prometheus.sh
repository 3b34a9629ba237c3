#!/usr/bin/env bash
# ensure-prometheus.sh: make `promtool` (Prometheus' config and rule checker)
# available and print its absolute path on stdout (and nothing else there;
# all logging goes to stderr).
#
#   PROMTOOL=$(scripts/ensure-prometheus.sh)
#   "$PROMTOOL" check config deploy/prometheus/prometheus.yml
#
# Idempotent: the second run finds what the first one installed. Search order:
#   1. $PROMTOOL, when set (it must be an executable promtool: if it is set
#      but unusable this fails rather than silently picking another one);
#   2. /usr/bin/promtool (Debian's package), then `promtool` on PATH,
#      /usr/local/bin/promtool;
#   3. Debian's `prometheus` package, installed with apt-get (root only;
#      --no-install-recommends, so no node exporter comes with it).
#
# No system Prometheus: the package's postinst runs `invoke-rc.d prometheus
# start` (or, under systemd, enables and starts prometheus.service), which
# would start a server as the prometheus user on port 9090. The install runs
# under a policy-rc.d that denies every service start
# (scripts/lib/apt-no-start.sh). Should a server of the prometheus user run
# anyway after our install, it is stopped through its init script, or by its
# pid (never by name), and the unit is disabled where systemd runs.
#
# The versions of promtool and of the prometheus binary beside it (Debian
# bookworm: 2.42) are logged to stderr. scripts/check-prometheus.sh uses this.
set -euo pipefail

log() { printf 'ensure-prometheus: %s\n' "$*" >&2; }

# shellcheck source-path=SCRIPTDIR source=lib/apt-no-start.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/apt-no-start.sh"

PKG_PROMTOOL=/usr/bin/promtool

# Prints the absolute path of a usable promtool, or returns 1.
usable() {
    local cand=$1 real
    [[ -n $cand && -f $cand && -x $cand ]] || return 1
    real=$(readlink -f -- "$cand") || return 1
    if ! "$real" --version >/dev/null 2>&1; then
        log "$real does not answer --version: not a usable promtool"
        return 1
    fi
    printf '%s\n' "$real"
}

# First line of a Prometheus tool's --version ("promtool, version 2.42.0+ds
# (branch: ..., revision: ...)"); the tools print it on stdout or stderr
# depending on the version, so both are read.
version_line() {
    "$1" --version 2>&1 | sed -n 1p
}

found() {
    local real=$1 server
    log "using $real ($(version_line "$real"))"
    server=$(dirname -- "$real")/prometheus
    if [[ ! -x $server ]]; then
        server=$(command -v prometheus 2>/dev/null || true)
    fi
    if [[ -n $server && -x $server ]]; then
        log "prometheus binary: $server ($(version_line "$server"))"
    else
        log "no prometheus binary beside it (promtool alone is enough for the checks)"
    fi
    printf '%s\n' "$real"
    exit 0
}

# A run killed mid-install leaves its deny-all policy-rc.d behind: mend it.
apt_no_start_mend ensure-prometheus

# 1. an explicit choice is honoured or refused, never replaced.
if [[ -n ${PROMTOOL:-} ]]; then
    if real=$(usable "$PROMTOOL"); then
        found "$real"
    fi
    log "PROMTOOL=$PROMTOOL is not an executable promtool"
    exit 1
fi

# 2. something already there.
candidates=("$PKG_PROMTOOL")
if p=$(command -v promtool 2>/dev/null); then
    candidates+=("$p")
fi
candidates+=(/usr/local/bin/promtool)
for c in "${candidates[@]}"; do
    if real=$(usable "$c"); then
        found "$real"
    fi
done

# 3. Debian's package.
if [[ $(id -u) != 0 ]]; then
    log "no promtool found; install it as root: apt-get install --no-install-recommends prometheus"
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "no promtool found and no apt-get to install it with"
    exit 1
fi

# Pids of a Prometheus server run by the prometheus user (read-only: pgrep,
# never pkill), one a line; empty when none.
system_server_pids() {
    getent passwd prometheus >/dev/null 2>&1 || return 0
    pgrep -u prometheus -x prometheus 2>/dev/null || true
}

had_server=false
if [[ -n $(system_server_pids) ]]; then
    had_server=true
    log "note: a prometheus of the prometheus user is already running; it is left alone"
fi

apt_no_start_install ensure-prometheus --no-install-recommends prometheus

# Belt and braces: no system server of our making may stay (port 9090).
if ! $had_server && [[ -n $(system_server_pids) ]]; then
    log "the install started a system prometheus anyway; stopping it"
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
        systemctl disable --now prometheus.service >&2 || true
    elif [[ -x /etc/init.d/prometheus ]]; then
        /etc/init.d/prometheus stop >&2 || true
    fi
    # Still there: by pid (SIGTERM, then SIGKILL after 10 s).
    for pid in $(system_server_pids); do
        log "stopping prometheus pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 1 20); do
        [[ -z $(system_server_pids) ]] && break
        sleep 0.5
    done
    for pid in $(system_server_pids); do
        log "prometheus pid $pid ignored SIGTERM; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    done
    sleep 0.5
    if [[ -n $(system_server_pids) ]]; then
        log "a system prometheus still runs after stopping it: port 9090 may be taken"
        exit 1
    fi
fi
# Where systemd runs, the package enabled the unit for the next boot: undo.
if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1 \
    && systemctl is-enabled --quiet prometheus.service 2>/dev/null && ! $had_server; then
    log "disabling prometheus.service (only promtool is wanted here)"
    systemctl disable prometheus.service >&2 || true
fi

if real=$(usable "$PKG_PROMTOOL"); then
    found "$real"
fi
log "apt-get installed prometheus but $PKG_PROMTOOL is not usable"
exit 1
