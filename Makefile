# TPS: the seed's make targets. `make` (or `make help`) lists them.
#
# Real now: build run-local test fmt lint health status metrics clean, chaos and chaos-*.
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

# Later issues; the targets below name them.
ISSUE_DEPLOY := 8 (deployment: compose stack, offline images, Kubernetes)
ISSUE_LOAD   := 9 (load generator and benchmarks)
NOT_YET = echo "not yet: arrives with issue $(1)" >&2; exit 1

.PHONY: help build run-local test fmt lint health status metrics clean \
	up down restart logs images load spike stress stress-test dashboard traces \
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
test: ## fmt check, promtool checks/tests, dashboard checks, clippy -D warnings, build, then every test (nextest if present)
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
	step $(CARGO) clippy --workspace --all-targets -- -D warnings; \
	step $(CARGO) build --workspace --bins; \
	if $(CARGO) nextest --version >/dev/null 2>&1; then \
		step $(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		echo "(cargo-nextest not installed: using cargo test)"; \
		step $(CARGO) test --workspace; \
	fi

fmt: ## Format the code (cargo fmt --all)
	$(CARGO) fmt --all

lint: ## Clippy with warnings as errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean: ## Stop a background run-local, then cargo clean and remove .run/
	-@[ -f .run/pids ] && bash scripts/run-local.sh stop || true
	$(CARGO) clean
	rm -rf .run

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

up: ## Start the whole stack (not yet)
	@$(call NOT_YET,$(ISSUE_DEPLOY))

down: ## Stop the stack (not yet)
	@$(call NOT_YET,$(ISSUE_DEPLOY))

restart: ## Restart the stack (not yet)
	@$(call NOT_YET,$(ISSUE_DEPLOY))

logs: ## Tail the stack's logs (not yet)
	@$(call NOT_YET,$(ISSUE_DEPLOY))

images: ## Build the container images offline (not yet)
	@$(call NOT_YET,$(ISSUE_DEPLOY))

##@ Load

load: ## Normal load, e.g. make load DURATION=60 RATE=100 (not yet)
	@$(call NOT_YET,$(ISSUE_LOAD))

spike: ## Traffic spike (not yet)
	@$(call NOT_YET,$(ISSUE_LOAD))

stress: ## Sustained stress (not yet)
	@$(call NOT_YET,$(ISSUE_LOAD))

stress-test: ## Ramp the load until the system refuses work (not yet)
	@$(call NOT_YET,$(ISSUE_LOAD))

##@ Chaos

# Against a running `make run-local` (its run dir .run/, by pid and address).
# Faults need the admin token the services were started with: export
# TPS_ADMIN_TOKEN before both. The deployment issue adds the compose variants.
TPSCTL  ?= $(if $(wildcard $(TARGET_DIR)/release/tpsctl),$(TARGET_DIR)/release/tpsctl,$(CARGO) run --release -q --bin tpsctl --)
LATENCY ?= 5000
POOL    ?= fast
DOWNSTREAM_POOL ?= slow

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
