#!/usr/bin/env bash
# check-prometheus.sh: check everything under deploy/prometheus with promtool,
# and the alerts against their runbook and their tests.
#
#   bash scripts/check-prometheus.sh [PROMTOOL]
#
# promtool: the argument, else $PROMTOOL, else scripts/ensure-prometheus.sh
# (which installs Debian's package when it has to). Works from any directory.
#
# Steps (each printed before it runs; all run, and the exit status is 1 if
# any failed):
#   1. promtool check config  deploy/prometheus/prometheus.yml and
#      prometheus-k8s.yml. Debian's promtool is built without Kubernetes
#      service discovery (it rejects kubernetes_sd_configs as an unknown
#      field); with such a promtool the k8s config is checked as a copy whose
#      kubernetes_sd_configs block is replaced by an empty static_configs, so
#      everything else (globals, rule files, relabelling) is still checked,
#      and the replaced block itself is checked to be `- role: pod`.
#   2. promtool check rules   deploy/prometheus/rules/*.yml (lint included)
#   3. promtool test rules    deploy/prometheus/tests/*.yml
#   4. runbook: every alert's runbook_url is docs/runbook.md#<name in lower
#      case>, docs/runbook.md has a `## <AlertName>` heading for it, and every
#      `## Tps…` heading there belongs to an alert
#   5. tests: every alert has a test case where it fires and one where it
#      does not (exp_alerts: [])
set -uo pipefail

cd "$(dirname -- "${BASH_SOURCE[0]}")/.." || exit 1

PROM_DIR=deploy/prometheus
ALERTS=$PROM_DIR/rules/alerts.yml
RUNBOOK=docs/runbook.md

# shellcheck source-path=SCRIPTDIR source=lib/check.sh
source scripts/lib/check.sh
# run DESCRIPTION CMD...: runs CMD, prints its output indented.
run() {
    local what=$1 out rc=0
    shift
    printf '$ %s\n' "$*"
    out=$("$@" 2>&1) || rc=$?
    [[ -n $out ]] && printf '%s\n' "$out" | sed 's/^/    /'
    if ((rc == 0)); then ok "$what"; else fail "$what (exit $rc)"; fi
    return "$rc"
}

# ---- promtool ---------------------------------------------------------------
PROMTOOL=${1:-${PROMTOOL:-}}
if [[ -z $PROMTOOL ]]; then
    if ! PROMTOOL=$(bash scripts/ensure-prometheus.sh); then
        echo "check-prometheus: no promtool (scripts/ensure-prometheus.sh failed)" >&2
        exit 1
    fi
fi
if [[ ! -x $PROMTOOL ]]; then
    echo "check-prometheus: $PROMTOOL is not executable" >&2
    exit 1
fi
echo "promtool: $PROMTOOL ($("$PROMTOOL" --version 2>&1 | sed -n 1p))"

# ---- 1. configs ---------------------------------------------------------------
step "1. promtool check config"
run "$PROM_DIR/prometheus.yml" "$PROMTOOL" check config "$PROM_DIR/prometheus.yml"

k8s=$PROM_DIR/prometheus-k8s.yml
printf '$ %s\n' "$PROMTOOL check config $k8s"
k8s_out=$("$PROMTOOL" check config "$k8s" 2>&1)
k8s_rc=$?
if ((k8s_rc == 0)); then
    printf '%s\n' "$k8s_out" | sed 's/^/    /'
    ok "$k8s"
elif grep -q 'field kubernetes_sd_configs not found' <<<"$k8s_out"; then
    echo "    (refused: this promtool has no Kubernetes discovery, as Debian builds it;"
    echo "    checking a copy with kubernetes_sd_configs replaced by an empty static_configs)"
    tmp=$(mktemp -d)
    trap 'rm -rf -- "$tmp"' EXIT
    ln -s "$PWD/$PROM_DIR/rules" "$tmp/rules"
    # kubernetes_sd_configs:\n  - role: pod   ->   static_configs:\n  - targets: []
    if awk '
        pending && /^ *- role: pod *$/ { sub(/- role: pod */, "- targets: []"); print; pending = 0; replaced++; next }
        pending { bad = 1 }
        /^ *kubernetes_sd_configs: *$/ { sub(/kubernetes_sd_configs:/, "static_configs:"); print; pending = 1; next }
        { print }
        END { exit (bad || replaced == 0) ? 1 : 0 }
    ' "$k8s" >"$tmp/prometheus-k8s.yml"; then
        run "$k8s (kubernetes_sd_configs stood in for; role: pod)" \
            "$PROMTOOL" check config "$tmp/prometheus-k8s.yml"
    else
        fail "$k8s: its kubernetes_sd_configs is not the expected '- role: pod' block"
    fi
else
    printf '%s\n' "$k8s_out" | sed 's/^/    /'
    fail "$k8s (exit $k8s_rc)"
