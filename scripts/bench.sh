#!/usr/bin/env bash
# bench.sh: the benchmark (`make bench`), in one go on this machine, against
# one private NATS server (JetStream, file storage, as the system uses it):
#
#   1. raw       tps-bench raw: JetStream publish-with-ack -> pull -> publish
#                result -> ack, no project code, closed model (CONCURRENCY
#                publishers); and tps-bench drain: a 100,000-message backlog
#                pulled and acked (the raw pull+ack rate)
#   2. bare      tps-bench bare: tonic unary -> JetStream publish -> pull ->
#                result publish -> ack, none of the project's code, driven by
#                the same client as the real system (tpsctl load)
#   3. real      the four services: closed-model saturation (CONCURRENCY in
#                flight), open model at 1000/s (fast pool, no simulated work:
#                VALIDATE) with RSS and CPU per service read from /proc, the
#                HTTP facade, a payload-size mix, a rate sweep for the latency
#                plot (bare too), a 100,000-signal backlog drain, and 1 -> 3
#                fast-pool worker replicas
#
# then writes OUT/report.md (the table, the ratios) and OUT/latency.svg (the
# plot) with scripts/bench_report.py. Every figure is in OUT/*.json, as
# tpsctl load --json and tps-bench --json printed it.
#
# Settings (environment):
#   BENCH_OUT          output directory        (.bench/<UTC timestamp>)
#   BENCH_DURATION     each saturation run     (20s)
#   BENCH_CONCURRENCY  closed-model in flight  (64)
#   BENCH_SIZE         raw/drain message bytes (the real system's WorkItem
#                      size for a VALIDATE signal, measured: 300)
#   BENCH_DRAIN        backlog size            (100000)
#   BENCH_STEP         sweep step duration     (10s)
#   BENCH_WORKERS      TPS_NUM_WORKERS of the real workers and the bare
#                      server's capacity (512: Little's law, ~5,000/s x
#                      ~30 ms in a worker under load needs ~150 handlers
#                      busy, and one replica at 128 refused 21% measured)
#   BENCH_ONLY         run only these phases (space-separated: raw bare real
#                      open http payload sweep drain scale)
#   NATS_SERVER        the nats-server binary (else ensure-nats.sh finds one)
#   CARGO_TARGET_DIR   respected by the build
set -euo pipefail
# $EPOCHREALTIME with a '.' whatever the locale.
export LC_ALL=C

# All of it in one function, read whole before it runs: editing this file
# during a run cannot change the run.
main() {

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${BENCH_OUT:-$ROOT/.bench/$STAMP}
DURATION=${BENCH_DURATION:-20s}
CONCURRENCY=${BENCH_CONCURRENCY:-64}
SIZE=${BENCH_SIZE:-300}
DRAIN=${BENCH_DRAIN:-100000}
STEP=${BENCH_STEP:-10s}
WORKERS=${BENCH_WORKERS:-512}
ONLY=${BENCH_ONLY:-raw bare real open http payload sweep drain scale}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release
TOKEN=bench-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')

log() { printf 'bench: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
wants() { [[ " $ONLY " == *" $1 "* ]]; }

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/tps-bench.XXXXXX)
PIDS=()

# Forgets a pid that has been stopped (so cleanup cannot signal a reused one).
forget_pid() {
    local pid=$1 i
    for i in "${!PIDS[@]}"; do [[ ${PIDS[$i]} == "$pid" ]] && unset 'PIDS[i]'; done
    return 0
}
# Stops what this script started, by pid (SIGTERM, then SIGKILL after 20 s).
stop_pid() {
    local pid=$1 i
    forget_pid "$pid"
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 200; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do stop_pid "$pid"; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits for a ports file (JSON written by a service once bound); prints it.
wait_ports() {
    local file=$1 pid=$2 i
    for ((i = 0; i < 300; i++)); do
        [[ -s $file ]] && { cat "$file"; return 0; }
        kill -0 "$pid" 2>/dev/null || die "process $pid exited before binding (see ${file%.ports}.log)"
        sleep 0.1
    done
    die "no $file after 30 s"
}
port_of() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

# --- build and NATS --------------------------------------------------------

log "building the release binaries (cargo build --release)"
cargo build --release -q -p tps-gateway -p tps-worker -p tps-aggregator -p tpsctl -p tps-bench
NATS_SERVER=${NATS_SERVER:-$(bash scripts/ensure-nats.sh)}
# The plot: gnuplot from Debian (without it the report has no plot).
if ! command -v gnuplot >/dev/null; then
    log "installing gnuplot-nox (Debian) for the plot"
    { apt-get install -y -q gnuplot-nox >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q gnuplot-nox >/dev/null 2>&1; }; } ||
        log "WARNING: gnuplot could not be installed: the report will have no plot"
fi

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "cpu: $(nproc) x $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | sed -n 1p)"
    echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "kernel: $(uname -r)"
    echo "nats-server: $("$NATS_SERVER" --version 2>&1 | sed -n 1p)"
    echo "rustc: $(rustc --version)"
    echo "settings: duration $DURATION, concurrency $CONCURRENCY, message size $SIZE, drain $DRAIN, step $STEP, workers $WORKERS"
} > "$OUT/machine.txt"

