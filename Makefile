.PHONY: help run link dashboard-picture test bench-coldstart-static sam-local test-sam-local test-rust test-browser test-api bench-api fuzz fuzz-smoke deps-fuzz deps-api lint lint-rust lint-infra build sam-build bench bench-handlers bench-tokens bench-coldstart bench-critical-path bench-load bench-refresh-burst deps deps-moto deps-sdk deps-browser deps-infra deps-build deps-bench clean-local

SHELL := /bin/bash
VENV := .venv
MOTO := $(VENV)/bin/moto_server
# AutoKitteh's own Python SDK, for the test that reads our vars the way a workflow does.
SDK_VENV := .venv-sdk
SDK_PYTHON := $(SDK_VENV)/bin/python
BROWSER_DIR := tests/browser
# schemathesis, for the connection API's conformance to its OpenAPI document.
API_VENV := .venv-api
# Executions per fuzz target for `make fuzz` (8 targets: over 10 million in all).
FUZZ_RUNS ?= 1300000
CARGO_FUZZ_VERSION := 0.13.2
CHROMIUM ?= /usr/bin/chromium
# Local defaults shared by `make run` and `make link` (see README, "Local run").
LOCAL_WEBHOOK_ADDRESS ?= http://localhost:9000
LOCAL_START_LINK_KEY ?= local-development-start-link-key-do-not-use-in-production
# Offline validation of the template needs a region and credentials, never real ones.
SAM_ENV := SAM_CLI_TELEMETRY=0 AWS_DEFAULT_REGION=us-east-1 AWS_ACCESS_KEY_ID=placeholder AWS_SECRET_ACCESS_KEY=placeholder
LAMBDA_TARGET := aarch64-unknown-linux-gnu
FUNCTIONS := oauth-start oauth-redirect connection-api token-refresher

help:
	@echo "make run    - run both functions locally with moto and the stand-in identity platform"
	@echo "              (LOCAL_AUTOKITTEH=1 make run: inside a stand-in AutoKitteh, behind a front door)"
	@echo "make link   - print a new start link for the local stack (CID=con_… ORIGIN=web|cli|vscode|dash)"
	@echo "make test   - install test dependencies and run every test (unit, integration, browser)"
	@echo "make sam-local - the stack served by sam local start-api (Docker, a local base image), like make run"
	@echo "make test-sam-local - a whole sign-in through sam local start-api (CI runs it)"
	@echo "make lint   - rustfmt, clippy (warnings are errors), cfn-lint and sam validate --lint"
	@echo "make dashboard-picture - draw docs/dashboard.svg from the template's dashboard"
	@echo "make build  - arm64 release build of the functions for Lambda, with their sizes"
	@echo "make sam-build - sam build of the stack (what sam deploy uploads)"
	@echo "make bench  - every measurement below, then docs/benchmarks.md and docs/coldstart.svg"
	@echo "make bench-handlers - CPU per request of the start and redirect handlers (criterion)"
	@echo "make bench-load - 1,000 sign-ins, 64 at a time, clean and with faults, each connection checked"
	@echo "make bench-refresh-burst - refresh calls per burst of forced refreshes during a refresh outage"
	@echo "make bench-tokens - token request latency through the local stack"
	@echo "make bench-coldstart - Init, first invocation and RSS of each function vs hello world"
	@echo "make bench-critical-path - sequential hops of the redirect with latency added to every dependency"
	@echo "make bench-api - schemathesis against the connection API, 1,000 examples per operation"
	@echo "make fuzz   - every fuzz target, $(FUZZ_RUNS) executions each (cargo-fuzz), counts in target/bench/fuzz.json"
	@echo "make fuzz-smoke - the same, 20,000 executions each (CI)"

## Dependencies, installed into project-local folders on first use.
deps: deps-moto deps-sdk deps-browser

deps-moto: $(MOTO)
$(MOTO):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'moto[server]>=5.1,<6'

deps-sdk: $(SDK_VENV)/.installed
$(SDK_VENV)/.installed:
	python3 -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/pip install --quiet --disable-pip-version-check 'autokitteh==0.8.3' 'azure-core>=1.30,<2' 'azure-identity>=1.19,<2' 'msgraph-sdk>=1.18,<2'
	touch $@

deps-browser: $(BROWSER_DIR)/node_modules/.package-lock.json
	@if [ ! -x "$(CHROMIUM)" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "Installing Debian's chromium (for the browser test)"; \
	    apt-get install -y -qq chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null); \
	  else \
	    echo "Chromium is missing: run 'sudo apt-get install chromium' or set CHROMIUM=/path/to/chromium"; exit 1; \
	  fi; \
	fi
