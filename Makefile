# Corral's entry points. `make run` is the main job, `make test` runs every test; both install what
# they need (apt packages, the Kafka jars from Maven Central, the Segment test clients).
#
# One cargo profile (dev, with dependencies optimised) serves the stack, the tests and CI, so
# RocksDB and librdkafka are compiled once; `make bench` alone builds with --release.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
export KAFKA_PORT ?= 9092
export CORRAL_KAFKA_BOOTSTRAP ?= 127.0.0.1:$(KAFKA_PORT)

.PHONY: help deps build up down run demo status test test-chart test-fuzz soak soak-merges bench lint fmt clean-state image

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

deps: ## install system packages, the Kafka jars, the Segment test clients and analytics.js when missing
	@deploy/local/install-deps.sh
	@deploy/local/kafka.sh fetch >/dev/null
	@if [[ -x tests/clients/install.sh ]]; then tests/clients/install.sh; fi
	@if [[ -x tests/browser/install.sh ]]; then tests/browser/install.sh; fi
	@helm/test.sh --install

build: ## build every binary (dev profile, dependencies optimised)
	@deploy/local/install-deps.sh
	$(CARGO) build --workspace --bins

up: build ## build, start Kafka, create the topics, start every service; returns when all are ready
	@deploy/local/kafka.sh start
	@target/debug/corralctl topics apply --manifest deploy/topics.yaml
	@deploy/local/services.sh start

down: ## stop every service and Kafka
	@deploy/local/services.sh stop
	@deploy/local/kafka.sh stop

status: ## what runs
	@deploy/local/kafka.sh status || true
	@deploy/local/services.sh status || true

run: up ## the main job: start everything, load the examples, stream a demo and show what happens
	@deploy/local/demo.sh

test: deps ## every test: unit, property, end-to-end against the real local Kafka, the Helm chart offline and under podman
	helm/test.sh
	@deploy/local/kafka.sh start
	$(CARGO) build --workspace --bins
	@mkdir -p .run
	@status=0; $(CARGO) test --workspace --no-fail-fast 2>&1 | tee .run/test.log || status=$$?; \
	  deploy/local/test-summary.sh .run/test.log; \
	  helm/chart-to-process.sh || { status=$$?; echo "FAILED: helm/chart-to-process.sh (the chart's workloads under podman)"; }; \
	  exit $$status

test-chart: build ## the Helm chart alone: offline checks (helm/test.sh), then its workloads under podman with the demo (helm/chart-to-process.sh)
	helm/test.sh
	@deploy/local/kafka.sh start
	helm/chart-to-process.sh

image: build ## the container image localhost/corral:dev from the binaries of `make build` (deploy/container/build.sh)
	deploy/container/build.sh --from-host

test-fuzz: ## run the query parser's fuzz target briefly (FUZZ_SECONDS, default 60)
	services/lib/query/fuzz/run.sh

soak-merges: deps ## merges through the whole pipeline, long: 10,000 users, two instances of each service, SIGKILLs (MERGE_DIFF_* to change)
	@deploy/local/kafka.sh start
	$(CARGO) build --workspace --bins
	MERGE_DIFF_USERS=$${MERGE_DIFF_USERS:-10000} MERGE_DIFF_INSTANCES=$${MERGE_DIFF_INSTANCES:-2} \
	  MERGE_DIFF_KILLS=$${MERGE_DIFF_KILLS:-8} $(CARGO) test -p corral-e2e --test merges -- --nocapture

bench: deps ## benchmarks: broker baseline, runtime pipeline, criterion micro-benchmarks
	@deploy/local/kafka.sh start
	deploy/local/bench.sh

lint: ## rustfmt check and clippy with warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt: ## format the code
	$(CARGO) fmt --all

clean-state: down ## stop everything and delete the local Kafka data and service state
	@deploy/local/kafka.sh reset
	@rm -rf .run
