# TPS: the seed's make targets. `make` (or `make help`) lists them.
#
# Real now: build run-local test fmt lint health status metrics clean, the
# compose stack (up down restart logs images), load spike stress stress-test
# bench, chaos and chaos-* (MODE=local against `make run-local`,
# MODE=compose against the compose stack).
# The rest belong to later issues and say so (exit 1) instead of pretending.

SHELL := /bin/bash
.DEFAULT_GOAL := help

CARGO        ?= cargo
TARGET_DIR   ?= $(or $(CARGO_TARGET_DIR),target)
# The gateway's HTTP/JSON facade (what `make run-local` starts on 127.0.0.1:8080).
GATEWAY_HTTP ?= http://127.0.0.1:8080
CURL         ?= curl -sS --fail-with-body --max-time 10
# rustfmt colours its --check diff even into a file; CI logs stay plain.
FMT_CHECK_FLAGS := $(if $(CI),-- --color never,)

# The compose tool: `docker compose` (v2) where present, else docker-compose.
COMPOSE ?= $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
# OFFLINE=1: run the stack on the images `make images` built from Debian
# packages (their names are in $(IMAGES_ENV)) and only the services that have
# such an image (Grafana, Jaeger, Loki and promtail have no Debian package).
OFFLINE       ?=
IMAGES_ENV    ?= $(or $(TPS_IMAGES_DIR),/var/tmp/tps-images)/local.env
OFFLINE_SERVICES := nats rabbitmq gateway worker-fast worker-slow aggregator prometheus
STACK_SERVICES   := $(if $(OFFLINE),$(OFFLINE_SERVICES),)
# Runs compose with the offline image names loaded when OFFLINE=1.
DC = $(if $(OFFLINE),set -a && . $(IMAGES_ENV) && set +a && ,)$(COMPOSE)
# Chaos and observation targets act on run-local (MODE=local, the default) or
# on the compose stack (MODE=compose).
MODE ?= local

.PHONY: help build run-local test fmt lint health status metrics clean \
	up down restart logs images load spike stress stress-test bench dashboard traces \
	chaos chaos-crash-worker chaos-queue-down chaos-queue-recover chaos-rabbit-down \
	chaos-rabbit-recover chaos-downstream chaos-cascade chaos-stop

help: ## List the targets
	@echo "TPS make targets:"
	@awk 'BEGIN {FS = ":.*## "} /^##@ / {printf "\n%s\n", substr($$0, 5); next} /^[a-zA-Z_-]+:.*## / {printf "  %-20s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

##@ Build and develop

build: ## Build the release binaries (tps-gateway, tps-worker, tps-aggregator, tpsctl)
	$(CARGO) build --release --bins

run-local: ## Run NATS, RabbitMQ, the four services and Prometheus on this machine, no Docker (Ctrl-C stops; see scripts/run-local.sh)
	bash scripts/run-local.sh

# Each step runs in order; the first failure stops the target.
test: ## fmt check, promtool/dashboard/k8s/compose checks, clippy -D warnings, build, every test (nextest if present), then the images and the compose chaos test
	@set -euo pipefail; \
	step() { local t0=$$SECONDS; echo "==> $$*"; "$$@"; echo "<== $$* ($$((SECONDS - t0))s)"; }; \
	NATS_SERVER="$$(bash scripts/ensure-nats.sh)"; export NATS_SERVER; \
	echo "NATS_SERVER=$$NATS_SERVER"; \
	RABBITMQ_SERVER="$$(bash scripts/ensure-rabbitmq.sh)"; export RABBITMQ_SERVER; \
	echo "RABBITMQ_SERVER=$$RABBITMQ_SERVER"; \
	CHROMEDRIVER="$$(bash scripts/ensure-chromium.sh)"; export CHROMEDRIVER; \
	echo "CHROMEDRIVER=$$CHROMEDRIVER"; \
	step $(CARGO) fmt --all --check $(FMT_CHECK_FLAGS); \
	step bash scripts/check-prometheus.sh; \
	step python3 deploy/grafana/generate.py --check; \
	step python3 deploy/grafana/check.py; \
	step bash scripts/check-k8s.sh; \
	step $(CARGO) clippy --workspace --all-targets -- -D warnings; \
	step $(CARGO) build --workspace --bins; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		step $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		echo "(cargo-nextest not installed: using cargo test)"; \
		step $(CARGO) test --workspace; \
	fi; \
	step bash deploy/images/build.sh; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		step $(CARGO) nextest run -p tps-e2e --test compose --run-ignored only; \
	else \
		step $(CARGO) test -p tps-e2e --test compose -- --ignored; \
	fi

