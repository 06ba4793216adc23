# llm-failover. `make demo` runs the local failover demo, `make test` runs every test.
# Both install what they need first (scripts/setup.sh).

WASM     := target/wasm32-wasip1/release/llm_failover.wasm
MOCK     := target/release/llm-mock
VENV     := .venv
PY       := $(VENV)/bin/python
# Pure-logic unit tests also run on the shipping target, in wasmtime (see README).
WASM_RUNNER := $(CURDIR)/$(PY) $(CURDIR)/tests/wasm_runner.py

.PHONY: all setup test-setup build render demo test unit-test wasm-test lint e2e bench fuzz soak clean

all: build

setup:
	@scripts/setup.sh

# wasm-opt -Oz (Debian binaryen) shrinks rustc's output by about 17%; the features listed
# are the ones rustc emits (with --all-features V8 refuses the module).
WASM_OPT_FLAGS := -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
                  --enable-mutable-globals --enable-simd

build: setup
	cargo build --release --target wasm32-wasip1 -p llm-failover
	wasm-opt $(WASM_OPT_FLAGS) $(WASM) -o $(WASM).opt && mv $(WASM).opt $(WASM)
	cargo build --release -p llm-mock -p llm-failover-render
	@# The native module (Envoy 1.40 dynamic modules): target/release-native/libllm_failover_native.so
	cargo build --profile release-native -p llm-failover-native
	@# For the FAIL_RELOAD test only: the same filter with a panic trigger.
	cargo build --release --target wasm32-wasip1 -p llm-failover --features test-panic --target-dir target/test-panic
	@ls -l $(WASM) | awk '{print "built $(WASM): " $$5 " bytes"}'

# Renders the shipped Envoy configurations (envoy/, compose/, k8s/envoy/) from their
# plugin configurations; the e2e tests fail while one differs.
render: build
	$(PY) scripts/render_shipped.py

# `make demo BUILD=native`: the same demo with the native module instead of the .wasm.
demo: build
	$(PY) scripts/demo.py $(if $(filter native,$(BUILD)),--native,)

unit-test: setup
	cargo test -p llm-failover-core -p llm-failover -p llm-failover-render -p llm-failover-native

wasm-test: setup
	CARGO_TARGET_WASM32_WASIP1_RUNNER="$(WASM_RUNNER)" cargo test --target wasm32-wasip1 -p llm-failover-core

lint: setup
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy -p llm-failover-core -p llm-failover -p noop-filter --all-targets --target wasm32-wasip1 -- -D warnings

# Every e2e test against the .wasm, then the suite again with router mode (the
# default) on the native module; tests marked wasm_only say why they are skipped there.
# Then the router-mode failover, streaming, latency, hedging and credential tests in
# the Istio wiring (render --istio as istiod would apply it, docs/istio.md), per-request control included.
ISTIO_E2E := tests/e2e/test_failover.py tests/e2e/test_streaming.py tests/e2e/test_stream_timeouts.py \
             tests/e2e/test_latency.py tests/e2e/test_hedge.py tests/e2e/test_secrets.py tests/e2e/test_control.py
e2e: build
	$(PY) -m pytest tests/e2e -q
	LLM_FAILOVER_BUILD=native $(PY) -m pytest tests/e2e -q -rs
	LLM_FAILOVER_WIRING=istio $(PY) -m pytest $(ISTIO_E2E) -q -rs

test-setup:
	@scripts/setup.sh --test

test: test-setup build lint unit-test wasm-test e2e

clean:
	cargo clean
	rm -rf $(VENV)

# Benchmark: llm-failover against Envoy without it (bench/run.py, about 4 minutes).
bench: build
	@command -v wrk >/dev/null || { echo "bench: installing wrk (Debian)"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk; }
	@$(PY) -c 'import matplotlib' 2>/dev/null || $(VENV)/bin/pip install -q --disable-pip-version-check -r bench/requirements.txt
	cargo build --release --target wasm32-wasip1 -p noop-filter
	$(PY) bench/run.py

# Coverage-guided fuzzing (cargo fuzz, libFuzzer) of the configuration parser, the body
# scanner and model edit (against serde_json), and the Retry-After/rate-limit/RFC 3339
# parsers: FUZZ_SECONDS each (10 minutes by default), then the corpus is minimised.
# fuzz/corpus/ is committed; `make test` runs every input in it (core/src/fuzz_checks.rs).
FUZZ_SECONDS ?= 600
FUZZ_TARGETS := config body headers
fuzz: setup
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	for t in $(FUZZ_TARGETS); do \
	  cargo +nightly fuzz run $$t fuzz/corpus/$$t -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 || exit 1; \
	  cargo +nightly fuzz cmin $$t fuzz/corpus/$$t || exit 1; \
	done

# The soak with faults (tests/soak/soak.py, about 3-5 minutes): writes SOAK.md. A short
# version (5,000 requests per mode) runs in `make test` (tests/e2e/test_soak.py).
soak: build
	$(PY) tests/soak/soak.py
