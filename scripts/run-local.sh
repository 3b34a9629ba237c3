#!/usr/bin/env bash
# run-local.sh: the whole TPS flow on this machine, without Docker (`make run-local`).
#
#   scripts/run-local.sh          start NATS, RabbitMQ, the four services and
#                                 Prometheus, wait for Ctrl-C
#   scripts/run-local.sh stop     stop a run started in the background (`... &`)
#
# What it does: finds or installs nats-server (scripts/ensure-nats.sh) and
# RabbitMQ (scripts/ensure-rabbitmq.sh), builds the binaries (cargo build
# --release --bins), starts a private JetStream server and, at the same time, a
# private RabbitMQ node (the fallback broker: the gateway publishes there while
# NATS is down), waits until both accept connections, then starts tps-gateway,
# tps-worker --pool fast, tps-worker --pool slow and tps-aggregator, waits until
# each has written its ports file (the addresses it actually bound), then
# starts a private Prometheus (scripts/ensure-prometheus.sh) that scrapes them
# and evaluates the repo's recording and alerting rules, prints the addresses,
# then waits. Ctrl-C (or SIGTERM, or `stop`) sends SIGTERM to Prometheus, then
# to the services, then to RabbitMQ (its launcher stops the VM gracefully),
# then to NATS, then to RabbitMQ's epmd, and waits for each to exit.
# Once everything is up it supervises: a process that dies (a crash, or
# `make chaos-crash-worker`) is restarted with the same settings, as a
# container's restart policy would; one held down on purpose (a file
# <name>.down in the run directory: nats.down written by `tpsctl chaos
# queue-down`, rabbitmq.down by `tpsctl chaos rabbit-down`) is left down until
# that file is removed. A process that keeps dying (more than 10 restarts)
# stops the run. During start-up any death stops the run.
#
# RabbitMQ is optional: if it cannot be installed or started (no root to
# install it, or the node is not ready within RABBITMQ_START_TIMEOUT), a
# warning says so and the run goes on without it, with TPS_FALLBACK=none.
# Exporting TPS_FALLBACK=none yourself skips it too. The node is private, made
# as tests/src/rabbit.rs makes one: Debian's plain launcher
# (/usr/lib/rabbitmq/bin/rabbitmq-server, never the /usr/sbin wrapper that
# su's to the rabbitmq user), node tps-local@localhost on 127.0.0.1 only, every
# path (data, logs, config, HOME with its own .erlang.cookie) in the run
# directory, and an epmd of its own on a free port (the shared one on 4369
# would outlive the run). Talk to it with rabbitmqctl as the printed table shows.
#
# Prometheus is optional as well, and only watches: if there is no prometheus
# binary (ensure-prometheus.sh installs Debian's `prometheus` package, which
# needs root), or promtool refuses the generated config, or it is not ready
# within PROMETHEUS_START_TIMEOUT, a warning says so and the run goes on
# without it (the services' /metrics still answer). PROMETHEUS_SERVER=none
# skips it. Its config, .run/prometheus/prometheus.yml, is generated each run
# from the same rules and job names as deploy/prometheus/prometheus.yml (the
# compose stack's): rule_files is the repo's deploy/prometheus/rules/*.yml (an
# absolute path, so rules you edit are read in place: reload with
# `kill -HUP <its pid>` or `curl -X POST <its address>/-/reload`), the jobs
# gateway, worker-fast, worker-slow and aggregator (the names the alerts
# match, e.g. up{job="gateway"}) scrape the metrics addresses the services
# reported in their ports files, and the job prometheus scrapes itself. It
# scrapes and evaluates every 5s rather than compose's 15s, so a local run
# shows changes quickly (the tps.recording group keeps its own 15s). Should a
# service bound to port 0 come back from a restart on another port, the
# config is rewritten and Prometheus reloaded (SIGHUP).
#
# Everything it writes goes to the run directory (default .run/, gitignored):
#   pids                "name pid executable" per line (the supervisor, nats,
#                       epmd, rabbitmq, the services and prometheus)
#   nats.log  nats.out  nats-store/   the NATS server's log, its stdout/stderr
#                       (start-up errors), and JetStream data (kept across runs;
#                       `make clean` removes it)
#   rabbitmq.log  rabbitmq.out  epmd.log   RabbitMQ's log, its launcher's
#                       stdout/stderr, and its epmd's output
#   rabbitmq/           the node's Mnesia data (durable queues and messages,
#                       kept across restarts and runs), HOME (.erlang.cookie,
#                       fresh each run), enabled_plugins, rabbitmq.conf (empty)
#   <service>.log       each service's log
#   <service>.ports     JSON written by the service once bound,
#                       e.g. {"grpc":"127.0.0.1:50051","http":"127.0.0.1:8080","metrics":"127.0.0.1:9101"}
#   rabbitmq.ports      RabbitMQ's addresses, in the same form: {"amqp":...,"dist":...,"epmd":...}
#   prometheus.log      Prometheus' log
#   prometheus/         prometheus.yml (generated, checked with promtool check
#                       config) and data/, its TSDB (fresh each run)
#
# Settings (environment; an address of 127.0.0.1:0 lets the OS pick a port, and
# the table printed at the end shows what was bound):
#   RUN_DIR                   run directory                 (.run under the repo)
#   NATS_PORT                 NATS client port              (4222; a free port is
#                                                            picked if it is busy)
#   RABBITMQ_PORT             RabbitMQ AMQP port            (5672; a free port is
#                                                            picked if it is busy;
#                                                            its Erlang distribution
#                                                            and epmd ports are always
#                                                            picked free)
#   GATEWAY_GRPC_ADDR         gateway gRPC                  (127.0.0.1:50051)
#   GATEWAY_HTTP_ADDR         gateway HTTP/JSON facade      (127.0.0.1:8080)
#   GATEWAY_METRICS_ADDR      gateway /metrics              (127.0.0.1:9101)
#   WORKER_FAST_GRPC_ADDR     fast-pool worker gRPC         (127.0.0.1:50052)
#   WORKER_FAST_METRICS_ADDR  fast-pool worker /metrics     (127.0.0.1:9102)
#   WORKER_SLOW_GRPC_ADDR     slow-pool worker gRPC         (127.0.0.1:50054)
#   WORKER_SLOW_METRICS_ADDR  slow-pool worker /metrics     (127.0.0.1:9103)
#   AGGREGATOR_GRPC_ADDR      aggregator gRPC               (127.0.0.1:50053)
#   AGGREGATOR_METRICS_ADDR   aggregator /metrics           (127.0.0.1:9104)
#   AGGREGATOR_BOARD_ADDR     the Andon web board           (127.0.0.1:8081)
#   BIN_DIR                   use the binaries in this directory and skip the build
#   START_TIMEOUT             seconds to wait for the services to bind (60)
#   RABBITMQ_START_TIMEOUT    seconds to wait for RabbitMQ to be ready (60)
#   PROMETHEUS_PORT           Prometheus' HTTP port, on 127.0.0.1 (9091, as in
#                             compose; a free port is picked if it is busy)
#   PROMETHEUS_SERVER         the prometheus binary to use (else the one beside
#                             the promtool ensure-prometheus.sh finds or
#                             installs); `none`: no Prometheus
#   PROMETHEUS_START_TIMEOUT  seconds to wait for Prometheus to be ready (30)
#   STOP_TIMEOUT              seconds each process gets after SIGTERM before SIGKILL
#                             (40: a worker waits up to TPS_SHUTDOWN_GRACE=30s for in-flight work)
#   NATS_SERVER               the nats-server binary to use (else ensure-nats.sh finds one)
#   RABBITMQ_SERVER           the rabbitmq-server launcher to use (else
#                             ensure-rabbitmq.sh finds or installs one)
#   CARGO_TARGET_DIR          respected by the build
#
# Every TPS_* variable you export (TPS_NUM_WORKERS, TPS_KANBAN_BUFFER,
# TPS_CB_THRESHOLD, TPS_LOG, ...) reaches all four services unchanged, except
# the per-process ones this script sets: TPS_GRPC_ADDR, TPS_HTTP_ADDR,
# TPS_METRICS_ADDR and TPS_PORTS_FILE. TPS_LOG_FORMAT defaults to text here.
# The services also get NATS_URL and RABBITMQ_URL (the private servers') and
# TPS_FALLBACK=rabbitmq, or TPS_FALLBACK=none when RabbitMQ is not running.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

