#!/usr/bin/env bash
# deploy/images/smoke.sh: check the images deploy/images/build.sh made, each
# started with plain `docker run` on a private network of its own (no
# compose), the way docker-compose.yml runs them:
#
#   tps-nats:local        -js -sd /data -m 8222: "Server is ready", /healthz with
#                         JetStream from the host, busybox wget inside
#   tps-rabbitmq:local    RABBITMQ_DEFAULT_USER/PASS: "Server startup complete",
#                         rabbitmq-diagnostics ping, that user authenticates
#                         (and a wrong password does not), no guest user
#   tps-prometheus:local  deploy/prometheus mounted, compose's arguments: /-/ready
#                         from the host, compose's healthcheck command inside,
#                         the gateway and worker scraped
#   tps:local             tps-gateway (NATS + RabbitMQ fallback) and a fast
#                         worker: /health from the host, `tpsctl get` answers
#                         NOT_FOUND, a submitted signal SUCCEEDS, compose's
#                         healthcheck (tpsctl health) passes inside
#
# Everything it starts (containers with their anonymous volumes, the network)
# is named tps-smoke-<random> and removed at the end, also on failure.
# Ports are published on 127.0.0.1 only, on ports Docker picks.
#
#   bash deploy/images/smoke.sh        # after make images
# ok/fail always succeed, so `test && ok || fail` is an if-then-else here.
# shellcheck disable=SC2015
set -euo pipefail

CACHE=${TPS_IMAGES_DIR:-/var/tmp/tps-images}
# The host's tpsctl: the one build.sh put into the image's context.
TPSCTL=${TPSCTL:-$CACHE/ctx/tps/bin/tpsctl}
P=tps-smoke-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
NET=$P
PASS=$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
START=$SECONDS
CONTAINERS=()
FAILED=0

log() { printf 'smoke: %s\n' "$*" >&2; }
ok() { log "ok   $*"; }
fail() { log "FAIL $*"; FAILED=1; }

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local c
    if [[ $FAILED == 1 ]]; then
        for c in "${CONTAINERS[@]}"; do
            log "---- last log lines of $c"
            docker logs --tail 15 "$c" 2>&1 | sed 's/^/    /' >&2 || true
        done
    fi
    for c in "${CONTAINERS[@]}"; do docker rm -f -v "$c" >/dev/null 2>&1 || true; done
    docker network rm "$NET" >/dev/null 2>&1 || true
    log "removed ${#CONTAINERS[@]} containers and network $NET"
}
trap cleanup EXIT

for img in tps-nats:local tps-rabbitmq:local tps-prometheus:local tps:local; do
    docker image inspect "$img" >/dev/null 2>&1 || { log "$img is missing: run make images first"; exit 1; }
done

# run NAME [docker run args...]: a container on $NET, reachable as NAME.
run() {
    local name=$1
    shift
    CONTAINERS+=("$P-$name")
    docker run -d --name "$P-$name" --network "$NET" --network-alias "$name" "$@" >/dev/null
}
# hostport NAME PORT: the 127.0.0.1 port Docker published PORT of NAME on.
hostport() { docker port "$P-$1" "$2" | head -n1 | sed 's/.*://'; }
# until_ok SECONDS DESCRIPTION COMMAND...: retries COMMAND every second.
until_ok() {
    local limit=$1 what=$2 t=$SECONDS
    shift 2
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS - t >= limit)); then
            fail "$what (not within ${limit}s)"
            return 1
        fi
        sleep 1
    done
    ok "$what ($((SECONDS - t))s)"
}
# (grep reads all of it: with pipefail, grep -q's early exit would fail docker logs)
in_logs() { docker logs "$P-$1" 2>&1 | grep -- "$2" >/dev/null; }

docker network create "$NET" >/dev/null
log "network $NET"

# ---- NATS, RabbitMQ, Prometheus ----------------------------------------------
run nats -p 127.0.0.1::4222 -p 127.0.0.1::8222 tps-nats:local -js -sd /data -m 8222
run rabbitmq --hostname rabbitmq --memory 512m -p 127.0.0.1::5672 \
    -e RABBITMQ_DEFAULT_USER=tps -e RABBITMQ_DEFAULT_PASS="$PASS" tps-rabbitmq:local
