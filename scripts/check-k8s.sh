#!/usr/bin/env bash
# check-k8s.sh: validate the Kubernetes manifests (k8s/) and the compose file
# offline, with nothing running and no cluster.
#
#   bash scripts/check-k8s.sh
#
# Steps (each printed before it runs; all run, and the exit status is 1 if
# any failed):
#   1. tools: kubectl (its built-in kustomize renders; $KUBECTL picks
#      another) and a private virtualenv with the PyPI package
#      kubernetes-validate (pinned; created once under
#      ${TPS_CACHE_DIR:-~/.cache/tps}/k8s-venv, reused after).
#   2. secrets: no secretGenerator in k8s/ takes literals or a committed file;
#      each env file it reads is gitignored and untracked, and has a
#      <file>.example beside it that is not ignored (the committed template).
#   3. render: `kubectl kustomize` of k8s/base and of every k8s/overlays/*, in
#      a copy of k8s/ where each overlay's secrets.env is made from its
#      secrets.env.example with dummy values (a real secrets.env of yours is
#      never read).
#   4. validate (k8s/check/validate.py), for each render:
#      - every object against the Kubernetes OpenAPI schemas of each version
#        in K8S_VERSIONS (default "1.30.0 1.37.0": 1.30 is the version TPS
#        states it supports, 1.37 the newest the pinned package knows),
#        strict (unknown fields fail). KEDA's ScaledObject, a CRD the package
#        cannot know, is validated against k8s/check/keda-scaledobject-
#        v1alpha1.schema.json, written from KEDA's ScaledObject spec; any
#        other unknown kind fails.
#      - TPS policy: native gRPC readiness probes, liveness/startup probes,
#        requests and limits, non-root uid 10001 with a read-only root,
#        no privilege escalation, ALL capabilities dropped, seccomp
#        RuntimeDefault, Prometheus annotations, one PDB per Deployment,
#        autoscaler bounds, KEDA stream/consumer names (shared/queue/src/
#        names.rs) and maxReplicaCount <= TPS_HEIJUNKA_POOL, references
#        between objects (ConfigMap, Secret keys, Service ports).
#   5. compose: `docker-compose -f docker-compose.yml config -q` with dummy
#      RABBITMQ_PASSWORD / GRAFANA_ADMIN_PASSWORD, and without them (it must
#      refuse: no password is committed). `docker compose` when there is no
#      docker-compose.
set -uo pipefail

cd "$(dirname -- "${BASH_SOURCE[0]}")/.." || exit 1

K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.37.0"}
KV_PIN=kubernetes-validate==1.37.0
CACHE_DIR=${TPS_CACHE_DIR:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/tps}
VENV=$CACHE_DIR/k8s-venv
PY=$VENV/bin/python

# shellcheck source-path=SCRIPTDIR source=lib/check.sh
source scripts/lib/check.sh

tmp=$(mktemp -d "${TMPDIR:-/tmp}/check-k8s.XXXXXX") || exit 1
trap 'rm -rf -- "$tmp"' EXIT

# ---------------------------------------------------------------- 1. tools
step "tools"
KUBECTL=${KUBECTL:-$(command -v kubectl || true)}
# This machine kind has kubectl from an apt source of its own; where the
# package is known to apt but not installed, install it (root only).
if [[ -z $KUBECTL && $(id -u) == 0 ]] && apt-cache policy kubectl 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    printf 'check-k8s: installing kubectl with apt-get\n' >&2
    apt-get install -y --no-install-recommends kubectl >&2 || true
    KUBECTL=$(command -v kubectl || true)
fi
if [[ -z $KUBECTL || ! -x $KUBECTL ]]; then
    fail "kubectl not found (set KUBECTL=/path/to/kubectl; any kubectl >= 1.27 has kustomize v5)"
    printf '\ncheck-k8s: FAILED (%d): %s\n' "${#failures[@]}" "${failures[*]}"
    exit 1
fi
ok "kubectl: $KUBECTL ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))"

venv_ready() {
    [[ -x $PY ]] && "$PY" - "$KV_PIN" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
name, want = sys.argv[1].split("==")
sys.exit(0 if version(name) == want else 1)
EOF
}
if venv_ready; then
    ok "$KV_PIN in $VENV (already installed)"
else
    echo "    installing $KV_PIN into $VENV"
    mkdir -p -- "$CACHE_DIR"
    if python3 -m venv "$VENV" &&
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "$KV_PIN" &&
        venv_ready; then
        ok "$KV_PIN installed in $VENV"
    else
        fail "could not install $KV_PIN into $VENV"
        printf '\ncheck-k8s: FAILED (%d): %s\n' "${#failures[@]}" "${failures[*]}"
        exit 1
    fi
fi

