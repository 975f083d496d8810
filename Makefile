.PHONY: help run link test test-rust test-browser lint build deps deps-moto deps-browser clean-local

SHELL := /bin/bash
VENV := .venv
MOTO := $(VENV)/bin/moto_server
BROWSER_DIR := tests/browser
CHROMIUM ?= /usr/bin/chromium
# Local defaults shared by `make run` and `make link` (see README, "Local run").
LOCAL_WEBHOOK_ADDRESS ?= http://localhost:9000
LOCAL_START_LINK_KEY ?= local-development-start-link-key-do-not-use-in-production

help:
	@echo "make run    - run both functions locally with moto and the stand-in identity platform"
	@echo "make link   - print a new start link for the local stack (CID=con_… ORIGIN=web|cli|vscode|dash)"
	@echo "make test   - install test dependencies and run every test (unit, integration, browser)"
	@echo "make lint   - rustfmt and clippy, warnings are errors"
	@echo "make build  - release build of the function binaries, with their sizes"

## Dependencies, installed into project-local folders on first use.
deps: deps-moto deps-browser

deps-moto: $(MOTO)
$(MOTO):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check 'moto[server]>=5.1,<6'

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
	cargo build --bin local-stack
	MOTO_SERVER=$(abspath $(MOTO)) ./target/debug/local-stack

link:
	@WEBHOOK_ADDRESS=$${WEBHOOK_ADDRESS:-$(LOCAL_WEBHOOK_ADDRESS)} \
	  START_LINK_KEY=$${START_LINK_KEY:-$(LOCAL_START_LINK_KEY)} \
	  cargo run --quiet --bin akoauth -- start-link --cid $${CID:-con_0123456789abcdefghjkmnpqrs} --origin $${ORIGIN:-web}

## Tests.
test: deps test-rust test-browser

test-rust: deps-moto
	MOTO_SERVER=$(abspath $(MOTO)) cargo test --workspace --all-targets

test-browser: deps-moto deps-browser
	cargo build --bin local-stack
	MOTO_SERVER=$(abspath $(MOTO)) CHROMIUM=$(CHROMIUM) node $(BROWSER_DIR)/e2e.mjs

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

build:
	cargo build --release -p oauth-start -p oauth-redirect
	@ls -l target/release/oauth-start target/release/oauth-redirect | awk '{ printf "%-32s %6.2f MiB\n", $$9, $$5/1048576 }'

clean-local:
	rm -rf $(VENV) $(BROWSER_DIR)/node_modules
