#!/usr/bin/env bash
# Load benchmark: a small non-streaming request, straight to a local mock
# OpenAI upstream and through Lynkr to the same mock, with wrk on 127.0.0.1.
# Prints p50/p99 for both, the added latency, and Lynkr's idle RSS.
#
#   scripts/loadbench.sh            # 15 s per run
#   DURATION=30 scripts/loadbench.sh
#   LYNKR_BIN=/path/to/other/lynkr scripts/loadbench.sh   # A/B another build
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15}
MOCK_PORT=${MOCK_PORT:-19100}
GW_PORT=${GW_PORT:-19101}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
cargo build --release --quiet --bin lynkr --example mock_openai

work=$(mktemp -d)
cleanup() { kill "${mock_pid:-}" "${gw_pid:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

target/release/examples/mock_openai "127.0.0.1:$MOCK_PORT" &
mock_pid=$!
cat >"$work/lynkr.yaml" <<YAML
server: {listen: ["127.0.0.1:$GW_PORT"], threads: 2, pid_file: $work/pid, upgrade_sock: $work/sock}
providers:
  mock: {base_url: "http://127.0.0.1:$MOCK_PORT/v1", model: gpt-bench}
models: {default: mock}
YAML
LYNKR_LOG_FORMAT=json "${LYNKR_BIN:-target/release/lynkr}" -c "$work/lynkr.yaml" 2>"$work/lynkr.log" &
gw_pid=$!
for _ in $(seq 100); do
  (echo >/dev/tcp/127.0.0.1/$GW_PORT) 2>/dev/null && (echo >/dev/tcp/127.0.0.1/$MOCK_PORT) 2>/dev/null && break
  sleep 0.1
done
sleep 2
idle_rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$gw_pid/status")

cat >"$work/direct.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"gpt-bench","max_tokens":64,"messages":[{"role":"user","content":"Say hello"}]}'
LUA
cat >"$work/gateway.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
wrk.body = '{"model":"claude-haiku-4-5","max_tokens":64,"messages":[{"role":"user","content":"Say hello"}]}'
LUA

# Warm up both paths (pooled connections, caches).
wrk -t1 -c1 -d2s -s "$work/direct.lua" "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" >/dev/null
wrk -t1 -c1 -d2s -s "$work/gateway.lua" "http://127.0.0.1:$GW_PORT/v1/messages" >/dev/null

run() { # name conns script url
  local out
  out=$(wrk -t1 -c"$2" -d"${DURATION}s" --latency -s "$3" "$4")
  echo "$out" >"$work/$1.txt"
  local p50 p99 rps
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  printf '%-10s c=%-3s p50=%-9s p99=%-9s req/s=%s\n' "$1" "$2" "$p50" "$p99" "$rps"
  if echo "$out" | grep -q "Non-2xx"; then echo "  errors: $(echo "$out" | grep Non-2xx)"; exit 1; fi
}
to_us() { # wrk latency ("85.00us", "1.20ms") -> microseconds
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else print n*1000000 }'
}

echo "== concurrency 1, ${DURATION}s each =="
run direct 1 "$work/direct.lua" "http://127.0.0.1:$MOCK_PORT/v1/chat/completions"
run gateway 1 "$work/gateway.lua" "http://127.0.0.1:$GW_PORT/v1/messages"
d99=$(to_us "$(awk '$1=="99%" {print $2}' "$work/direct.txt")")
g99=$(to_us "$(awk '$1=="99%" {print $2}' "$work/gateway.txt")")
echo "added p99 latency: $(awk -v g="$g99" -v d="$d99" 'BEGIN {printf "%.0f us", g-d}')"
echo "== concurrency 32 =="
run direct 32 "$work/direct.lua" "http://127.0.0.1:$MOCK_PORT/v1/chat/completions"
run gateway 32 "$work/gateway.lua" "http://127.0.0.1:$GW_PORT/v1/messages"
echo "idle RSS: $((idle_rss_kb / 1024)) MB ($idle_rss_kb kB)"
echo "busy RSS: $(( $(awk '/VmRSS/ {print $2}' "/proc/$gw_pid/status") / 1024 )) MB"