run prometheus -p 127.0.0.1::9090 -v "$(cd "$(dirname "$0")/../.." && pwd)/deploy/prometheus:/etc/prometheus:ro" \
    tps-prometheus:local --config.file=/etc/prometheus/prometheus.yml --storage.tsdb.path=/prometheus \
    --storage.tsdb.retention.time=15d --web.enable-lifecycle

until_ok 30 "nats: 'Server is ready' in its log" in_logs nats "Server is ready"
NATS_MON=$(hostport nats 8222)
until_ok 10 "nats: GET /healthz?js-enabled-only=true from the host (127.0.0.1:$NATS_MON)" \
    curl -fsS "http://127.0.0.1:$NATS_MON/healthz?js-enabled-only=true"
until_ok 5 "nats: healthcheck inside (busybox wget)" \
    docker exec "$P-nats" wget -q -O /dev/null "http://127.0.0.1:8222/healthz?js-enabled-only=true"
[[ $(docker exec "$P-nats" id -u) == 10002 ]] && ok "nats: runs as uid 10002" || fail "nats: not uid 10002"

until_ok 120 "rabbitmq: 'Server startup complete' in its log" in_logs rabbitmq "Server startup complete"
until_ok 30 "rabbitmq: rabbitmq-diagnostics -q ping (compose's healthcheck)" \
    docker exec "$P-rabbitmq" rabbitmq-diagnostics -q ping
until_ok 10 "rabbitmq: the user from RABBITMQ_DEFAULT_USER/PASS authenticates" \
    docker exec "$P-rabbitmq" rabbitmqctl authenticate_user tps "$PASS"
if docker exec "$P-rabbitmq" rabbitmqctl authenticate_user tps wrong-password >/dev/null 2>&1; then
    fail "rabbitmq: a wrong password authenticates"
else
    ok "rabbitmq: a wrong password does not authenticate"
fi
users=$(docker exec "$P-rabbitmq" rabbitmqctl -q list_users 2>/dev/null | awk 'NR > 1 { print $1 }' | paste -sd ' ')
[[ $users == tps ]] && ok "rabbitmq: users: $users (no guest)" || fail "rabbitmq: users: $users"
[[ $(docker exec "$P-rabbitmq" id -un) == rabbitmq ]] && ok "rabbitmq: runs as user rabbitmq" || fail "rabbitmq: not user rabbitmq"
if in_logs rabbitmq "Memory high watermark set to .* of 512 MiB"; then
    ok "rabbitmq: memory high watermark computed from the 512m cgroup limit"
else
    fail "rabbitmq: memory watermark: $(docker logs "$P-rabbitmq" 2>&1 | grep 'Memory high watermark' | head -n1)"
fi
if in_logs rabbitmq $'\e\\['; then
    fail "rabbitmq: colour codes in its log"
fi

PROM=$(hostport prometheus 9090)
until_ok 30 "prometheus: GET /-/ready from the host (127.0.0.1:$PROM)" curl -fsS "http://127.0.0.1:$PROM/-/ready"
until_ok 5 "prometheus: compose's healthcheck command inside" docker exec "$P-prometheus" sh -c \
    'wget -q -O /dev/null http://127.0.0.1:9090/-/ready 2>/dev/null || curl -fsS -o /dev/null http://127.0.0.1:9090/-/ready'