RUN_DIR=${RUN_DIR:-$ROOT/.run}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)
PIDS_FILE=$RUN_DIR/pids
START_TIMEOUT=${START_TIMEOUT:-60}
STOP_TIMEOUT=${STOP_TIMEOUT:-40}

SERVICES=(gateway worker-fast worker-slow aggregator)

log() { printf 'run-local: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- process helpers (by pid only) ----------------------------------------

# True while pid is a live (not zombie) process.
is_running() {
    local pid=$1 stat
    [[ -r /proc/$pid/stat ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat%% *} != Z ]]
}

# True while pid is live and still the program we started (guards against pid reuse).
is_ours() {
    local pid=$1 exe=$2
    is_running "$pid" || return 1
    { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$exe"
}

# SIGTERM the given "name pid exe" records, wait up to STOP_TIMEOUT, then SIGKILL.
stop_records() {
    local rec name pid exe deadline
    local -a live=()
    for rec in "$@"; do
        read -r name pid exe <<<"$rec"
        if is_ours "$pid" "$exe"; then
            log "stopping $name (pid $pid)"
            kill -TERM "$pid" 2>/dev/null || true
            live+=("$rec")
        fi
    done
    deadline=$((SECONDS + STOP_TIMEOUT))
    for rec in "${live[@]}"; do
        read -r name pid exe <<<"$rec"
        while is_running "$pid" && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if is_running "$pid"; then
            log "$name (pid $pid) still running ${STOP_TIMEOUT}s after SIGTERM: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true # reaps it when it is our child
    done
}

records_named() { # prints the pids-file records whose name matches one of the arguments
    local name pid exe want
    [[ -f $PIDS_FILE ]] || return 0
    while read -r name pid exe; do
        for want in "$@"; do
            [[ $name == "$want" ]] && printf '%s %s %s\n' "$name" "$pid" "$exe"
        done
    done <"$PIDS_FILE"
}

# The start time of a live pid (field 22 of /proc/<pid>/stat), or nothing.
proc_start() {
    local stat=
    read -r stat 2>/dev/null <"/proc/$1/stat" || [[ -n $stat ]] || return 0
    stat=${stat##*) }
    local -a f
    read -ra f <<<"$stat"
    printf '%s\n' "${f[19]:-}"
}

# Prints "pid starttime" for every live descendant of pid $1, parents first.
descendants() {
    local root=$1 f stat pid ppid
    local -A kids=()
    for f in /proc/[0-9]*/stat; do
        stat=
        read -r stat 2>/dev/null <"$f" || [[ -n $stat ]] || continue
        pid=${stat%% *}
        stat=${stat##*) }
        read -r _ ppid _ <<<"$stat"
        kids[$ppid]+="$pid "
    done
    local -a queue=("$root")
    local i=0 parent child
    while ((i < ${#queue[@]})); do
        parent=${queue[i]}
        i=$((i + 1))
        for child in ${kids[$parent]:-}; do
            printf '%s %s\n' "$child" "$(proc_start "$child")"
            queue+=("$child")
        done
    done
}

# True while "pid starttime" is still that very process.
same_proc() {
    local pid=$1 start=$2
    is_running "$pid" && [[ $(proc_start "$pid") == "$start" ]]
}

# Stops RabbitMQ ("rabbitmq pid exe" records, the pid being its launcher).
# SIGTERM to the launcher: it traps it, stops the VM gracefully and waits for
# it. Should it not exit within STOP_TIMEOUT: SIGKILL to the VM and its
# helpers (the launcher then exits by itself), and to the launcher last
# (killing it first would orphan the VM). Then no process of the node is left.
stop_rabbitmq_records() {
    local rec name pid exe deadline p st
    for rec in "$@"; do
        read -r name pid exe <<<"$rec"
        is_ours "$pid" "$exe" || continue
        local -a family=()
        mapfile -t family < <(descendants "$pid")
        log "stopping $name (pid $pid; the launcher stops the Erlang VM gracefully)"
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$((SECONDS + STOP_TIMEOUT))
        while is_running "$pid" && ((SECONDS < deadline)); do
            sleep 0.2
        done
        if is_running "$pid"; then
            log "$name (pid $pid) still running ${STOP_TIMEOUT}s after SIGTERM: SIGKILL to its VM"
            mapfile -t family < <(descendants "$pid")
            for p in "${family[@]}"; do
                read -r p st <<<"$p"
                same_proc "$p" "$st" && kill -KILL "$p" 2>/dev/null || true
            done
            deadline=$((SECONDS + 10))
            while is_running "$pid" && ((SECONDS < deadline)); do
                sleep 0.2
            done
            is_running "$pid" && kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true # reaps it when it is our child
        # The VM's helpers (erl_child_setup, inet_gethost, ...) leave with
        # the VM; stragglers are killed.
        deadline=$((SECONDS + 10))
        for p in "${family[@]}"; do
            read -r p st <<<"$p"
            while same_proc "$p" "$st" && ((SECONDS < deadline)); do
                sleep 0.2
            done
            if same_proc "$p" "$st"; then
                log "$name: pid $p ($(cat "/proc/$p/comm" 2>/dev/null)) left behind: SIGKILL"
                kill -KILL "$p" 2>/dev/null || true
            fi
        done
    done
}

# In order: Prometheus (first, so it records no outage of ours), the
# services, RabbitMQ, NATS, then RabbitMQ's epmd.
stop_all_recorded() {
    local -a prom=() svc=() rabbit=() nats=() epmd=()
    mapfile -t prom < <(records_named prometheus)
    mapfile -t svc < <(records_named "${SERVICES[@]}")
    mapfile -t rabbit < <(records_named rabbitmq)
    mapfile -t nats < <(records_named nats)
    mapfile -t epmd < <(records_named epmd)
    ((${#prom[@]})) && stop_records "${prom[@]}"
    ((${#svc[@]})) && stop_records "${svc[@]}"
    ((${#rabbit[@]})) && stop_rabbitmq_records "${rabbit[@]}"
    ((${#nats[@]})) && stop_records "${nats[@]}"
    ((${#epmd[@]})) && stop_records "${epmd[@]}"
    return 0
}

# --- `stop` ---------------------------------------------------------------

if [[ ${1:-} == stop ]]; then
    [[ -f $PIDS_FILE ]] || { log "nothing to stop: no $PIDS_FILE"; exit 0; }
    mapfile -t sup < <(records_named supervisor)
    if ((${#sup[@]})); then
        read -r _ spid sexe <<<"${sup[0]}"
        if is_ours "$spid" "$sexe"; then
            # The supervisor stops its children in order and waits for them.
            log "asking the run-local supervisor (pid $spid) to stop"
            kill -TERM "$spid" 2>/dev/null || true
            deadline=$((SECONDS + STOP_TIMEOUT * 2 + 5))
            while is_running "$spid" && ((SECONDS < deadline)); do sleep 0.2; done
        fi
    fi
    # Whatever is left (the supervisor was killed, or did not finish): by pid.
    stop_all_recorded
    rm -f "$PIDS_FILE"
    log "stopped"
    exit 0
elif [[ -n ${1:-} && ${1:-} != start ]]; then
    die "usage: $0 [start|stop]"
fi

# --- start ----------------------------------------------------------------

command -v python3 >/dev/null 2>&1 || die "python3 is needed (port checks, ports files)"

if [[ -f $PIDS_FILE ]]; then
    while read -r name pid exe; do
        if is_ours "$pid" "$exe"; then
            die "already running ($name is pid $pid); stop it with: scripts/run-local.sh stop"
        fi
    done <"$PIDS_FILE"
    rm -f "$PIDS_FILE"
fi

# port_free HOST:PORT: true if a listener could bind there now (port 0 always is).
port_free() {
    local addr=$1 host port
    host=${addr%:*}
    port=${addr##*:}
    host=${host#[}
    host=${host%]}
    [[ $port == 0 ]] && return 0
    python3 - "$host" "$port" <<'PY' 2>/dev/null
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.close()
PY
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# free_ports N [PORT...]: N distinct free loopback ports (held together while
# picked), none of them one of the given ports; printed on one line.
free_ports() {
    python3 - "$@" <<'PY'
import socket, sys
n, avoid = int(sys.argv[1]), set(sys.argv[2:])
held, ports = [], []
while len(ports) < n:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    held.append(s)
    port = str(s.getsockname()[1])
    if port not in avoid:
        ports.append(port)
print(" ".join(ports))
for s in held:
    s.close()
PY
}

GATEWAY_GRPC_ADDR=${GATEWAY_GRPC_ADDR:-127.0.0.1:50051}
GATEWAY_HTTP_ADDR=${GATEWAY_HTTP_ADDR:-127.0.0.1:8080}
GATEWAY_METRICS_ADDR=${GATEWAY_METRICS_ADDR:-127.0.0.1:9101}
WORKER_FAST_GRPC_ADDR=${WORKER_FAST_GRPC_ADDR:-127.0.0.1:50052}
WORKER_FAST_METRICS_ADDR=${WORKER_FAST_METRICS_ADDR:-127.0.0.1:9102}
WORKER_SLOW_GRPC_ADDR=${WORKER_SLOW_GRPC_ADDR:-127.0.0.1:50054}
WORKER_SLOW_METRICS_ADDR=${WORKER_SLOW_METRICS_ADDR:-127.0.0.1:9103}
AGGREGATOR_GRPC_ADDR=${AGGREGATOR_GRPC_ADDR:-127.0.0.1:50053}
AGGREGATOR_METRICS_ADDR=${AGGREGATOR_METRICS_ADDR:-127.0.0.1:9104}
AGGREGATOR_BOARD_ADDR=${AGGREGATOR_BOARD_ADDR:-127.0.0.1:8081}

# The binaries. Built before NATS starts so a long compile holds no server.
if [[ -n ${BIN_DIR:-} ]]; then
    BIN_DIR=$(cd "$BIN_DIR" && pwd)
    log "using prebuilt binaries in $BIN_DIR (BIN_DIR set: no build)"
else
    log "cargo build --release --bins"
    cargo build --release --bins >&2
    target_dir=$(cargo metadata --no-deps --format-version 1 2>/dev/null |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null) ||
        target_dir=${CARGO_TARGET_DIR:-$ROOT/target}
    BIN_DIR=$target_dir/release
fi
for b in tps-gateway tps-worker tps-aggregator; do
    [[ -x $BIN_DIR/$b ]] || die "$BIN_DIR/$b not found: is its crate a member of the workspace and does it build?"
done

# Checked after the build, which can take minutes: refuse early and clearly
# rather than let a service die on "address in use".
for var in GATEWAY_GRPC_ADDR GATEWAY_HTTP_ADDR GATEWAY_METRICS_ADDR \
    WORKER_FAST_GRPC_ADDR WORKER_FAST_METRICS_ADDR \
    WORKER_SLOW_GRPC_ADDR WORKER_SLOW_METRICS_ADDR \
    AGGREGATOR_GRPC_ADDR AGGREGATOR_METRICS_ADDR AGGREGATOR_BOARD_ADDR; do
    port_free "${!var}" || die "$var=${!var} is in use (or not bindable); set $var to another address, e.g. 127.0.0.1:0"
done

NATS_SERVER=$(bash "$ROOT/scripts/ensure-nats.sh")

# RabbitMQ is optional: without it the run goes on with TPS_FALLBACK=none.
RABBITMQ_LAUNCHER=
rabbit_off() {
    log "WARNING: $*"
    log "WARNING: running WITHOUT RabbitMQ (TPS_FALLBACK=none): the gateway cannot fail over while NATS is down"
    RABBITMQ_LAUNCHER=
}
if [[ ${TPS_FALLBACK:-} == none ]]; then
    log "TPS_FALLBACK=none: RabbitMQ (the fallback broker) is not started"
elif ! RABBITMQ_LAUNCHER=$(bash "$ROOT/scripts/ensure-rabbitmq.sh"); then
    rabbit_off "RabbitMQ is not available (scripts/ensure-rabbitmq.sh failed; see above)"
elif ! EPMD=$(command -v epmd || ls /usr/lib/erlang/bin/epmd 2>/dev/null); then
    rabbit_off "epmd (it comes with Erlang) not found"
fi

# Prometheus is optional too (it only watches): without it the run goes on.
# promtool (to check the generated config) comes from ensure-prometheus.sh,
# which honours $PROMTOOL and installs Debian's package as root; the server
# is the prometheus beside it (/usr/bin/prometheus), or the first on PATH.
PROMETHEUS_BIN=
PROM_NOTE=
prom_off() {
    log "WARNING: $*"
    log "WARNING: running WITHOUT Prometheus: no recording rules or alerts locally (each service's /metrics still answers)"
    PROMETHEUS_BIN=
    PROM_NOTE="not running (see the warning in the log above)"
}
if [[ ${PROMETHEUS_SERVER:-} == none ]]; then
    log "PROMETHEUS_SERVER=none: Prometheus is not started"
    PROM_NOTE="not running (PROMETHEUS_SERVER=none)"
elif ! PROMTOOL=$(bash "$ROOT/scripts/ensure-prometheus.sh"); then
    prom_off "Prometheus is not available (scripts/ensure-prometheus.sh failed; see above)"
elif [[ -n ${PROMETHEUS_SERVER:-} ]]; then
    if [[ -x $PROMETHEUS_SERVER ]]; then
        PROMETHEUS_BIN=$PROMETHEUS_SERVER
    else
        prom_off "PROMETHEUS_SERVER=$PROMETHEUS_SERVER is not an executable"
    fi
elif [[ -x $(dirname "$PROMTOOL")/prometheus ]]; then
    PROMETHEUS_BIN=$(dirname "$PROMTOOL")/prometheus
elif ! PROMETHEUS_BIN=$(command -v prometheus); then
    prom_off "no prometheus binary beside $PROMTOOL nor on PATH"
fi

# From here on anything we started is stopped on the way out.
CLEANED=
cleanup() {
    [[ -n $CLEANED ]] && return 0
    CLEANED=1
    trap - INT TERM
    stop_all_recorded
    rm -f "$PIDS_FILE" "$RUN_DIR"/*.ports "$RUN_DIR"/*.ports.tmp
    log "all stopped; logs are in $RUN_DIR"
}
# Ctrl-C, SIGTERM and `stop` are the normal way to end a run: exit 0.
trap 'cleanup; exit 0' INT
trap 'cleanup; exit 0' TERM
# shellcheck disable=SC2154 # rc is assigned inside the trap itself
trap 'rc=$?; cleanup; exit $rc' EXIT

printf 'supervisor %s run-local.sh\n' "$$" >"$PIDS_FILE"

# --- NATS -----------------------------------------------------------------
NATS_PORT=${NATS_PORT:-4222}
if ! port_free "127.0.0.1:$NATS_PORT"; then
    busy=$NATS_PORT
    NATS_PORT=$(free_port)
    log "port $busy is busy; NATS will listen on $NATS_PORT"
fi
RABBITMQ_PORT=${RABBITMQ_PORT:-5672}
if [[ -n $RABBITMQ_LAUNCHER ]] && { [[ $RABBITMQ_PORT == "$NATS_PORT" ]] || ! port_free "127.0.0.1:$RABBITMQ_PORT"; }; then
    busy=$RABBITMQ_PORT
    RABBITMQ_PORT=$(free_ports 1 "$NATS_PORT")
    log "port $busy is busy; RabbitMQ will listen on $RABBITMQ_PORT"
fi
mkdir -p "$RUN_DIR/nats-store"
: >"$RUN_DIR/nats.log"
rm -f "$RUN_DIR"/*.down
start_nats() {
    "$NATS_SERVER" -js -n tps-local -a 127.0.0.1 -p "$NATS_PORT" \
        -sd "$RUN_DIR/nats-store" -l "$RUN_DIR/nats.log" </dev/null >>"$RUN_DIR/nats.out" 2>&1 &
    NATS_PID=$!
    printf 'nats %s %s\n' "$NATS_PID" "$(basename "$NATS_SERVER")" >>"$PIDS_FILE"
    log "nats-server pid $NATS_PID on 127.0.0.1:$NATS_PORT (JetStream store $RUN_DIR/nats-store)"
}
: >"$RUN_DIR/nats.out"
start_nats

# --- RabbitMQ, started now and waited for after NATS (it takes ~5 s) --------
RABBIT_DIR=$RUN_DIR/rabbitmq
RABBIT_NODE=tps-local@localhost
RABBITMQ_START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-60}
RABBIT_PID=
# Its Erlang distribution port and its private epmd's port: always picked
# (the default distribution port, AMQP + 20000, can exceed 65535).
if [[ -n $RABBITMQ_LAUNCHER ]]; then
    read -r RABBIT_DIST_PORT EPMD_PORT < <(free_ports 2 "$NATS_PORT" "$RABBITMQ_PORT")
    # The node reads nothing in /etc/rabbitmq: every path is here.
    RABBIT_ENV=(
        PATH="$PATH" LANG=C.UTF-8 HOME="$RABBIT_DIR/home"
        ERL_EPMD_PORT="$EPMD_PORT" ERL_CRASH_DUMP="$RABBIT_DIR/erl_crash.dump"
        RABBITMQ_NODENAME="$RABBIT_NODE" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
        RABBITMQ_NODE_PORT="$RABBITMQ_PORT" RABBITMQ_DIST_PORT="$RABBIT_DIST_PORT"
        RABBITMQ_MNESIA_BASE="$RABBIT_DIR/mnesia" RABBITMQ_LOG_BASE="$RABBIT_DIR/log"
        RABBITMQ_LOGS="$RUN_DIR/rabbitmq.log" RABBITMQ_PID_FILE="$RABBIT_DIR/rabbit.pid"
        RABBITMQ_ENABLED_PLUGINS_FILE="$RABBIT_DIR/enabled_plugins"
        RABBITMQ_CONFIG_FILE="$RABBIT_DIR/rabbitmq.conf"
        RABBITMQ_ADVANCED_CONFIG_FILE="$RABBIT_DIR/advanced.config"
        RABBITMQ_CONF_ENV_FILE="$RABBIT_DIR/rabbitmq-env.conf"
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
    )
    mkdir -p "$RABBIT_DIR/home" "$RABBIT_DIR/mnesia" "$RABBIT_DIR/log"
    # A fresh cookie each run; Erlang wants it readable by its owner only.
    rm -f "$RABBIT_DIR/home/.erlang.cookie"
    (umask 077 && python3 -c 'import uuid; print(uuid.uuid4().hex, end="")' >"$RABBIT_DIR/home/.erlang.cookie")
    chmod 400 "$RABBIT_DIR/home/.erlang.cookie"
    printf '[].\n' >"$RABBIT_DIR/enabled_plugins"
    printf '# A private node for run-local: everything else comes from the environment.\n' >"$RABBIT_DIR/rabbitmq.conf"
    : >"$RABBIT_DIR/rabbitmq-env.conf" # read instead of /etc/rabbitmq/rabbitmq-env.conf
    : >"$RUN_DIR/rabbitmq.log"
    : >"$RUN_DIR/rabbitmq.out"
    : >"$RUN_DIR/epmd.log"
fi

drop_records() { # drop_records NAME...: removes their lines from the pids file
    local name pid exe want keep
    while read -r name pid exe; do
        keep=1
        for want in "$@"; do [[ $name == "$want" ]] && keep=; done
        [[ -n $keep ]] && printf '%s %s %s\n' "$name" "$pid" "$exe"
    done <"$PIDS_FILE" >"$PIDS_FILE.tmp"
    mv "$PIDS_FILE.tmp" "$PIDS_FILE"
}

# RabbitMQ's own epmd, started before the node and waited for: with none
# answering on ERL_EPMD_PORT the node would start a daemon epmd itself, which
# would outlive the run.
start_epmd() {
    env -u ERL_EPMD_PORT "$EPMD" -port "$EPMD_PORT" -address 127.0.0.1 </dev/null >>"$RUN_DIR/epmd.log" 2>&1 &
    local pid=$! deadline=$((SECONDS + 10))
    printf 'epmd %s epmd\n' "$pid" >>"$PIDS_FILE"
    until (exec 3<>"/dev/tcp/127.0.0.1/$EPMD_PORT") 2>/dev/null; do
        if ! is_running "$pid"; then
            log "epmd (pid $pid) exited on start; see $RUN_DIR/epmd.log"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "epmd (pid $pid) does not answer on 127.0.0.1:$EPMD_PORT"
            return 1
        fi
        sleep 0.1
    done
    log "epmd pid $pid on 127.0.0.1:$EPMD_PORT (RabbitMQ's own)"
}

ensure_epmd() {
    local name pid exe
    while read -r name pid exe; do
        is_ours "$pid" "$exe" && return 0
        wait "$pid" 2>/dev/null || true
    done < <(records_named epmd)
    drop_records epmd
    start_epmd
}

# The plain launcher (a shell that traps SIGTERM and stops the VM
# gracefully) in a clean environment; its pid is the one recorded.
start_rabbitmq() {
    if ! ensure_epmd; then
        log "WARNING: RabbitMQ not started: its epmd did not start"
        return 1
    fi
    (cd "$RABBIT_DIR" && exec env -i "${RABBIT_ENV[@]}" "$RABBITMQ_LAUNCHER") \
        </dev/null >>"$RUN_DIR/rabbitmq.out" 2>&1 &
    RABBIT_PID=$!
    printf 'rabbitmq %s rabbitmq-server\n' "$RABBIT_PID" >>"$PIDS_FILE"
    log "rabbitmq pid $RABBIT_PID ($RABBIT_NODE) on 127.0.0.1:$RABBITMQ_PORT (data $RABBIT_DIR, log $RUN_DIR/rabbitmq.log)"
}

rabbit_started=$SECONDS
if [[ -n $RABBITMQ_LAUNCHER ]] && ! start_rabbitmq; then
    mapfile -t recs < <(records_named epmd)
    ((${#recs[@]})) && stop_records "${recs[@]}"
    drop_records epmd rabbitmq
    rabbit_off "RabbitMQ could not be started"
fi

deadline=$((SECONDS + 15))
until (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null; do
    if ! is_running "$NATS_PID"; then
        tail -n 30 "$RUN_DIR/nats.out" "$RUN_DIR/nats.log" >&2 || true
        die "nats-server exited during start-up (see $RUN_DIR/nats.log and nats.out)"
    fi
    ((SECONDS < deadline)) || die "nats-server did not accept connections on 127.0.0.1:$NATS_PORT within 15s"
    sleep 0.2
done
export NATS_URL=nats://127.0.0.1:$NATS_PORT

# Ready: its AMQP port accepts and its log says so.
rabbit_ready() {
    grep -qF "Server startup complete" "$RUN_DIR/rabbitmq.log" 2>/dev/null &&
        (exec 3<>"/dev/tcp/127.0.0.1/$RABBITMQ_PORT") 2>/dev/null
}
if [[ -n $RABBITMQ_LAUNCHER ]]; then
    rabbit_error=
    deadline=$((rabbit_started + RABBITMQ_START_TIMEOUT))
    until rabbit_ready; do
        if ! is_running "$RABBIT_PID"; then
            rabbit_error="rabbitmq-server exited during start-up"
            break
        fi
        if ((SECONDS >= deadline)); then
            rabbit_error="RabbitMQ was not ready on 127.0.0.1:$RABBITMQ_PORT within ${RABBITMQ_START_TIMEOUT}s"
            break
        fi
        sleep 0.25
    done
    if [[ -n $rabbit_error ]]; then
        tail -n 30 "$RUN_DIR/rabbitmq.out" "$RUN_DIR/rabbitmq.log" 2>/dev/null | sed 's/^/    /' >&2 || true
        mapfile -t recs < <(records_named rabbitmq)
        ((${#recs[@]})) && stop_rabbitmq_records "${recs[@]}"
        mapfile -t recs < <(records_named epmd)
        ((${#recs[@]})) && stop_records "${recs[@]}"
        drop_records epmd rabbitmq
        rabbit_off "$rabbit_error (see $RUN_DIR/rabbitmq.log and rabbitmq.out)"
    else
        log "rabbitmq ready after $((SECONDS - rabbit_started))s"
    fi
fi
if [[ -n $RABBITMQ_LAUNCHER ]]; then
    export RABBITMQ_URL=amqp://guest:guest@127.0.0.1:$RABBITMQ_PORT/%2f
    export TPS_FALLBACK=rabbitmq
else
    export TPS_FALLBACK=none
fi

# --- the services ---------------------------------------------------------
export TPS_LOG_FORMAT=${TPS_LOG_FORMAT:-text}
rm -f "$RUN_DIR"/*.ports "$RUN_DIR"/*.ports.tmp
# RabbitMQ's addresses, for tools (tpsctl chaos suite waits for its amqp port).
[[ -n $RABBITMQ_LAUNCHER ]] &&
    printf '{"amqp":"127.0.0.1:%s","dist":"127.0.0.1:%s","epmd":"127.0.0.1:%s"}\n' \
        "$RABBITMQ_PORT" "$RABBIT_DIST_PORT" "$EPMD_PORT" >"$RUN_DIR/rabbitmq.ports"

# start NAME GRPC HTTP METRICS EXE [ARGS...]  (HTTP may be "-" for none)
start() {
    local name=$1 grpc=$2 http=$3 metrics=$4 exe=$5
    shift 5
    local -a envs=(TPS_GRPC_ADDR="$grpc" TPS_METRICS_ADDR="$metrics" TPS_PORTS_FILE="$RUN_DIR/$name.ports")
    [[ $http != - ]] && envs+=(TPS_HTTP_ADDR="$http")
    [[ -n ${RESTARTING:-} ]] || : >"$RUN_DIR/$name.log"
    # `env` execs the binary, so $! is the service's own pid.
    env -u TPS_HTTP_ADDR "${envs[@]}" "$BIN_DIR/$exe" "$@" </dev/null >>"$RUN_DIR/$name.log" 2>&1 &
    local pid=$!
    printf '%s %s %s\n' "$name" "$pid" "$exe" >>"$PIDS_FILE"
    log "$name pid $pid ($exe${*:+ $*}), log $RUN_DIR/$name.log"
}

# launch NAME: start one of the processes with its settings (first time or again).
launch() {
    case $1 in
    nats) start_nats ;;
    epmd) start_epmd || true ;;
    rabbitmq) start_rabbitmq || true ;;
    gateway) start gateway "$GATEWAY_GRPC_ADDR" "$GATEWAY_HTTP_ADDR" "$GATEWAY_METRICS_ADDR" tps-gateway ;;
    worker-fast) start worker-fast "$WORKER_FAST_GRPC_ADDR" - "$WORKER_FAST_METRICS_ADDR" tps-worker --pool fast ;;
    worker-slow) start worker-slow "$WORKER_SLOW_GRPC_ADDR" - "$WORKER_SLOW_METRICS_ADDR" tps-worker --pool slow ;;
    aggregator) TPS_BOARD_ADDR=$AGGREGATOR_BOARD_ADDR start aggregator "$AGGREGATOR_GRPC_ADDR" - "$AGGREGATOR_METRICS_ADDR" tps-aggregator ;;
    prometheus) start_prometheus ;;
    esac
}
for s in "${SERVICES[@]}"; do
    launch "$s"
done

# A process that is gone: print its log tail and fail (the EXIT trap stops the rest).
check_alive() {
    local name pid exe
    while read -r name pid exe; do
        [[ $name == supervisor ]] && continue
        if ! is_running "$pid"; then
            local logf=$RUN_DIR/$name.log status=""
            wait "$pid" 2>/dev/null || status=" (exit status $?)"
            log "$name (pid $pid) exited$status; last lines of $logf:"
            tail -n 40 "$logf" | sed 's/^/    /' >&2 || true
            return 1
        fi
    done <"$PIDS_FILE"
}

deadline=$((SECONDS + START_TIMEOUT))
while :; do
    check_alive || die "start-up failed"
    missing=()
    for s in "${SERVICES[@]}"; do
        [[ -s $RUN_DIR/$s.ports ]] || missing+=("$s")
    done
    ((${#missing[@]} == 0)) && break
    if ((SECONDS >= deadline)); then
        for s in "${missing[@]}"; do
            log "$s wrote no $RUN_DIR/$s.ports within ${START_TIMEOUT}s; last lines of its log:"
            tail -n 40 "$RUN_DIR/$s.log" | sed 's/^/    /' >&2 || true
        done
        die "start-up timed out waiting for: ${missing[*]}"
    fi
    sleep 0.25
done

# --- Prometheus, once the services have bound --------------------------------
# Its targets are the metrics addresses the services reported (with
# 127.0.0.1:0 the OS picked them), so it starts only now.
PROM_DIR=$RUN_DIR/prometheus
PROM_CONFIG=$PROM_DIR/prometheus.yml
PROMETHEUS_PORT=${PROMETHEUS_PORT:-9091}
PROMETHEUS_START_TIMEOUT=${PROMETHEUS_START_TIMEOUT:-30}
PROM_PID=

# metrics_target NAME: the address to scrape a service at: the "metrics"
# address of its ports file, a wildcard host (0.0.0.0, [::]) made 127.0.0.1;
# empty if there is none yet. Pure bash: the supervisor may call it every
# half second.
metrics_target() {
    local line='' re='"metrics":"([^"]*)"' addr
    read -r line 2>/dev/null <"$RUN_DIR/$1.ports" || [[ -n $line ]] || return 0
    [[ $line =~ $re ]] || return 0
    addr=${BASH_REMATCH[1]}
    case ${addr%:*} in
    0.0.0.0 | "[::]") addr=127.0.0.1:${addr##*:} ;;
    esac
    printf '%s\n' "$addr"
}

# prom_targets: "name=target ..." for the four services, on one line.
prom_targets() {
    local s out=
    for s in "${SERVICES[@]}"; do
        out+="$s=$(metrics_target "$s") "
    done
    printf '%s\n' "${out% }"
}

# A YAML double-quoted scalar (JSON's escapes, which YAML shares).
yaml_str() {
    local v=${1//\\/\\\\}
    printf '"%s"' "${v//\"/\\\"}"
}

# write_prom_config: (re)writes $PROM_CONFIG from the ports files.
write_prom_config() {
    local s
    {
        cat <<EOF
# Generated by scripts/run-local.sh for this run (rewritten every run: edit
# the script, not this file). The rules and job names of the compose stack's
# deploy/prometheus/prometheus.yml; the targets are the metrics addresses the
# services reported in $RUN_DIR/<service>.ports.
# Every 5s rather than compose's 15s, so that a local run shows changes
# quickly (the tps.recording group sets its own 15s interval).
global:
  scrape_interval: 5s
  scrape_timeout: 5s
  evaluation_interval: 5s

rule_files:
  - $(yaml_str "$ROOT/deploy/prometheus/rules/*.yml")

scrape_configs:
EOF
        for s in "${SERVICES[@]}"; do
            printf '  - job_name: %s\n    static_configs:\n      - targets: [%s]\n\n' \
                "$s" "$(yaml_str "$(metrics_target "$s")")"
        done
        printf '  - job_name: prometheus\n    static_configs:\n      - targets: [%s]\n' \
            "$(yaml_str "127.0.0.1:$PROMETHEUS_PORT")"
    } >"$PROM_CONFIG.tmp"
    mv "$PROM_CONFIG.tmp" "$PROM_CONFIG"
}

start_prometheus() {
    "$PROMETHEUS_BIN" --config.file="$PROM_CONFIG" \
        --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
        --storage.tsdb.path="$PROM_DIR/data" \
        --web.enable-lifecycle \
        </dev/null >>"$RUN_DIR/prometheus.log" 2>&1 &
    PROM_PID=$!
    printf 'prometheus %s %s\n' "$PROM_PID" "$(basename "$PROMETHEUS_BIN")" >>"$PIDS_FILE"
    log "prometheus pid $PROM_PID on http://127.0.0.1:$PROMETHEUS_PORT (config $PROM_CONFIG, log $RUN_DIR/prometheus.log)"
}

# Ready: it says so in its log and its port accepts.
prom_ready() {
    grep -qF "Server is ready to receive web requests" "$RUN_DIR/prometheus.log" 2>/dev/null &&
        (exec 3<>"/dev/tcp/127.0.0.1/$PROMETHEUS_PORT") 2>/dev/null
}

if [[ -n $PROMETHEUS_BIN ]]; then
    if ! port_free "127.0.0.1:$PROMETHEUS_PORT"; then
        busy=$PROMETHEUS_PORT
        PROMETHEUS_PORT=$(free_port)
        log "port $busy is busy; Prometheus will listen on $PROMETHEUS_PORT"
    fi
    # Fresh data each run: yesterday's series would mix with today's.
    rm -rf "$PROM_DIR/data"
    mkdir -p "$PROM_DIR"
    write_prom_config
    if ! out=$("$PROMTOOL" check config "$PROM_CONFIG" 2>&1); then
        printf '%s\n' "$out" | sed 's/^/    /' >&2
        prom_off "promtool check config refused $PROM_CONFIG (see above)"
    else
        log "promtool check config $PROM_CONFIG: SUCCESS"
    fi
fi
if [[ -n $PROMETHEUS_BIN ]]; then
    : >"$RUN_DIR/prometheus.log"
    prom_error=
    deadline=$((SECONDS + PROMETHEUS_START_TIMEOUT))
    start_prometheus
    until prom_ready; do
        if ! is_running "$PROM_PID"; then
            prom_error="prometheus exited during start-up"
            break
        fi
        if ((SECONDS >= deadline)); then
            prom_error="Prometheus was not ready on 127.0.0.1:$PROMETHEUS_PORT within ${PROMETHEUS_START_TIMEOUT}s"
            break
        fi
        sleep 0.25
    done
    if [[ -n $prom_error ]]; then
        tail -n 30 "$RUN_DIR/prometheus.log" 2>/dev/null | sed 's/^/    /' >&2 || true
        mapfile -t recs < <(records_named prometheus)
        ((${#recs[@]})) && stop_records "${recs[@]}"
        drop_records prometheus
        prom_off "$prom_error (see $RUN_DIR/prometheus.log)"
    fi
fi
# Services bound to port 0 come back from a restart on another port: the
# supervisor then follows them (see below). Fixed ports need no following.
PROM_FOLLOW=
for var in GATEWAY_METRICS_ADDR WORKER_FAST_METRICS_ADDR WORKER_SLOW_METRICS_ADDR AGGREGATOR_METRICS_ADDR; do
    [[ ${!var##*:} == 0 ]] && PROM_FOLLOW=1
done
PROM_TARGETS=$(prom_targets)

# --- what is running --------------------------------------------------------
# port NAME LISTENER: the address a service reported, or empty.
port() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], ""))' \
        "$RUN_DIR/$1.ports" "$2" 2>/dev/null || true
}

{
    echo
    echo "TPS is running locally (run dir $RUN_DIR)"
    echo
    printf '  %-12s %-8s %-8s %s\n' SERVICE PID LISTENER ADDRESS
    printf '  %-12s %-8s %-8s %s\n' nats "$NATS_PID" client "nats://127.0.0.1:$NATS_PORT"
    if [[ -n $RABBITMQ_LAUNCHER ]]; then
        printf '  %-12s %-8s %-8s %s\n' rabbitmq "$RABBIT_PID" amqp "$RABBITMQ_URL"
        printf '  %-12s %-8s %-8s %s\n' rabbitmq "$RABBIT_PID" dist "127.0.0.1:$RABBIT_DIST_PORT ($RABBIT_NODE)"
        read -r _ epmd_pid _ < <(records_named epmd) || epmd_pid=-
        printf '  %-12s %-8s %-8s %s\n' epmd "$epmd_pid" epmd "127.0.0.1:$EPMD_PORT"
    else
        printf '  %-12s %-8s %-8s %s\n' rabbitmq - - "not running (TPS_FALLBACK=none)"
    fi
    while read -r name pid _; do
        [[ $name == supervisor || $name == nats || $name == rabbitmq || $name == epmd || $name == prometheus ]] && continue
        python3 - "$RUN_DIR/$name.ports" "$name" "$pid" <<'PY'
import json, sys
path, name, pid = sys.argv[1:4]
for listener, addr in sorted(json.load(open(path)).items()):
    print(f"  {name:<12} {pid:<8} {listener:<8} {addr}")
PY
    done <"$PIDS_FILE"
    if [[ -n $PROMETHEUS_BIN ]]; then
        printf '  %-12s %-8s %-8s %s\n' prometheus "$PROM_PID" http "http://127.0.0.1:$PROMETHEUS_PORT"
    else
        printf '  %-12s %-8s %-8s %s\n' prometheus - - "$PROM_NOTE"
    fi
    gw_grpc=$(port gateway grpc)
    gw_http=$(port gateway http)
    agg_grpc=$(port aggregator grpc)
    echo
    echo "Try:"
    [[ -n $gw_grpc ]] && cat <<EOF
  grpcurl -plaintext $gw_grpc list
  grpcurl -plaintext $gw_grpc grpc.health.v1.Health/Check
EOF
    agg_board=$(port aggregator board)
    [[ -n $agg_grpc ]] && echo "  grpcurl -plaintext $agg_grpc list"
    [[ -n $agg_board ]] && echo "  http://$agg_board/      # the Andon board, in a browser"
    [[ -n $agg_grpc && -x $BIN_DIR/tpsctl ]] && cat <<EOF
  $BIN_DIR/tpsctl --aggregator http://$agg_grpc andon
  $BIN_DIR/tpsctl --aggregator http://$agg_grpc kaizen --window 5m
EOF
    [[ -n $gw_http ]] && cat <<EOF
  curl -s http://$gw_http/health
  curl -s -X POST http://$gw_http/signal -H 'Content-Type: application/json' \\
       -d '{"signal_type":"execute","payload":{"duration_ms":200}}'
EOF
    [[ -x $BIN_DIR/tpsctl ]] && echo "  $BIN_DIR/tpsctl --help"
    [[ -n $PROMETHEUS_BIN ]] && cat <<EOF
  curl -s 'http://127.0.0.1:$PROMETHEUS_PORT/api/v1/query?query=tps:andon_state'
  http://127.0.0.1:$PROMETHEUS_PORT/alerts, /rules, /targets in a browser
  kill -HUP $PROM_PID      # Prometheus re-reads deploy/prometheus/rules/*.yml
EOF
    [[ -n $RABBITMQ_LAUNCHER ]] && cat <<EOF
  env HOME=$RABBIT_DIR/home ERL_EPMD_PORT=$EPMD_PORT \\
      $(dirname "$RABBITMQ_LAUNCHER")/rabbitmqctl -n $RABBIT_NODE list_queues
EOF
    echo "  tail -f $RUN_DIR/*.log"
    echo
    echo "Ctrl-C stops everything (or, if started with '&': scripts/run-local.sh stop)."
    echo
}

# --- supervise until told to stop ----------------------------------------------
# Every half second: restart what died, unless it is held down on purpose.
declare -A RESTARTS=()
export RESTARTING=1
while :; do
    # In the background so a signal's trap runs at once.
    sleep 0.5 &
    wait $! || true
    mapfile -t records <"$PIDS_FILE"
    for record in "${records[@]}"; do
        read -r name pid _ <<<"$record"
        [[ $name == supervisor ]] && continue
        is_running "$pid" && continue
        [[ -e $RUN_DIR/$name.down ]] && continue
        # Already replaced in this round (starting rabbitmq restarts its epmd).
        grep -q "^$name $pid " "$PIDS_FILE" || continue
        status=0
        wait "$pid" 2>/dev/null || status=$?
        RESTARTS[$name]=$((${RESTARTS[$name]:-0} + 1))
        if ((RESTARTS[$name] > 10)); then
            tail -n 40 "$RUN_DIR/$name.log" | sed 's/^/    /' >&2 || true
            # Prometheus only watches: the run goes on without it.
            if [[ $name == prometheus ]]; then
                drop_records prometheus
                prom_off "prometheus keeps exiting (10 restarts; see $RUN_DIR/prometheus.log)"
                continue
            fi
            die "$name keeps exiting (10 restarts); stopping the rest"
        fi
        log "$name (pid $pid) exited (status $status); restarting it (restart ${RESTARTS[$name]})"
        grep -v "^$name $pid " "$PIDS_FILE" >"$PIDS_FILE.tmp" && mv "$PIDS_FILE.tmp" "$PIDS_FILE"
        launch "$name"
    done
    # A service on port 0 that restarted may report another metrics port:
    # rewrite the config and reload Prometheus (SIGHUP) once all four have one.
    if [[ -n $PROM_FOLLOW && -n $PROMETHEUS_BIN ]]; then
        targets=$(prom_targets)
        if [[ $targets != "$PROM_TARGETS" && " $targets" != *"= "* && $targets != *= ]]; then
            PROM_TARGETS=$targets
            write_prom_config
            read -r _ ppid pexe < <(records_named prometheus) || ppid=
            if [[ -n $ppid ]] && is_ours "$ppid" "$pexe"; then
                kill -HUP "$ppid" 2>/dev/null || true
                log "metrics addresses changed ($targets): Prometheus (pid $ppid) reloaded"
            fi
        fi
    fi
done