NATS_PORT=$(free_port)
NATS_MON=$(free_port)
NATS_URL=nats://127.0.0.1:$NATS_PORT
start_nats() {
    "$NATS_SERVER" -js -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON" -sd "$WORK/nats" \
        >"$WORK/nats.log" 2>&1 &
    NATS_PID=$!
    PIDS+=("$NATS_PID")
    local i
    for ((i = 0; i < 100; i++)); do
        curl -fsS "http://127.0.0.1:$NATS_MON/healthz?js-enabled-only=true" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "NATS did not start (see $WORK/nats.log)"
}
# A fresh server (empty store) for each phase, so no phase pays for another's data.
restart_nats() {
    stop_pid "$NATS_PID"
    rm -rf "$WORK/nats"
    start_nats
}
start_nats
log "NATS $NATS_URL (monitoring :$NATS_MON); output in $OUT"

TPSCTL=$BIN/tpsctl
load() { "$TPSCTL" "$@"; }
# tpsctl load exits 3 when an accepted signal was not terminal in time: the
# run's JSON says how many (not_terminal) and the report shows it; go on.
unsettled() { log "WARNING: $1: not every accepted signal was terminal in time (see $OUT/$1.json)"; }

# --- 1. raw ----------------------------------------------------------------

if wants raw; then
    log "1. raw JetStream pipeline: $CONCURRENCY publishers, $DURATION, $SIZE bytes"
    "$BIN/tps-bench" raw --nats "$NATS_URL" --duration "$DURATION" \
        --concurrency "$CONCURRENCY" --worker-concurrency "$WORKERS" --size "$SIZE" --json \
        > "$OUT/raw.json"
    restart_nats
    log "1. raw drain: $DRAIN messages pulled and acked"
    "$BIN/tps-bench" drain --nats "$NATS_URL" --messages "$DRAIN" --size "$SIZE" --process \
        --worker-concurrency "$WORKERS" --json \
        > "$OUT/raw-drain.json"
    restart_nats
fi

# --- 2. bare ---------------------------------------------------------------

if wants bare; then
    log "2. bare tonic -> JetStream baseline"
    "$BIN/tps-bench" bare --nats "$NATS_URL" --listen 127.0.0.1:0 --capacity "$WORKERS" \
        --ports-file "$WORK/bare.ports" >"$WORK/bare.log" 2>&1 &
    BARE_PID=$!
    PIDS+=("$BARE_PID")
    BARE=http://127.0.0.1:$(wait_ports "$WORK/bare.ports" "$BARE_PID" | port_of grpc | sed 's/.*://')
    load --gateway "$BARE" load --concurrency "$CONCURRENCY" --duration "$DURATION" \
        --type validate --json --settle 120s > "$OUT/bare-closed.json" || unsettled bare-closed
    if wants sweep; then
        log "2. bare rate sweep"
        load --gateway "$BARE" load --shape ramp --start-rate 2500 --step-rate 2500 \
            --step-duration "$STEP" --max-p99 100ms --max-rate 40000 --type validate --json \
            > "$OUT/bare-sweep.json" || true
    fi
    stop_pid "$BARE_PID"
    restart_nats