rules=$(curl -fsS "http://127.0.0.1:$PROM/api/v1/rules" | python3 -c 'import json, sys
groups = json.load(sys.stdin)["data"]["groups"]
kinds = [r["type"] for g in groups for r in g["rules"]]
print(len(groups), "groups,", kinds.count("recording"), "recording rules,", kinds.count("alerting"), "alerts")') &&
    [[ $rules != "0 groups"* ]] && ok "prometheus: loaded deploy/prometheus/rules: $rules" || fail "prometheus: no rules loaded: $rules"

# ---- tps:local: the gateway and a fast worker ----------------------------------
TPS_ENV=(-e NATS_URL=nats://nats:4222 -e "RABBITMQ_URL=amqp://tps:$PASS@rabbitmq:5672/%2f"
    -e TPS_FALLBACK=rabbitmq -e TPS_METRICS_ADDR=0.0.0.0:9090 -e OTEL_EXPORTER_OTLP_ENDPOINT=)
run gateway -p 127.0.0.1::50051 -p 127.0.0.1::8080 "${TPS_ENV[@]}" \
    -e TPS_GRPC_ADDR=0.0.0.0:50051 -e TPS_HTTP_ADDR=0.0.0.0:8080 tps:local tps-gateway
run worker-fast "${TPS_ENV[@]}" -e TPS_GRPC_ADDR=0.0.0.0:50052 tps:local tps-worker --pool fast

GRPC=$(hostport gateway 50051)
HTTP=$(hostport gateway 8080)
until_ok 60 "gateway: GET /health from the host (127.0.0.1:$HTTP)" curl -fsS "http://127.0.0.1:$HTTP/health"
log "     /health: $(curl -sS "http://127.0.0.1:$HTTP/health")"
until_ok 30 "gateway: compose's healthcheck inside (tpsctl health, tps.v1.SignalService)" \
    docker exec "$P-gateway" tpsctl health --addr http://127.0.0.1:50051 --service tps.v1.SignalService
until_ok 30 "worker-fast: compose's healthcheck inside (tpsctl health, tps.v1.PoolService)" \
    docker exec "$P-worker-fast" tpsctl health --addr http://127.0.0.1:50052 --service tps.v1.PoolService
if [[ -x $TPSCTL ]]; then
    out=$("$TPSCTL" --gateway "http://127.0.0.1:$GRPC" get "$(cat /proc/sys/kernel/random/uuid)" 2>&1) && rc=0 || rc=$?
    if ((rc != 0)) && grep -qi 'not.found\|NotFound' <<<"$out"; then
        ok "gateway: tpsctl get <unknown id> from the host answers NOT_FOUND: $(head -n1 <<<"$out")"
    else
        fail "gateway: tpsctl get <unknown id>: rc=$rc: $out"
    fi
    out=$("$TPSCTL" --gateway "http://127.0.0.1:$GRPC" submit --type validate --payload '{"data":[1,2,3]}' --wait 2>&1) || true
    if grep -qi '"state":"succeeded"' <<<"$out"; then
        ok "gateway + worker-fast: a validate signal submitted from the host SUCCEEDED"
    else
        fail "gateway + worker-fast: submit --wait: $out"
    fi
else
    log "note: no host tpsctl at $TPSCTL: gRPC checks from the host skipped"
fi
if docker logs "$P-gateway" 2>&1 | grep -qi 'rabbitmq.*\(connected\|ready\)\|amqp.*connected'; then
    ok "gateway: connected to the RabbitMQ fallback as tps"
else
    log "note: the gateway's log does not say it connected to RabbitMQ (it may connect lazily)"
fi

# shellcheck disable=SC2317  # called through until_ok
scraped() {
    curl -fsS "http://127.0.0.1:$PROM/api/v1/targets?state=active" |
        python3 -c 'import json,sys; t=json.load(sys.stdin)["data"]["activeTargets"]; up={x["labels"]["job"] for x in t if x["health"]=="up"}; sys.exit(0 if {"gateway","worker-fast"} <= up else 1)'
}
until_ok 60 "prometheus: scrapes the gateway and worker-fast (up)" scraped

# ---- docker stop: SIGTERM to PID 1 stops each one cleanly, well within 30s ------
for name in worker-fast gateway prometheus rabbitmq nats; do
    t=$SECONDS
    docker stop -t 30 "$P-$name" >/dev/null
    code=$(docker inspect -f '{{.State.ExitCode}}' "$P-$name")
    if ((SECONDS - t < 25)) && [[ $code == 0 || $code == 143 ]]; then
        ok "$name: docker stop took $((SECONDS - t))s, exit code $code"
    else
        fail "$name: docker stop took $((SECONDS - t))s, exit code $code"
    fi
done

log "done in $((SECONDS - START))s"
exit "$FAILED"