$(BROWSER_DIR)/node_modules/.package-lock.json: $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund --silent

## Local run: no AWS account, no Azure app needed.
run: deps-moto
	cargo build -p ms-oauth-tests --bin local-stack
	MOTO_SERVER=$(abspath $(MOTO)) ./target/debug/local-stack

link:
	@WEBHOOK_ADDRESS=$${WEBHOOK_ADDRESS:-$(LOCAL_WEBHOOK_ADDRESS)} \
	  START_LINK_KEY=$${START_LINK_KEY:-$(LOCAL_START_LINK_KEY)} \
	  cargo run --quiet --bin akoauth -- start-link --cid $${CID:-con_0123456789abcdefghjkmnpqrs} --origin $${ORIGIN:-web} --ttl 600

deps-api: $(API_VENV)/.installed
$(API_VENV)/.installed:
	python3 -m venv $(API_VENV)
	$(API_VENV)/bin/pip install --quiet --disable-pip-version-check 'schemathesis>=4.30,<5'
	touch $@

## Tests.
test: deps test-rust test-browser test-api

test-rust: deps-moto deps-sdk
	MOTO_SERVER=$(abspath $(MOTO)) AK_SDK_PYTHON=$(abspath $(SDK_PYTHON)) cargo test --workspace --all-targets

test-browser: deps-moto deps-browser
	# The same build as the Rust tests (features unified with dev-dependencies), so nothing is rebuilt.
	cargo test --workspace --all-targets --no-run
	MOTO_SERVER=$(abspath $(MOTO)) CHROMIUM=$(CHROMIUM) node $(BROWSER_DIR)/e2e.mjs

# The connection API through the local stack, checked by schemathesis (30 examples each).
test-api: deps-moto deps-api
	cargo build -p ms-oauth-tests --bin local-stack
	MOTO_SERVER=$(abspath $(MOTO)) $(VENV)/bin/python tests/conformance/run.py 30

bench-api: deps-moto deps-api
	cargo build -p ms-oauth-tests --bin local-stack
	@mkdir -p $(BENCH_OUT)
	MOTO_SERVER=$(abspath $(MOTO)) $(VENV)/bin/python tests/conformance/run.py 1000 --json $(BENCH_OUT)/schemathesis.json

## Fuzzing (cargo-fuzz on the stable toolchain: RUSTC_BOOTSTRAP lets it pass its -Z flags).
deps-fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz@$(CARGO_FUZZ_VERSION)

fuzz: deps-fuzz
	python3 fuzz/seeds.py
	@mkdir -p $(BENCH_OUT)
	python3 fuzz/run.py $(FUZZ_RUNS) --json $(BENCH_OUT)/fuzz.json

fuzz-smoke: deps-fuzz
	python3 fuzz/seeds.py
	python3 fuzz/run.py 20000

deps-infra: $(VENV)/bin/sam
$(VENV)/bin/sam: $(MOTO)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'aws-sam-cli>=1.140,<2' 'cfn-lint>=1.20,<2'

deps-build: $(VENV)/bin/cargo-lambda
	rustup target add $(LAMBDA_TARGET)
$(VENV)/bin/cargo-lambda: $(MOTO)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'cargo-lambda>=1.8,<2'

lint: lint-rust lint-infra

lint-rust:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

lint-infra: deps-infra
	cd infra && $(SAM_ENV) ../$(VENV)/bin/cfn-lint template.yaml
	cd infra && $(SAM_ENV) ../$(VENV)/bin/sam validate --lint --template template.yaml
	cd infra && $(SAM_ENV) ../$(VENV)/bin/python local_template.py --check
	cd infra && $(SAM_ENV) ../$(VENV)/bin/python check_sam_local.py template.yaml
	cd infra && $(SAM_ENV) ../$(VENV)/bin/python check_sam_local.py .sam-local/template.yaml
	cd infra && ../$(VENV)/bin/python dashboard_picture.py --check

# docs/dashboard.svg, drawn from the template's dashboard (lint fails when it is out of date).
dashboard-picture: deps-infra
	cd infra && ../$(VENV)/bin/python dashboard_picture.py

## SAM local: the template's own API emulation on this machine (see README, "SAM local").
sam-local: deps-moto deps-infra
	$(VENV)/bin/python infra/sam_local.py serve

test-sam-local: deps-moto deps-infra
	$(VENV)/bin/python infra/sam_local.py test

