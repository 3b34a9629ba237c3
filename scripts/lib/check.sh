# shellcheck shell=bash
# The check scripts' reporting (scripts/check-prometheus.sh, check-k8s.sh):
# `step` heads a section, `ok` and `fail` report one check each; failures
# are collected in the array `failures` for the summary at the end.
failures=()
step() { printf '\n==> %s\n' "$*"; }
ok() { printf '    ok: %s\n' "$*"; }
fail() {
    printf '    FAILED: %s\n' "$*"
    failures+=("$*")
}
