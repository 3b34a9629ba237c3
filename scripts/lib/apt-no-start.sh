# shellcheck shell=bash
# scripts/lib/apt-no-start.sh: install Debian packages without letting their
# maintainer scripts start services. Sourced by scripts/ensure-*.sh:
#
#   source "$(dirname -- "${BASH_SOURCE[0]}")/lib/apt-no-start.sh"
#   apt_no_start_install ensure-prometheus --no-install-recommends prometheus
#
# A package's postinst starts its service with `invoke-rc.d NAME start` (or
# deb-systemd-invoke), which asks /usr/sbin/policy-rc.d first: exit 101 means
# "action forbidden". For the install's time that file is one that denies
# every start. An existing policy that already denies (Debian's Docker images
# ship one) is kept as it is; any other is set aside and put back afterwards,
# also when the install fails or the script is interrupted (INT, TERM, HUP).
# A run killed outright (SIGKILL) leaves its policy behind, marked: the next
# run puts things back before it does anything else.
#
# Installs are serialised through a lock file, so two ensure scripts running
# at once never juggle the policy under each other's feet (and apt-get does
# not fail on dpkg's lock). Root only; the caller checks that.
#
# Output: apt-get's and this file's logs go to stderr; stdout stays clean.

APT_NO_START_POLICY=${APT_NO_START_POLICY:-/usr/sbin/policy-rc.d}
APT_NO_START_BACKUP=$APT_NO_START_POLICY.apt-no-start.orig
APT_NO_START_LOCK=${APT_NO_START_LOCK:-/var/lock/tps-apt-no-start.lock}
APT_NO_START_MARK='scripts/lib/apt-no-start.sh: no service starts during an install'
# What ensure-rabbitmq.sh wrote before this file existed (and where it kept
# the policy it set aside): recognised so that its leftovers are mended too.
APT_NO_START_LEGACY_MARK='ensure-rabbitmq.sh: no service starts'
APT_NO_START_LEGACY_BACKUP=$APT_NO_START_POLICY.ensure-rabbitmq.orig

_apt_no_start_log() { printf '%s: %s\n' "${APT_NO_START_WHO:-apt-no-start}" "$*" >&2; }

# Mends what an interrupted run left: a policy carrying one of our marks is
# removed, and the one it had set aside (if any) goes back. Only called with
# the lock held, so a live run's policy is never taken for a leftover.
_apt_no_start_recover() {
    local policy=$APT_NO_START_POLICY mark backup
    [[ -f $policy ]] || return 0
    for mark in "$APT_NO_START_MARK" "$APT_NO_START_LEGACY_MARK"; do
        grep -qF -- "$mark" "$policy" 2>/dev/null || continue
        if [[ $mark == "$APT_NO_START_MARK" ]]; then
            backup=$APT_NO_START_BACKUP
        else
            backup=$APT_NO_START_LEGACY_BACKUP
        fi
        if [[ -e $backup || -L $backup ]]; then
            _apt_no_start_log "restoring $policy from $backup (left by an interrupted run)"
            mv -f -- "$backup" "$policy"
        else
            _apt_no_start_log "removing the $policy an interrupted run left"
            rm -f -- "$policy"
        fi
        return 0
    done
}

# Does the policy in place already deny starts? (policy-rc.d's contract:
# exit 101 = action forbidden.)
_apt_no_start_denies() {
    local policy=$APT_NO_START_POLICY rc=0
    [[ -x $policy ]] || return 1
    "$policy" apt-no-start-probe start >/dev/null 2>&1 || rc=$?
    ((rc == 101))
}

# apt_no_start_mend WHO
#   Mends an interrupted run's leftovers now (callers run it first thing, so a
#   forgotten deny-all policy does not outlive the run that wrote it by long).
#   Does nothing while another install holds the lock, or when not root.
apt_no_start_mend() {
    local who=$1
    [[ $(id -u) == 0 ]] || return 0
    [[ -f $APT_NO_START_POLICY ]] || return 0
    (
        APT_NO_START_WHO=$who
        mkdir -p -- "$(dirname -- "$APT_NO_START_LOCK")" 2>/dev/null || exit 0
        exec 9>"$APT_NO_START_LOCK" || exit 0
        flock -n 9 || exit 0
        _apt_no_start_recover
    ) || true
}

# apt_no_start_install WHO APT-GET-INSTALL-ARGS...
#   WHO names the caller in the log lines. Runs `apt-get update` and then
#   `apt-get install -y -qq ARGS...` (noninteractive) under a policy-rc.d that
#   denies service starts; returns apt-get's status. Runs in a subshell: the
#   traps and the lock stay inside it.
apt_no_start_install() {
    local who=$1
    shift
    (
        set -euo pipefail
        APT_NO_START_WHO=$who
        policy=$APT_NO_START_POLICY
        backup=$APT_NO_START_BACKUP

        mkdir -p -- "$(dirname -- "$APT_NO_START_LOCK")"
        exec 9>"$APT_NO_START_LOCK"
        if ! flock -w 900 9; then
            _apt_no_start_log "another install held $APT_NO_START_LOCK for 15 minutes; giving up"
            exit 1
        fi
        _apt_no_start_recover

        installed=false
        moved=false
        # shellcheck disable=SC2317  # called by the EXIT trap
        restore() {
            if $installed; then
                rm -f -- "$policy"
                installed=false
            fi
            if $moved; then
                mv -f -- "$backup" "$policy"
                moved=false
            fi
        }
        trap restore EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        trap 'exit 129' HUP

        if _apt_no_start_denies; then
            _apt_no_start_log "$policy already denies service starts; keeping it"
        else
            if [[ -e $policy || -L $policy ]]; then
                _apt_no_start_log "setting $policy aside (it allows service starts) for the install"
                mv -f -- "$policy" "$backup"
                moved=true
            fi
            printf '#!/bin/sh\n# %s\nexit 101\n' "$APT_NO_START_MARK" >"$policy"
            chmod 755 -- "$policy"
            installed=true
        fi

        # Explicit checks: a caller may run this in an `if`, where set -e is off.
        _apt_no_start_log "apt-get install $* (service starts denied)"
        if ! apt-get update -qq >&2 </dev/null; then
            _apt_no_start_log "apt-get update failed"
            exit 1
        fi
        rc=0
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 </dev/null || rc=$?
        if ((rc != 0)); then
            _apt_no_start_log "apt-get install $* failed (exit $rc)"
        fi
        exit "$rc"
    )
}
