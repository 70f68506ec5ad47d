#!/usr/bin/env bash
# Runs every test, installing what the tests need first:
#   cmake (Pingora's build) and make (jemalloc's); prometheus and promtool (Debian package
#   `prometheus`: the real-scrape test and the alert rules check);
#   systemd-analyze (Debian package `systemd`: the unit file check);
#   the Anthropic Python SDK (pip), the Claude Code CLI (npm, into target/claude-code).
# Then: formatting, clippy, and all test targets (unit, integration, benches in test mode).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v make >/dev/null || missing+=(make)
command -v promtool >/dev/null || missing+=(prometheus)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
if ! python3 -c "import anthropic" 2>/dev/null; then
  python3 -m pip install --quiet anthropic
fi
CLAUDE_CODE_VERSION=2.1.197   # the version the fixtures were captured from
if ! target/claude-code/node_modules/.bin/claude --version 2>/dev/null | grep -q "$CLAUDE_CODE_VERSION"; then
  mkdir -p target/claude-code
  npm install --prefix target/claude-code --no-fund --no-audit --loglevel=error \
    "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION"
fi

cargo fmt --check
cargo clippy --release --all-targets --quiet -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --release --all-targets 2>&1 | tee "$log"
# One closing line over all test binaries (cargo prints one per binary,
# the last of which, the example's, runs none).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "lynkr: %d passed, %d failed\n", p, f }' "$log"
