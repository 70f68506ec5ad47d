#!/usr/bin/env bash
# Builds and runs the gateway. With no arguments it uses the embedded default
# configuration (conf/lynkr.yaml) on 127.0.0.1:8080; arguments go to lynkr
# (e.g. `scripts/run.sh -c conf/lynkr.yaml`, `scripts/run.sh check-config FILE`).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cmake >/dev/null || ! command -v make >/dev/null; then   # Pingora's and jemalloc's builds
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq cmake make
  else sudo apt-get update -qq && sudo apt-get install -y -qq cmake make; fi
fi
cargo build --release --bin lynkr
exec target/release/lynkr "$@"
