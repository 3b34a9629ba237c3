#!/usr/bin/env bash
# audit.sh (make audit; CI's "supply chain" phase): cargo-deny on the main
# workspace's dependency graph, with the rules in deny.toml.
#
#   1. installs cargo-deny when `cargo deny --version` fails
#      (cargo install cargo-deny --locked, into ~/.cargo/bin; kept afterwards);
#   2. cargo deny check licenses bans sources: offline; any failure fails;
#   3. cargo deny check advisories: needs the RustSec advisory database, a git
#      repository on GitHub. Where it can be fetched (or a copy fetched earlier
#      is in $CARGO_HOME/advisory-dbs), a vulnerable dependency fails. Where it
#      cannot (this project's machines and CI reach crates.io, PyPI and Debian
#      only), a loud line says that advisories were NOT checked, and the run
#      passes, unless AUDIT_REQUIRE_ADVISORIES=1.
# docs/supply-chain.md says more.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! cargo deny --version >/dev/null 2>&1; then
    t0=$SECONDS
    echo "audit: installing cargo-deny (cargo install cargo-deny --locked)"
    cargo install cargo-deny --locked
    echo "audit: cargo-deny installed in $((SECONDS - t0))s"
fi
echo "audit: $(cargo deny --version)"

echo "audit: cargo deny check licenses bans sources"
cargo deny --color never check licenses bans sources

echo "audit: cargo deny check advisories"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if cargo deny --color never check advisories >"$out" 2>&1; then
    cat "$out"
    echo "audit: advisories ok (RustSec database fetched just now)"
    exit 0
fi
if ! grep -q "failed to fetch advisory database" "$out"; then
    # The database was there and something in the graph matched an
    # advisory (or the config is wrong): the output says which.
    cat "$out"
    echo "audit: FAILED: cargo deny check advisories" >&2
    exit 1
fi
grep -E "ERROR|fatal" "$out" | sed 's/^/audit:   /' >&2 || true

dbs=${CARGO_HOME:-$HOME/.cargo}/advisory-dbs
if compgen -G "$dbs/*/.git" >/dev/null; then
    # An earlier fetch left a copy: check against it, and say how old it is.
    echo "audit: the advisory database could not be fetched; using the copy in $dbs" \
        "(last commit $(git -C "$(compgen -G "$dbs/*/.git" | head -n 1)/.." log -1 --format=%cs 2>/dev/null || echo unknown))"
    if cargo deny --color never --offline check advisories; then
        echo "audit: advisories ok against that copy (it may miss recent advisories)"
        exit 0
    fi
    echo "audit: FAILED: cargo deny check advisories (local copy)" >&2
    exit 1
fi

{
    echo "audit: ##################################################################"
    echo "audit: ## ADVISORIES NOT CHECKED: the RustSec advisory database could not"
    echo "audit: ## be fetched (github.com is not reachable from here). Licenses,"
    echo "audit: ## bans and sources passed; known vulnerabilities were NOT looked"
    echo "audit: ## for. Run 'make audit' where github.com is reachable."
    echo "audit: ##################################################################"
} >&2
if [[ ${AUDIT_REQUIRE_ADVISORIES:-0} == 1 ]]; then
    echo "audit: FAILED: AUDIT_REQUIRE_ADVISORIES=1 and no advisory database" >&2
    exit 1
fi