fi

# ---- 2. rules -------------------------------------------------------------------
step "2. promtool check rules"
shopt -s nullglob
rule_files=("$PROM_DIR"/rules/*.yml)
test_files=("$PROM_DIR"/tests/*.yml)
if ((${#rule_files[@]} == 0)); then fail "no rule files in $PROM_DIR/rules"; fi
for f in "${rule_files[@]}"; do
    # promtool reports lint problems (duplicate rules) as FAILED but exits 0:
    # read its output too.
    printf '$ %s\n' "$PROMTOOL check rules $f"
    out=$("$PROMTOOL" check rules "$f" 2>&1)
    rc=$?
    printf '%s\n' "$out" | sed 's/^/    /'
    if ((rc == 0)) && ! grep -q 'FAILED' <<<"$out"; then ok "$f"; else fail "$f"; fi
done

# ---- 3. rule unit tests -----------------------------------------------------------
step "3. promtool test rules"
if ((${#test_files[@]} == 0)); then fail "no test files in $PROM_DIR/tests"; fi
for f in "${test_files[@]}"; do
    run "$f" "$PROMTOOL" test rules "$f"
done

# ---- 4. alerts <-> runbook ------------------------------------------------------
step "4. every alert has its runbook section, and every section its alert"
mapfile -t alerts < <(sed -n 's/^ *- alert: *\([A-Za-z0-9_]*\) *$/\1/p' "$ALERTS")
echo "    ${#alerts[@]} alerts in $ALERTS"
if [[ ! -f $RUNBOOK ]]; then
    fail "$RUNBOOK does not exist"
else
    # GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'.
    anchor() { tr '[:upper:]' '[:lower:]' <<<"$1" | sed 's/[^a-z0-9 _-]//g; s/ /-/g'; }
    declare -A heading_anchor=()
    while IFS= read -r h; do
        heading_anchor[$(anchor "$h")]=$h
    done < <(sed -n 's/^## \(.*[^ ]\) *$/\1/p' "$RUNBOOK")
    # runbook_url of each alert, in order.
    declare -A url_of=()
    while IFS=$'\t' read -r name url; do
        url_of[$name]=$url
    done < <(awk '
        /^ *- alert: / { name = $3 }
        /^ *runbook_url: / { url = $0; sub(/^ *runbook_url: */, "", url); gsub(/"/, "", url); print name "\t" url }
    ' "$ALERTS")
    bad=0
    for a in "${alerts[@]}"; do
        want="docs/runbook.md#$(anchor "$a")"
        if [[ ${url_of[$a]:-} != "$want" ]]; then
            fail "$a: runbook_url is '${url_of[$a]:-<none>}', expected '$want'"
            bad=1
        fi
        if [[ -z ${heading_anchor[$(anchor "$a")]:-} ]]; then
            fail "$a: no '## $a' heading in $RUNBOOK"
            bad=1
        fi
    done
    declare -A is_alert=()
    for a in "${alerts[@]}"; do is_alert[$a]=1; done
    while IFS= read -r h; do
        if [[ -z ${is_alert[$h]:-} ]]; then
            fail "$RUNBOOK: section '## $h' has no alert of that name"
            bad=1
        fi
    done < <(sed -n 's/^## \(Tps[A-Za-z0-9_]*\) *$/\1/p' "$RUNBOOK")
    ((bad == 0)) && ok "${#alerts[@]} alerts, ${#alerts[@]} runbook sections, anchors match"
fi

# ---- 5. alerts <-> tests ----------------------------------------------------------
step "5. every alert fires in a test and stays silent in another"
declare -A fires=() silent=()
while IFS=$'\t' read -r name kind; do
    if [[ $kind == silent ]]; then silent[$name]=1; else fires[$name]=1; fi
done < <(awk '
    /^ *alertname: / { name = $2; next }
    name != "" && /^ *exp_alerts: *\[\] *$/ { print name "\tsilent"; name = ""; next }
    name != "" && /^ *exp_alerts: *$/ { print name "\tfires"; name = ""; next }
' "${test_files[@]}")
bad=0
for a in "${alerts[@]}"; do
    [[ -n ${fires[$a]:-} ]] || { fail "$a: no test case where it fires"; bad=1; }
    [[ -n ${silent[$a]:-} ]] || { fail "$a: no test case where it stays silent (exp_alerts: [])"; bad=1; }
done
((bad == 0)) && ok "all ${#alerts[@]} alerts are tested both ways"

# ---- summary ----------------------------------------------------------------------
echo
if ((${#failures[@]} == 0)); then
    echo "check-prometheus: all checks passed (${#rule_files[@]} rule files, ${#test_files[@]} test files, ${#alerts[@]} alerts)"
    exit 0
fi
echo "check-prometheus: ${#failures[@]} check(s) FAILED:"
printf '  - %s\n' "${failures[@]}"
exit 1