fi

# --- 3. the real system ----------------------------------------------------

SERVICE_PIDS=()
# start_service NAME BIN [ARGS...]: one service on free ports; env from the caller.
start_service() {
    local name=$1 bin=$2
    shift 2
    rm -f "$WORK/$name.ports"
    env NATS_URL="$NATS_URL" TPS_FALLBACK=none TPS_ADMIN_TOKEN="$TOKEN" \
        TPS_NUM_WORKERS="$WORKERS" TPS_LOG_FORMAT=json \
        TPS_GRPC_ADDR=127.0.0.1:0 TPS_HTTP_ADDR=127.0.0.1:0 TPS_METRICS_ADDR=127.0.0.1:0 \
        TPS_BOARD_ADDR=127.0.0.1:0 TPS_PORTS_FILE="$WORK/$name.ports" \
        "$BIN/$bin" "$@" >"$WORK/$name.log" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    SERVICE_PIDS+=("$name:$pid")
    wait_ports "$WORK/$name.ports" "$pid" >/dev/null
}
# start_system [FAST_REPLICAS]: gateway, N fast workers, a slow worker, the aggregator.
start_system() {
    local replicas=${1:-1} i
    SERVICE_PIDS=()
    start_service gateway tps-gateway
    for ((i = 1; i <= replicas; i++)); do
        start_service "worker-fast-$i" tps-worker --pool fast
    done
    start_service worker-slow tps-worker --pool slow
    start_service aggregator tps-aggregator
    GATEWAY=http://$(port_of grpc < "$WORK/gateway.ports")
    HTTP=http://$(port_of http < "$WORK/gateway.ports")
    WORKER_FAST=http://$(port_of grpc < "$WORK/worker-fast-1.ports")
}
stop_system() {
    local entry
    for entry in "${SERVICE_PIDS[@]}"; do stop_pid "${entry#*:}"; done
    SERVICE_PIDS=()
}

