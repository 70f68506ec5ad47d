#!/usr/bin/env bash
# Load benchmark: Lynkr against a plain reverse-proxy hop (nginx) on the
# same bodies, to the same instant mock OpenAI upstream, in one run.
#
# Bodies: 22.5 KB (Claude-Code-like, 12 tools: benches/bodies/claude-code-22k.json)
# and 76 KB (fixture 01, 24 tools), each as JSON and as a stream; wrk with
# keep-alive at concurrency 1 and 32. For each: req/s and p50/p99 straight
# to the mock, through nginx and through Lynkr; the added p99 over the
# direct call; the throughput ratio Lynkr/nginx; CPU per request of each
# proxy (CPU seconds from /proc over requests served). Then Lynkr's RSS
# idle, after the load, and while holding 1,000 concurrent slow streams
# (scripts/stream-rss.sh, one round).
#
# Two more rows split Lynkr's cost: tiny-json (a 90-byte request: what any
# request costs, whatever its body) and 22k-pass (the 22.5 KB body to an
# Anthropic passthrough provider: patched in place, not translated).
#
# Then what keys cost (22k-keys): the 22.5 KB JSON body through Lynkr with
# auth.mode off and through a second Lynkr with auth.mode keys (1,000 keys
# in its store, the benchmark's key with three budgets, the ledger written),
# in alternating runs.
#
#   scripts/loadbench.sh                  # 8 s per run, about 4 minutes
#   DURATION=15 scripts/loadbench.sh
#   LYNKR_BIN=/path/to/other/lynkr scripts/loadbench.sh   # A/B another build
#   ONLY=22k-json scripts/loadbench.sh    # one row: (22k|76k)-(json|stream), tiny-json, 22k-pass, 22k-keys
#   ONLY=22k-keys KEYS_ROUNDS=5 scripts/loadbench.sh   # keys against off, 5 alternating rounds
#   PERF=1 ONLY=22k-json scripts/loadbench.sh
#       also `perf record -g` Lynkr during its concurrency-32 run and print the
#       top symbols (build it with `cargo build --profile profiling` and pass
#       LYNKR_BIN=target/profiling/lynkr for symbols); PERF_CALLGRAPH sets
#       perf's call-graph options (default -g; for Rust's async stacks use
#       PERF_CALLGRAPH="--call-graph dwarf,16384 -F 499")
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8}
MOCK_PORT=${MOCK_PORT:-19100}
GW_PORT=${GW_PORT:-19101}
NGINX_PORT=${NGINX_PORT:-19102}
KEYS_PORT=${KEYS_PORT:-19103}
LYNKR_BIN=${LYNKR_BIN:-target/release/lynkr}
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
cargo build --release --quiet --bin lynkr --example mock_openai

work=$(mktemp -d)
cleanup() {
  kill "${mock_pid:-}" 2>/dev/null || true
  kill -INT "${gw_pid:-}" 2>/dev/null || true   # SIGINT: Pingora's fast shutdown
  kill -INT "${keys_pid:-}" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The bodies: compact JSON, "stream" false and true.
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
bodies = {
    "22k": json.load(open("benches/bodies/claude-code-22k.json")),
    "76k": json.load(open("tests/fixtures/claude-code/01-main-request-tools.json"))["body"],
}
def write(name, body):
    with open(f"{work}/{name}.json", "w") as f:
        f.write(json.dumps(body, ensure_ascii=False, separators=(",", ":")))
for name, body in bodies.items():
    for mode, stream in (("json", False), ("stream", True)):
        write(f"{name}-{mode}", dict(body, stream=stream))
# The floor rows: a tiny request (the fixed cost of a request), and the
# 22.5 KB one sent to the Anthropic passthrough (the body patched, not
# translated; the mock answers /v1/messages as Anthropic).
write("tiny-json", {"model": "claude-bench", "max_tokens": 64,
                    "messages": [{"role": "user", "content": "Hello"}]})
write("22k-pass", dict(bodies["22k"], stream=False, model="pass-bench"))
PY

target/release/examples/mock_openai "127.0.0.1:$MOCK_PORT" &
mock_pid=$!

mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log $work/nginx/access.log;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  client_body_buffer_size 256k;
  client_max_body_size 10m;
  keepalive_requests 1000000;
  upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location = /v1/messages {
      proxy_pass http://mock/v1/chat/completions;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }
  }
}
NGINX
nginx -c "$work/nginx.conf" -g 'daemon on;'

cat >"$work/lynkr.yaml" <<YAML
server: {listen: ["127.0.0.1:$GW_PORT"], threads: 2, pid_file: $work/pid, upgrade_sock: $work/sock}
providers:
  mock: {base_url: "http://127.0.0.1:$MOCK_PORT/v1", model: gpt-bench}
  pass: {kind: anthropic, base_url: "http://127.0.0.1:$MOCK_PORT"}
