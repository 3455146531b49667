# The README's two commands: `make demo` and `make test`. Both install what they need first.
SHELL := /bin/bash
SWIFT ?= swift
RELEASE_BIN := .build/release/sluice
PYTEST := .venv/bin/python -m pytest

.PHONY: all bootstrap build release bpf demo test unit-test e2e-test bench bench-l4 clean fuzz

all: release

bootstrap:
	@scripts/bootstrap

build: bootstrap bpf
	$(SWIFT) build

release: bootstrap bpf
	$(SWIFT) build -c release --product sluice

# Everything: unit tests (Swift Testing), then end-to-end tests against real servers
# (nginx, curl, namespaces) using the release binary, E2E_WORKERS at a time (pytest-xdist;
# each test has its own lab, pins and ports; 0 runs them one by one, in one process).
E2E_WORKERS ?= 2
test: release
	$(SWIFT) test
	SLUICE_BIN=$(RELEASE_BIN) $(PYTEST) -q -n $(E2E_WORKERS) Tests/EndToEnd

unit-test: bootstrap
	$(SWIFT) test

e2e-test: release
	SLUICE_BIN=$(RELEASE_BIN) $(PYTEST) -q -n $(E2E_WORKERS) Tests/EndToEnd

demo: release
	@scripts/demo

bench-l4: release
	@scripts/bootstrap --bench
	@bench/l4/run

# Every benchmark area in one run; writes bench/results/latest.md and latest.json.
bench: release
	@scripts/bootstrap --bench
	@bench/run

# Each fuzz target (Fuzz/) under libFuzzer + AddressSanitizer for FUZZ_SECONDS (default 60)
# on a copy of its seed corpus; built into .build-fuzz, apart from the normal build.
# Non-zero exit on a crash; the input is kept in Fuzz/findings/<target>/.
FUZZ_SECONDS ?= 60
fuzz: bootstrap
	@FUZZ_SECONDS=$(FUZZ_SECONDS) SWIFT=$(SWIFT) Fuzz/run

clean:
	rm -rf .build .build-fuzz

# The datapath's BPF object, compiled from source (never committed).
BPF_OBJECT := .build/bpf/sluice_tc.bpf.o
BPF_CLANG ?= clang
bpf: $(BPF_OBJECT)

$(BPF_OBJECT): bpf/sluice_tc.bpf.c bpf/include/sluice_datapath.h
	@mkdir -p $(dir $@)
	$(BPF_CLANG) -O2 -g -Wall -Werror -target bpf -I/usr/include/$(shell uname -m)-linux-gnu -Ibpf/include -c $< -o $@