fmt: ## Format the code (cargo fmt --all)
	$(CARGO) fmt --all

lint: ## Clippy with warnings as errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

ifeq ($(MODE),compose)
clean: ## [MODE=compose] Stop the stack and remove its containers and volumes (NATS store, RabbitMQ data, Prometheus)
	$(DC) down -v --remove-orphans
else
clean: ## Stop a background run-local, then cargo clean and remove .run/
	-@[ -f .run/pids ] && bash scripts/run-local.sh stop || true
	$(CARGO) clean
	rm -rf .run
endif

##@ Security (docs/fuzzing.md, docs/supply-chain.md)

# fuzz/ is a cargo-fuzz crate of its own, outside the workspace: make test
# never builds it. Nightly when rustup has it, else stable + RUSTC_BOOTSTRAP=1.
FUZZ_SECONDS ?= 60
FUZZ_NICE    ?= 19
.PHONY: fuzz audit

fuzz: ## Run every fuzz target for FUZZ_SECONDS (default 60) each at low priority (nice); fails on a crash (installs cargo-fuzz if missing)
	FUZZ_SECONDS=$(FUZZ_SECONDS) nice -n $(FUZZ_NICE) bash fuzz/run.sh

audit: ## cargo deny: licenses, bans, sources (must pass), then advisories when the RustSec database can be fetched
	bash scripts/audit.sh

##@ Observe (the gateway HTTP facade; GATEWAY_HTTP=http://127.0.0.1:8080 by default)

health: ## GET /health on the gateway
	@$(CURL) $(GATEWAY_HTTP)/health && echo

status: ## GET /status on the gateway
	@$(CURL) $(GATEWAY_HTTP)/status && echo

metrics: ## GET /metrics on the gateway
	@$(CURL) $(GATEWAY_HTTP)/metrics && echo

dashboard: ## Where the Grafana dashboards are (compose stack; deploy/grafana)
	@echo "Grafana: http://localhost:3000 (dashboards: TPS folder; docs/metrics.md, docs/runbook.md)"
	@echo "Prometheus: http://localhost:9091 (alerts: deploy/prometheus/rules)"

traces: ## Where the traces are (Jaeger in the compose stack)
	@echo "Jaeger: http://localhost:16686 (search by service tps-gateway, or by the trace_id a submit returned)"

##@ Stack (docker compose)

up: ## Start the stack in the background (OFFLINE=1: the locally built images, no Grafana/Jaeger/Loki)
	$(if $(OFFLINE),bash deploy/images/build.sh >/dev/null,)
	$(DC) up -d $(STACK_SERVICES)
	@echo "gateway :50051/:8080, Andon board :8081, Prometheus :9091$(if $(OFFLINE),, Grafana :3000, Jaeger :16686)"

down: ## Stop the stack and remove its containers (volumes are kept)
	$(DC) down

restart: ## Restart the stack's containers
	$(DC) restart $(STACK_SERVICES)

logs: ## Follow the stack's logs (SERVICE=gateway for one)
	$(DC) logs -f --tail=100 $(SERVICE)

images: ## Build the stack's images without a registry (debootstrap base, Debian packages; deploy/images)
	bash deploy/images/build.sh

##@ Load

# tpsctl load against the gateway's gRPC port (run-local and compose publish
# it on 50051); see docs/load.md. LOAD_FLAGS adds flags, e.g. --json, --csv,
# --concurrency 64, --type validate.
GATEWAY_GRPC ?= http://127.0.0.1:50051
RATE         ?= 100
DURATION     ?= 60
LOAD_FLAGS   ?=

load: ## Open-model constant load, e.g. make load RATE=100 DURATION=60 (seconds, or 2m)
	$(TPSCTL) --gateway $(GATEWAY_GRPC) load --rate $(RATE) --duration $(DURATION) $(LOAD_FLAGS)

spike: ## Traffic spike: 1000 rps for 10 s
	$(TPSCTL) --gateway $(GATEWAY_GRPC) load --shape spike $(LOAD_FLAGS)

stress: ## Sustained stress: 500 rps for 30 s
	$(TPSCTL) --gateway $(GATEWAY_GRPC) load --shape stress $(LOAD_FLAGS)