# ---------------------------------------------------------------- 2. secrets
step "secrets: generators read gitignored env files, never literals"
# Lists "<kustomization dir>\t<kind>\t<value>" for every secretGenerator source.
sources=$("$PY" - <<'EOF'
import glob, os, yaml
for k in sorted(glob.glob("k8s/**/kustomization.yaml", recursive=True)):
    with open(k) as f:
        doc = yaml.safe_load(f) or {}
    for g in doc.get("secretGenerator", []) or []:
        for kind in ("literals", "files", "envs", "env"):
            vals = g.get(kind) or []
            for v in [vals] if isinstance(vals, str) else vals:
                print(f"{os.path.dirname(k)}\t{kind}\t{v}")
EOF
) || fail "reading the kustomizations' secretGenerators"
in_git=false
git rev-parse --is-inside-work-tree >/dev/null 2>&1 && in_git=true
$in_git || echo "    (not a git work tree: the gitignored/untracked checks are skipped)"
n=0
while IFS=$'\t' read -r dir kind value; do
    [[ -n $dir ]] || continue
    n=$((n + 1))
    case $kind in
    literals | files)
        # A literal or a committed file in a generator is a committed credential.
        fail "$dir: secretGenerator takes $kind (${value%%=*}=...): use an env file that is gitignored"
        continue
        ;;
    esac
    path=$dir/${value#*=}
    if $in_git; then
        if git ls-files --error-unmatch -- "$path" >/dev/null 2>&1; then
            fail "$path is tracked by git: it holds credentials"
        elif ! git check-ignore -q -- "$path"; then
            fail "$path is not gitignored"
        else
            ok "$path: gitignored, untracked"
        fi
        if [[ ! -f $path.example ]]; then
            fail "$path.example: missing (the template to copy)"
        elif git check-ignore -q -- "$path.example"; then
            fail "$path.example is gitignored: the template must be committed"
        else
            ok "$path.example: present, not ignored (the committed template)"
        fi
    elif [[ -f $path.example ]]; then
        ok "$path.example exists"
    else
        fail "$path.example missing"
    fi
done <<<"$sources"
((n > 0)) || echo "    (no secretGenerator in k8s/)"

# ---------------------------------------------------------------- 3. render
step "render: kubectl kustomize (a copy of k8s/ with dummy secrets)"
cp -R k8s "$tmp/k8s"
mkdir -p "$tmp/out"
# Never read a developer's real secrets.env: replace each with its example,
# empty values filled with a dummy (16+ characters, as TPS_ADMIN_TOKEN needs).
find "$tmp/k8s" -name secrets.env -type f -delete
while IFS= read -r ex; do
    sed -E 's/^([A-Z_][A-Z0-9_]*)=$/\1=check-k8s-dummy-0123456789/' "$ex" >"${ex%.example}"
done < <(find "$tmp/k8s" -name 'secrets.env.example' -type f)

targets=(base)
for d in k8s/overlays/*/; do
    [[ -f $d/kustomization.yaml ]] && targets+=("overlays/$(basename "$d")")
done
rendered=()
for t in "${targets[@]}"; do
    label=${t#overlays/}
    out=$tmp/out/$label.yaml
    printf '$ kubectl kustomize k8s/%s\n' "$t"
    if err=$("$KUBECTL" kustomize "$tmp/k8s/$t" 2>&1 >"$out"); then
        ok "k8s/$t: $(grep -c '^kind:' "$out") objects"
        rendered+=("$label=$out")
    else
        printf '%s\n' "$err" | sed 's/^/    /'
        fail "k8s/$t does not render"
    fi
done

# ---------------------------------------------------------------- 4. validate
step "validate: Kubernetes ${K8S_VERSIONS// /, } OpenAPI schemas (strict), KEDA CRD schema, TPS policy"
version_args=()
for v in $K8S_VERSIONS; do version_args+=(--kubernetes-version "$v"); done
if ((${#rendered[@]} > 0)); then
    if "$PY" k8s/check/validate.py "${version_args[@]}" --policy "${rendered[@]}"; then
        ok "every render valid"
    else
        fail "validation (see FAIL lines above)"
    fi
else
    fail "nothing rendered to validate"
fi

# ---------------------------------------------------------------- 5. compose
step "compose: docker-compose.yml"
if command -v docker-compose >/dev/null 2>&1; then
    compose=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=()
    fail "neither docker-compose nor docker compose is installed"
fi
if ((${#compose[@]} > 0)); then
    # An empty env file: a developer's .env must not decide the outcome.
    : >"$tmp/empty.env"
    clean_env=(env -u RABBITMQ_PASSWORD -u GRAFANA_ADMIN_PASSWORD)
    printf '$ RABBITMQ_PASSWORD=dummy GRAFANA_ADMIN_PASSWORD=dummy %s -f docker-compose.yml config -q\n' "${compose[*]}"
    if out=$("${clean_env[@]}" RABBITMQ_PASSWORD=check-k8s-dummy GRAFANA_ADMIN_PASSWORD=check-k8s-dummy \
        "${compose[@]}" --env-file "$tmp/empty.env" -f docker-compose.yml config -q 2>&1); then
        ok "docker-compose.yml is valid ($("${compose[@]}" version --short 2>/dev/null || echo "version unknown"))"
    else
        printf '%s\n' "$out" | sed 's/^/    /'
        fail "docker-compose.yml config"
    fi
    printf '$ %s -f docker-compose.yml config -q   # no passwords: must refuse\n' "${compose[*]}"
    if out=$("${clean_env[@]}" "${compose[@]}" --env-file "$tmp/empty.env" -f docker-compose.yml config -q 2>&1); then
        fail "docker-compose.yml accepted no RABBITMQ_PASSWORD: a default password would be committed"
    elif grep -q 'RABBITMQ_PASSWORD\|GRAFANA_ADMIN_PASSWORD' <<<"$out"; then
        ok "refused without passwords: $(grep -o 'set [A-Z_]*PASSWORD ([^)]*)' <<<"$out" | sed -n 1p)"
    else
        printf '%s\n' "$out" | sed 's/^/    /'
        fail "docker-compose.yml failed without passwords, but not for want of one"
    fi
fi

echo
if ((${#failures[@]} > 0)); then
    printf 'check-k8s: FAILED (%d):\n' "${#failures[@]}"
    printf '  - %s\n' "${failures[@]}"
    exit 1
fi
echo "check-k8s: OK (rendered: ${targets[*]}; Kubernetes $K8S_VERSIONS; compose)"
