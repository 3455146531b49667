# The README's two commands: `make demo` and `make test`. Both install what they need first.
SHELL := /bin/bash
SWIFT ?= swift
RELEASE_BIN := .build/release/sluice
PYTEST := .venv/bin/python -m pytest

.PHONY: all bootstrap build release demo test unit-test e2e-test bench-l4 clean

all: release

bootstrap:
	@scripts/bootstrap

build: bootstrap
	$(SWIFT) build

release: bootstrap
	$(SWIFT) build -c release --product sluice

# Everything: unit tests (Swift Testing), then end-to-end tests against real servers
# (nginx, curl, namespaces) using the release binary.
test: release
	$(SWIFT) test
	SLUICE_BIN=$(RELEASE_BIN) $(PYTEST) -q Tests/EndToEnd

unit-test: bootstrap
	$(SWIFT) test

e2e-test: release
	SLUICE_BIN=$(RELEASE_BIN) $(PYTEST) -q Tests/EndToEnd

demo: release
	@scripts/demo

bench-l4: release
	@scripts/bootstrap --bench
	@bench/l4/run

clean:
	rm -rf .build