# /proc/PID/stat utime + stime, in clock ticks.
cpu_ticks() { local s; s=$(cat "/proc/$1/stat"); s=${s##*) }; set -- $s; echo $(( ${12} + ${13} )); }
# Sets RSS to VmRSS of pid $1 in KiB (0 if it is gone), without a fork.
rss_sample() {
    local key value rest
    RSS=0
    [[ -r /proc/$1/status ]] || return 0
    while read -r key value rest; do
        if [[ $key == VmRSS: ]]; then RSS=$value; return 0; fi
    done < "/proc/$1/status" 2>/dev/null || true
}
seconds() { python3 -c 'import re,sys; m=re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?",sys.argv[1]); v=float(m[1]); print({"ms":v/1000,"m":v*60}.get(m[2],v))' "$1"; }

# The NATS server's message counters: "in_msgs out_msgs" (its /varz).
varz() {
    curl -fsS "http://127.0.0.1:$NATS_MON/varz" |
        python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["in_msgs"], v["out_msgs"])'
}

# Sets NOW_US to microseconds on the wall clock, in bash alone (no fork:
# the sampling loop calls it every 0.25 s).
now_us() { local t=$EPOCHREALTIME; NOW_US=$(( ${t%.*} * 1000000 + 10#${t#*.} )); }

# measure RESOURCES OUTPUT WINDOW CMD...: runs CMD (stdout to OUTPUT) while
# sampling every service's RSS every 0.5 s (the peak over the whole run) and
# its CPU over the first WINDOW seconds (the load, not the settling after
# it; the window actually measured is written), and the NATS server's
# messages in and out over the same window; writes RESOURCES as JSON:
# {"window_s", "nats_msgs": {"in", "out"}, "services": {name: {peak_rss_kib,
# cpu_s, cpu_pct}}}. A CMD that exits 3 (not every signal terminal) is
# reported and the bench goes on.
measure() {
    local resources=$1 output=$2 window=$3
    shift 3
    local entry name pid r tck
    tck=$(getconf CLK_TCK)
    declare -A t0 t1 peak
    local all=("${SERVICE_PIDS[@]}" "nats:$NATS_PID")
    local v0 v1 w0 w1 window_us
    window_us=$(awk -v w="$window" 'BEGIN {printf "%d", w * 1000000}')
    v0=$(varz)
    for entry in "${all[@]}"; do
        name=${entry%%:*}; pid=${entry#*:}
        t0[$name]=$(cpu_ticks "$pid"); peak[$name]=0
    done
    now_us; w0=$NOW_US
    "$@" > "$output" &
    local cmd=$! windowed=0
    PIDS+=("$cmd")
    # The sampling loop forks nothing but its sleep: with awk and command
    # substitutions per sample it took ~4% of the machine's CPU away from
    # the system it measured (perf, 2026-11-28).
    while kill -0 "$cmd" 2>/dev/null; do
        for entry in "${all[@]}"; do
            name=${entry%%:*}; pid=${entry#*:}
            rss_sample "$pid"
            (( RSS > peak[$name] )) && peak[$name]=$RSS
        done
        # The window closes at the first sample past it (within 0.25 s).
        now_us
        if [[ $windowed == 0 ]] && (( NOW_US - w0 >= window_us )); then
            for entry in "${all[@]}"; do
                name=${entry%%:*}; pid=${entry#*:}
                t1[$name]=$(cpu_ticks "$pid")
            done
            now_us; w1=$NOW_US
            v1=$(varz)
            windowed=1
        fi
        sleep 0.25
    done
    local rc=0
    wait "$cmd" || rc=$?
    forget_pid "$cmd"
    if [[ $windowed == 0 ]]; then
        for entry in "${all[@]}"; do name=${entry%%:*}; t1[$name]=$(cpu_ticks "${entry#*:}"); done
        now_us; w1=$NOW_US
        v1=$(varz)
    fi
    local secs
    secs=$(awk -v u=$((w1 - w0)) 'BEGIN {printf "%.3f", u / 1000000}')
    {
        printf '{"window_s": %s, "nats_msgs": {"in": %s, "out": %s}, "services": {' "$secs" \
            $(( ${v1% *} - ${v0% *} )) $(( ${v1#* } - ${v0#* } ))
        local sep=""
        for entry in "${all[@]}"; do
            name=${entry%%:*}
            printf '%s"%s": {"peak_rss_kib": %s, "cpu_s": %s, "cpu_pct": %s}' "$sep" "$name" "${peak[$name]}" \
                "$(awk -v u=$(( t1[$name] - t0[$name] )) -v t="$tck" 'BEGIN {printf "%.2f", u / t}')" \
                "$(awk -v u=$(( t1[$name] - t0[$name] )) -v t="$tck" -v w="$secs" 'BEGIN {printf "%.1f", 100 * u / t / w}')"
            sep=", "
        done
        echo "}}"
    } > "$resources"
    [[ $rc == 0 ]] || unsettled "$(basename "$output" .json)"
    [[ $rc == 0 || $rc == 3 ]]
}

DSECS=$(seconds "$DURATION")

# saturate NAME FAST_REPLICAS: the real system under the closed model
# (VALIDATE), with its resources measured, into OUT/NAME.json and
# OUT/NAME-resources.json; then a fresh NATS.
saturate() {
    start_system "$2"
    measure "$OUT/$1-resources.json" "$OUT/$1.json" "$DSECS" \
        load --gateway "$GATEWAY" load --concurrency "$CONCURRENCY" --duration "$DURATION" \
        --type validate --json --settle 120s
    stop_system
    restart_nats
}

if wants real; then
    log "3. real system: closed model, $CONCURRENCY in flight, $DURATION (VALIDATE: fast pool, no simulated work)"
    saturate real-closed 1
fi

if wants open; then
    start_system 1
    log "3. real system: open model, 1000/s for $DURATION (VALIDATE), RSS and CPU per service"
    measure "$OUT/real-open1000-resources.json" "$OUT/real-open1000.json" "$DSECS" \
        load --gateway "$GATEWAY" load --rate 1000 --duration "$DURATION" \
        --type validate --json --settle 120s
    stop_system
    restart_nats
fi

if wants http; then
    start_system 1
    log "3. real system over the HTTP facade: closed model, $CONCURRENCY in flight, $DURATION"
    load load --http "$HTTP" --concurrency "$CONCURRENCY" --duration "$DURATION" \
        --type validate --json --settle 120s > "$OUT/real-http.json" || unsettled real-http
    stop_system
    restart_nats
fi

if wants payload; then
    start_system 1
    log "3. real system, payload mix 0/1 KiB/16 KiB: closed model, $CONCURRENCY in flight, $DURATION"
    load --gateway "$GATEWAY" load --concurrency "$CONCURRENCY" --duration "$DURATION" \
        --type validate --payload-bytes 0,1024,16384 --json --settle 120s \
        > "$OUT/real-payload.json" || unsettled real-payload
    stop_system
    restart_nats
fi

if wants sweep; then
    start_system 1
    log "3. real system rate sweep (open model, +500/s every $STEP until accept p99 > 100 ms or >1% refused)"
    load --gateway "$GATEWAY" load --shape ramp --start-rate 500 --step-rate 500 \
        --step-duration "$STEP" --max-p99 100ms --max-rate 20000 --type validate --json \
        --settle 120s > "$OUT/real-sweep.json" || true
    stop_system
    restart_nats
fi

if wants drain; then
    # The backlog must fit: a Kanban buffer above it, for this phase only.
    # Filled at DRAIN_RATE (below what the gateway alone accepts, so no
    # submit times out); the drain counts what was actually queued.
    DRAIN_RATE=${BENCH_DRAIN_RATE:-4000}
    log "3. real system: a $DRAIN-signal backlog on the paused fast pool (filled at $DRAIN_RATE/s), then resumed"
    TPS_KANBAN_BUFFER=$((DRAIN * 2)) start_system 1
    load --gateway "$GATEWAY" pool --worker "$WORKER_FAST" --admin-token "$TOKEN" pause >/dev/null
    load --gateway "$GATEWAY" load --rate "$DRAIN_RATE" \
        --duration "$(awk -v n="$DRAIN" -v r="$DRAIN_RATE" 'BEGIN {print n / r}')s" --type validate --json \
        --settle 600s > "$OUT/real-drain.json" &
    loader=$!
    PIDS+=("$loader")
    # Wait until the work stream holds the whole backlog, or stops growing
    # for 5 s (a refused submit), or the loader is gone; print its depth.
    backlog=$(python3 - "$NATS_MON" "$DRAIN" "$loader" <<'PY'
import json, os, sys, time, urllib.request
mon, want, loader = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def depth():
    js = json.load(urllib.request.urlopen(f"http://127.0.0.1:{mon}/jsz?streams=true"))
    return sum(s["state"]["messages"] for a in js.get("account_details", [])
               for s in a.get("stream_detail", []) if s["name"].startswith("TPS_WORK"))
def alive():
    try:
        os.kill(loader, 0)
        return True
    except OSError:
        return False
last, since = -1, time.time()
while True:
    d = depth()
    if d >= want or not alive() or time.time() - since > 5:
        break
    if d != last:
        last, since = d, time.time()
    time.sleep(0.1)
print(d)
PY
)
    now_us; resumed=$NOW_US
    load --gateway "$GATEWAY" pool --worker "$WORKER_FAST" --admin-token "$TOKEN" resume >/dev/null
    wait "$loader" || unsettled real-drain
    forget_pid "$loader"
    echo "{\"resumed_at\": $(awk -v u="$resumed" 'BEGIN {printf "%.6f", u / 1000000}'), \"backlog\": $backlog}" \
        > "$OUT/real-drain-resume.json"
    stop_system
    restart_nats
fi

if wants scale; then
    for n in 1 2 3; do
        log "3. real system with $n fast-pool worker replica(s): closed model, $CONCURRENCY in flight, $DURATION"
        saturate "real-scale-$n" "$n"
    done
fi

log "writing the report"
python3 scripts/bench_report.py "$OUT"
log "done: $OUT/report.md, $OUT/latency.svg"
}

main "$@"