models:
  default: mock
  routes: [{match: "pass-*", target: pass}]
YAML
LYNKR_LOG_FORMAT=json "$LYNKR_BIN" -c "$work/lynkr.yaml" 2>"$work/lynkr.log" &
gw_pid=$!
for _ in $(seq 100); do
  (echo >/dev/tcp/127.0.0.1/$GW_PORT) 2>/dev/null && (echo >/dev/tcp/127.0.0.1/$MOCK_PORT) 2>/dev/null &&
    (echo >/dev/tcp/127.0.0.1/$NGINX_PORT) 2>/dev/null && break
  sleep 0.1
done
sleep 1
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$gw_pid/status"; }
idle_rss=$(rss_mb)

for body in "$work"/*.json; do
  name=$(basename "$body" .json)
  cat >"$work/$name.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
local f = io.open("$body", "rb")
wrk.body = f:read("*a")
f:close()
LUA
done

# CPU seconds (user + system) of a process and its threads, or of nginx's workers.
cpu_ticks() {
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
nginx_pids() { pgrep -P "$(cat "$work/nginx.pid")" | tr '\n' ' '; }
to_us() { # wrk latency ("85.00us", "1.20ms", "2.00s") -> microseconds
  awk -v v="$1" 'BEGIN { n=v+0; if (v ~ /us$/) print n; else if (v ~ /ms$/) print n*1000; else print n*1000000 }'
}
TICK=$(getconf CLK_TCK)

# run NAME CONNS URL PIDS... -> sets rps p50 p99 cpu_us (CPU per request of PIDS)
run() {
  local name=$1 conns=$2 url=$3 lua=$4; shift 4
  local before after out requests
  before=$(cpu_ticks "$@")
  out=$(wrk -t1 -c"$conns" -d"${DURATION}s" --latency -s "$lua" "$url")
  after=$(cpu_ticks "$@")
  echo "$out" >"$work/$name.txt"
  if echo "$out" | grep -q "Non-2xx\|Socket errors"; then
    echo "$name: errors" >&2
    echo "$out" >&2
    exit 1
  fi
  rps=$(echo "$out" | awk '/Requests\/sec/ {printf "%d", $2}')
  requests=$(echo "$out" | awk '/requests in/ {print $1}')
  p50=$(to_us "$(echo "$out" | awk '$1=="50%" {print $2}')")
  p99=$(to_us "$(echo "$out" | awk '$1=="99%" {print $2}')")
  if [ $# -gt 0 ]; then
    cpu_us=$(awk -v t=$((after - before)) -v r="$requests" -v hz="$TICK" 'BEGIN {printf "%.0f", t / hz / r * 1e6}')
  else
    cpu_us=-
  fi
}

printf '| body | c | direct req/s | nginx req/s | Lynkr req/s | Lynkr/nginx | direct p99 | nginx added p99 | Lynkr added p99 | nginx CPU/req | Lynkr CPU/req |\n'
printf '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n'
for name in 22k-json 22k-stream 76k-json 76k-stream tiny-json 22k-pass; do
  if [ -n "${ONLY:-}" ] && [ "$ONLY" != "$name" ]; then continue; fi
  lua="$work/$name.lua"
  direct="http://127.0.0.1:$MOCK_PORT/v1/chat/completions"
  [ "$name" = 22k-pass ] && direct="http://127.0.0.1:$MOCK_PORT/v1/messages"
  # Warm up: pooled connections, allocator arenas.
  wrk -t1 -c32 -d2s -s "$lua" "http://127.0.0.1:$GW_PORT/v1/messages" >/dev/null
  wrk -t1 -c32 -d2s -s "$lua" "http://127.0.0.1:$NGINX_PORT/v1/messages" >/dev/null
  for c in 1 32; do
    run "$name-direct-$c" "$c" "$direct" "$lua"
    d_rps=$rps d_p99=$p99
    # shellcheck disable=SC2046
    run "$name-nginx-$c" "$c" "http://127.0.0.1:$NGINX_PORT/v1/messages" "$lua" $(nginx_pids)
    n_rps=$rps n_p99=$p99 n_cpu=$cpu_us
    if [ -n "${PERF:-}" ] && [ "$c" = 32 ]; then
      perf record ${PERF_CALLGRAPH:--g} -o "target/perf-$name.data" -p "$gw_pid" -- sleep "$((DURATION - 1))" 2>/dev/null &
      perf_pid=$!
    fi
    run "$name-lynkr-$c" "$c" "http://127.0.0.1:$GW_PORT/v1/messages" "$lua" "$gw_pid"
    if [ -n "${perf_pid:-}" ]; then
      wait "$perf_pid" || true
      unset perf_pid
      perf report -i "target/perf-$name.data" --no-children --sort symbol --percent-limit 0.7 --stdio 2>/dev/null |
        grep -E '^ +[0-9]' >"target/perf-$name.txt" || true
    fi
    g_rps=$rps g_p99=$p99 g_cpu=$cpu_us
    printf '| %s | %s | %s | %s | %s | %.2f | %s µs | %s µs | %s µs | %s µs | %s µs |\n' \
      "$name" "$c" "$d_rps" "$n_rps" "$g_rps" "$(awk -v g="$g_rps" -v n="$n_rps" 'BEGIN {print g / n}')" \
      "$d_p99" "$(awk -v a="$n_p99" -v b="$d_p99" 'BEGIN {printf "%.0f", a - b}')" \
      "$(awk -v a="$g_p99" -v b="$d_p99" 'BEGIN {printf "%.0f", a - b}')" "$n_cpu" "$g_cpu"
  done
done
echo

# What keys cost: the same gateway with auth.mode keys, against auth off.
if [ -z "${ONLY:-}" ] || [ "$ONLY" = 22k-keys ]; then
  sed -e "s/127.0.0.1:$GW_PORT/127.0.0.1:$KEYS_PORT/" -e "s|$work/pid|$work/keys.pid|" \
    -e "s|$work/sock|$work/keys.sock|" "$work/lynkr.yaml" >"$work/keys.yaml"
  printf 'store: {path: %s/keys.db}\nauth: {mode: keys}\n' "$work" >>"$work/keys.yaml"
  for i in $(seq 999); do
    "$LYNKR_BIN" keys create -c "$work/keys.yaml" --name "other-$i" --user "u$i" >/dev/null 2>&1
  done
  key=$("$LYNKR_BIN" keys create -c "$work/keys.yaml" --name bench --user bench --team bench \
    --budget-usd 1000000000 2>/dev/null)
  "$LYNKR_BIN" budgets set -c "$work/keys.yaml" --user bench --tokens 1000000000000 2>/dev/null
  "$LYNKR_BIN" budgets set -c "$work/keys.yaml" --team bench --requests 1000000000 2>/dev/null
  LYNKR_LOG_FORMAT=json "$LYNKR_BIN" -c "$work/keys.yaml" 2>"$work/keys.log" &
  keys_pid=$!
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$KEYS_PORT) 2>/dev/null && break; sleep 0.1; done
  sed "s/^wrk.body = /wrk.headers[\"x-api-key\"] = \"$key\"\nwrk.body = /" \
    "$work/22k-json.lua" >"$work/22k-keys.lua"
  wrk -t1 -c32 -d2s -s "$work/22k-keys.lua" "http://127.0.0.1:$KEYS_PORT/v1/messages" >/dev/null
  printf '| body | c | auth off req/s | auth keys req/s | keys/off | off CPU/req | keys CPU/req |\n'
  printf '| --- | --- | --- | --- | --- | --- | --- |\n'
  ratios_1="" ratios_32=""
  for round in $(seq "${KEYS_ROUNDS:-2}"); do
    for c in 1 32; do
      run "keys-off-$c-$round" "$c" "http://127.0.0.1:$GW_PORT/v1/messages" "$work/22k-json.lua" "$gw_pid"
      o_rps=$rps o_cpu=$cpu_us
      run "keys-on-$c-$round" "$c" "http://127.0.0.1:$KEYS_PORT/v1/messages" "$work/22k-keys.lua" "$keys_pid"
      ratio=$(awk -v k="$rps" -v o="$o_rps" 'BEGIN {printf "%.2f", k / o}')
      printf '| 22k-keys (round %s) | %s | %s | %s | %s | %s µs | %s µs |\n' "$round" "$c" "$o_rps" "$rps" \
        "$ratio" "$o_cpu" "$cpu_us"
      if [ "$c" = 1 ]; then ratios_1="$ratios_1 $ratio"; else ratios_32="$ratios_32 $ratio"; fi
    done
  done
  median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
  echo "keys/off, median over the rounds: c=1 $(echo "$ratios_1" | median), c=32 $(echo "$ratios_32" | median)"
  rows=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from usage').fetchone()[0])" "$work/keys.db")
  echo "ledger rows written by the keys gateway: $rows"
  echo
fi
if [ -n "${PERF:-}" ]; then
  for f in target/perf-*.txt; do echo "== $f (Lynkr, concurrency 32, self time)"; head -30 "$f"; done
fi
echo "Lynkr RSS: idle $idle_rss MB, after the load $(rss_mb) MB"
if [ -z "${ONLY:-}" ]; then
  kill -INT "$gw_pid" 2>/dev/null || true
  wait "$gw_pid" 2>/dev/null || true
  ROUNDS=1 STREAMS=1000 LYNKR_BIN="$LYNKR_BIN" scripts/stream-rss.sh
fi