## Release builds for Lambda (Graviton, arm64).
build: deps-build
	PATH=$(abspath $(VENV))/bin:$$PATH cargo lambda build --release --arm64 $(foreach f,$(FUNCTIONS),-p $(f))
	@du -b $(foreach f,$(FUNCTIONS),target/lambda/$(f)/bootstrap) | awk '{ printf "%-44s %6.2f MiB (arm64)\n", $$2, $$1/1048576 }'

sam-build: deps-infra deps-build
	cd infra && PATH=$(abspath $(VENV))/bin:$$PATH $(SAM_ENV) sam build --beta-features
	@du -b infra/.aws-sam/build/*/bootstrap | awk '{ printf "%-48s %6.2f MiB\n", $$2, $$1/1048576 }'

## Measurements (they print numbers; nothing here is a test).
BENCH_OUT := target/bench

deps-bench: $(VENV)/.bench-deps
$(VENV)/.bench-deps: $(MOTO)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'matplotlib>=3.8,<4'
	touch $@

bench: deps-moto deps-bench bench-handlers bench-coldstart bench-coldstart-static bench-critical-path bench-load bench-refresh-burst bench-api fuzz build
	$(VENV)/bin/python tests/bench/report.py

bench-handlers:
	cargo bench -p ms-oauth-tests --bench handlers

bench-load: deps-moto
	cargo build --release -p ms-oauth-tests --bin load
	@mkdir -p $(BENCH_OUT)
	MOTO_SERVER=$(abspath $(MOTO)) ./target/release/load 1000 64 --json $(BENCH_OUT)/load.json
# Bursts of forced refreshes while the identity platform fails every refresh: calls per burst.
bench-refresh-burst: deps-moto
	cargo build --release -p ms-oauth-tests --bin refresh-burst
	@mkdir -p $(BENCH_OUT)
	MOTO_SERVER=$(abspath $(MOTO)) ./target/release/refresh-burst --json $(BENCH_OUT)/refresh-burst.json
bench-tokens: deps-moto
	cargo build -p ms-oauth-tests --bin local-stack
	MOTO_SERVER=$(abspath $(MOTO)) python3 tests/bench/token_latency.py

bench-coldstart: deps-moto
	cargo build --release $(foreach f,$(FUNCTIONS),-p $(f))
	cargo build --release -p ms-oauth-tests --bin hello-lambda --bin coldstart
	@mkdir -p $(BENCH_OUT)
	MOTO_SERVER=$(abspath $(MOTO)) ./target/release/coldstart 15 --json $(BENCH_OUT)/coldstart.json

# The same functions and hello world built without dynamic relocations (static, non-PIE),
# side by side with the default build: the first lever for Init (docs/benchmarks.md, §1).
STATIC_TARGET := x86_64-unknown-linux-gnu
bench-coldstart-static: deps-moto
	RUSTFLAGS="-C relocation-model=static" CARGO_TARGET_DIR=target/static cargo build --release --target $(STATIC_TARGET) $(foreach f,$(FUNCTIONS),-p $(f))
	RUSTFLAGS="-C relocation-model=static" CARGO_TARGET_DIR=target/static cargo build --release --target $(STATIC_TARGET) -p ms-oauth-tests --bin hello-lambda
	cargo build --release -p ms-oauth-tests --bin coldstart
	@mkdir -p $(BENCH_OUT)
	MOTO_SERVER=$(abspath $(MOTO)) ./target/release/coldstart 15 --dir target/static/$(STATIC_TARGET)/release --json $(BENCH_OUT)/coldstart-static.json

bench-critical-path: deps-moto
	cargo build --release -p ms-oauth-tests --bin critical-path
	@mkdir -p $(BENCH_OUT)
	MOTO_SERVER=$(abspath $(MOTO)) ./target/release/critical-path 50 --json $(BENCH_OUT)/critical-path-50.json
	MOTO_SERVER=$(abspath $(MOTO)) ./target/release/critical-path 200 --json $(BENCH_OUT)/critical-path-200.json
	MOTO_SERVER=$(abspath $(MOTO)) ./target/release/critical-path 50 --autokitteh --json $(BENCH_OUT)/critical-path-ak-50.json
	MOTO_SERVER=$(abspath $(MOTO)) ./target/release/critical-path 200 --autokitteh --json $(BENCH_OUT)/critical-path-ak-200.json

clean-local:
	rm -rf $(VENV) $(SDK_VENV) $(API_VENV) $(BROWSER_DIR)/node_modules
