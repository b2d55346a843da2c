# The two commands a newcomer needs: `make demo` and `make test`. Both install what is
# missing (scripts/setup-host.sh), build what changed, and are cheap on a second run.
SHELL := /bin/bash
.DEFAULT_GOAL := demo
export KATA_RS_CACHE ?= /var/cache/kata-rs

HOST_ARCH := $(shell uname -m)
GUEST_ARCHES ?= x86_64 aarch64
PREFIX ?= /usr/local

.PHONY: setup build agent guest probe demo test unit e2e lint bench soak fuzz install uninstall clean

setup:
	@bash scripts/setup-host.sh

# Host binaries: the shim and kata-ctl.
build: setup
	@bash scripts/step.sh "build containerd-shim-kata-v2 and kata-ctl" \
	  cargo build --release -p containerd-shim-kata-v2

# Static guest agents, one per guest arch.
agent: setup
	@for a in $(GUEST_ARCHES); do \
	  bash scripts/step.sh "build kata-agent for $$a" bash scripts/build-agent.sh $$a || exit 1; \
	done

# Kernel + initrd per arch under build/guest/<arch>/, and build/configuration-qemu.toml.
guest: agent
	@bash scripts/build-guest.sh $(GUEST_ARCHES)

demo: build guest
	@bash scripts/demo.sh

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

unit: setup
	cargo test --workspace --exclude kata-e2e

# The isolation suite's probe: static, so it runs in any container image.
probe: setup
	@bash scripts/step.sh "build kata-vsock-probe" \
	  cargo build --release -p kata-vsock-probe --target $(HOST_ARCH)-unknown-linux-musl

e2e: build guest probe
	cargo test -p kata-e2e -- --test-threads=1 --nocapture

test: lint unit e2e

# 100 container cycles in one pod (no fd, thread or mount growth) and 10 sandboxes at once
# (nothing left after): tens of minutes under TCG, so not in `make test`. SOAK_CYCLES and
# SOAK_CONCURRENT override the counts.
soak: build guest probe
	cargo test -p kata-e2e --test soak -- --ignored --test-threads=1 --nocapture

# Start, exec, stdio and memory figures beside their references (the bare VM boot, runc, the
# raw vsock) measured in the same run, never asserted: build/bench/results.json and
# cold-start.png. BENCH_RUNS (default 7) sets the runs per figure.
bench: build guest probe
	@KATA_RS_BENCH=1 bash scripts/setup-host.sh
	@bash scripts/bench.sh $(BENCH_RUNS)

# What a hostile guest or a pod author feeds the runtime, under libFuzzer (not in `make test`).
fuzz: setup
	@bash scripts/fuzz.sh

install: build guest
	@bash scripts/install.sh install $(PREFIX)

uninstall:
	@bash scripts/install.sh uninstall $(PREFIX)

clean:
	rm -rf build target
