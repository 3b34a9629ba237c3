#!/usr/bin/env bash
# ensure-chromium.sh: make Debian's headless-capable `chromium` and its
# WebDriver server `chromedriver` available, and print chromedriver's absolute
# path on stdout (and nothing else there; all logging goes to stderr).
#
#   CHROMEDRIVER=$(scripts/ensure-chromium.sh)
#
# The board's browser test (tests/tests/board.rs, through tests/src/browser.rs)
# drives chromium through chromedriver; it finds chromedriver the same way
# (CHROMEDRIVER, then `chromedriver` on PATH, then /usr/bin/chromedriver) and
# the browser at $CHROMIUM or /usr/bin/chromium.
#
# Idempotent: the second run finds what the first one installed. Search order:
#   1. $CHROMEDRIVER, when set (it must be an executable chromedriver: if it is
#      set but unusable this fails rather than silently picking another one);
#   2. `chromedriver` on PATH, /usr/bin/chromedriver;
#   3. Debian's `chromium` and `chromium-driver` packages, installed with
#      apt-get --no-install-recommends (root only).
# The browser must be there too ($CHROMIUM, else /usr/bin/chromium): a
# chromedriver without its chromium is installed over. chromedriver only
# drives a chromium of its own major version; a mismatch is reported (the
# packages come from the same source version, so apt keeps them in step).
#
# Neither package starts a service; the install still goes through
# scripts/lib/apt-no-start.sh, which serialises it with the other ensure
# scripts (one dpkg at a time) and keeps any postinst from starting anything.
set -euo pipefail

log() { printf 'ensure-chromium: %s\n' "$*" >&2; }

# shellcheck source-path=SCRIPTDIR source=lib/apt-no-start.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/lib/apt-no-start.sh"

PKG_DRIVER=/usr/bin/chromedriver
BROWSER=${CHROMIUM:-/usr/bin/chromium}

# The first line a tool prints for --version ("ChromeDriver 120.0.6099.224
# (...)", "Chromium 120.0.6099.224 built on Debian ..."); empty on failure.
version_line() {
    "$1" --version 2>/dev/null | sed -n 1p || true
}

# The major version in a --version line ("120"), or empty.
major_of() {
    if [[ $1 =~ ([0-9]+)\.[0-9]+\.[0-9]+ ]]; then
        printf '%s\n' "${BASH_REMATCH[1]}"
    fi
}

# Prints the absolute path of a usable chromedriver, or returns 1.
usable_driver() {
    local cand=$1 real ver
    [[ -n $cand && -f $cand && -x $cand ]] || return 1
    real=$(readlink -f -- "$cand") || return 1
    ver=$(version_line "$real")
    if [[ $ver != ChromeDriver* ]]; then
        log "$real does not answer --version as a chromedriver: not usable"
        return 1
    fi
    printf '%s\n' "$real"
}

# Is the browser there and does it run? (`chromium --version` is a shell
# wrapper on Debian that execs the real binary.)
usable_browser() {
    [[ -x $BROWSER ]] && [[ $(version_line "$BROWSER") == Chromium* ]]
}

found() {
    local driver=$1 dver bver
    dver=$(version_line "$driver")
    bver=$(version_line "$BROWSER")
    log "using $driver ($dver)"
    log "browser: $BROWSER ($bver)"
    if [[ $(major_of "$dver") != "$(major_of "$bver")" ]]; then
        log "warning: chromedriver and chromium differ in major version; sessions may fail to start"
    fi
    printf '%s\n' "$driver"
    exit 0
}

# A run killed mid-install leaves its deny-all policy-rc.d behind: mend it.
apt_no_start_mend ensure-chromium

# 1. an explicit choice is honoured or refused, never replaced.
if [[ -n ${CHROMEDRIVER:-} ]]; then
    if ! real=$(usable_driver "$CHROMEDRIVER"); then
        log "CHROMEDRIVER=$CHROMEDRIVER is not an executable chromedriver"
        exit 1
    fi
    if ! usable_browser; then
        log "CHROMEDRIVER=$CHROMEDRIVER is set but there is no usable chromium at $BROWSER (set CHROMIUM)"
        exit 1
    fi
    found "$real"
fi

# 2. something already there.
candidates=()
if p=$(command -v chromedriver 2>/dev/null); then
    candidates+=("$p")
fi
candidates+=("$PKG_DRIVER")
if usable_browser; then
    for c in "${candidates[@]}"; do
        if real=$(usable_driver "$c"); then
            found "$real"
        fi
    done
fi

# 3. Debian's packages.
if [[ $(id -u) != 0 ]]; then
    log "no chromium + chromedriver found; install them as root: apt-get install --no-install-recommends chromium chromium-driver"
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    log "no chromium + chromedriver found and no apt-get to install them with"
    exit 1
fi

apt_no_start_install ensure-chromium --no-install-recommends chromium chromium-driver

if ! usable_browser; then
    log "apt-get installed chromium but $BROWSER does not run"
    exit 1
fi
if real=$(usable_driver "$PKG_DRIVER"); then
    found "$real"
fi
log "apt-get installed chromium-driver but $PKG_DRIVER is not usable"
exit 1