stress-test: ## Ramp from 100 rps, +50 every 30 s, until refusals > 1% or accept p99 > 1 s; reports the knee
	$(TPSCTL) --gateway $(GATEWAY_GRPC) load --shape ramp $(LOAD_FLAGS)

bench: ## The benchmark: raw JetStream and bare tonic baselines, then the real system, one run (scripts/bench.sh; report in .bench/<time>/report.md)
	bash scripts/bench.sh

##@ Chaos

# MODE=local (default): against a running `make run-local` (its run dir .run/,
# by pid and address). MODE=compose: against the compose stack (containers by
# service name). Faults need the admin token the services were started with:
# export TPS_ADMIN_TOKEN before both (compose passes it to the containers).
TPSCTL  ?= $(if $(wildcard $(TARGET_DIR)/release/tpsctl),$(TARGET_DIR)/release/tpsctl,$(CARGO) run --release -q --bin tpsctl --)
LATENCY ?= 5000
POOL    ?= fast
DOWNSTREAM_POOL ?= slow
# compose: sets a fault on every replica of pool $(1) from inside its container.
compose_fault = for id in $$($(DC) ps -q worker-$(1)); do \
	docker exec "$$id" tpsctl pool --worker http://127.0.0.1:50052 fault $(2) || exit 1; done

ifeq ($(MODE),compose)
chaos: ## [MODE=compose] Every chaos scenario in turn under a steady load, one ledger line each (MODE=local only)
	@echo "the chaos suite runs against make run-local (MODE=local); against compose use the chaos-* targets" >&2; exit 1

chaos-crash-worker: ## [MODE=compose] Kill one worker container (POOL=fast|slow), start it again 2 s later; its work is redelivered
	id=$$($(DC) ps -q worker-$(POOL) | head -n 1); test -n "$$id"; docker kill "$$id"; sleep 2; docker start "$$id"

chaos-queue-down: ## [MODE=compose] Stop the NATS container (until chaos-queue-recover)
	$(DC) stop nats

chaos-queue-recover: ## [MODE=compose] Start the NATS container again (same volume)
	$(DC) start nats

chaos-rabbit-down: ## [MODE=compose] Stop the RabbitMQ container (until chaos-rabbit-recover)
	$(DC) stop rabbitmq

chaos-rabbit-recover: ## [MODE=compose] Start the RabbitMQ container again (same volume)
	$(DC) start rabbitmq

chaos-downstream: ## [MODE=compose] Latency in every replica of a pool's downstream, e.g. LATENCY=5000 DOWNSTREAM_POOL=slow
	$(call compose_fault,$(DOWNSTREAM_POOL),--latency-ms $(LATENCY))

chaos-cascade: ## [MODE=compose] Latency in the slow pool while the fast pool must stay healthy (LATENCY=5000)
	$(call compose_fault,slow,--latency-ms $(LATENCY))

chaos-stop: ## [MODE=compose] Clear every injected fault and start NATS and RabbitMQ again
	$(call compose_fault,fast,)
	$(call compose_fault,slow,)
	$(DC) start nats rabbitmq
else
chaos: ## Run every chaos scenario in turn under a steady load; one ledger line each (fails if a signal is lost)
	$(TPSCTL) chaos suite

chaos-crash-worker: ## SIGKILL one worker (POOL=fast|slow); run-local restarts it, its work is redelivered
	$(TPSCTL) chaos crash-worker --pool $(POOL)

chaos-queue-down: ## Stop NATS and keep it down (until chaos-queue-recover)
	$(TPSCTL) chaos queue-down

chaos-queue-recover: ## Let NATS come back (same port and store)
	$(TPSCTL) chaos queue-recover

chaos-rabbit-down: ## Stop RabbitMQ (the fallback broker) and keep it down (until chaos-rabbit-recover)
	$(TPSCTL) chaos rabbit-down

chaos-rabbit-recover: ## Let RabbitMQ come back (same port and data)
	$(TPSCTL) chaos rabbit-recover

chaos-downstream: ## Latency in a pool's downstream, e.g. LATENCY=5000 DOWNSTREAM_POOL=slow
	$(TPSCTL) chaos downstream --latency-ms $(LATENCY) --pool $(DOWNSTREAM_POOL)

chaos-cascade: ## Latency in the slow pool while the fast pool must stay healthy (LATENCY=5000)
	$(TPSCTL) chaos cascade --latency-ms $(LATENCY)

chaos-stop: ## Clear every injected fault and release NATS and RabbitMQ
	$(TPSCTL) chaos stop

endif
