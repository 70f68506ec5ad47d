#!/usr/bin/env bash
# Memory after many concurrent streams: rounds of N concurrent slow streams
# (a mock OpenAI upstream sends 20 chunks 50 ms apart) through Lynkr, each
# round over fresh connections; prints Lynkr's RSS at start, at the peak of
# each round, and once idle after it (7 s later: the idle trim runs every 5 s).
#
#   scripts/stream-rss.sh                 # 5 rounds of 1000 streams
#   ROUNDS=3 STREAMS=500 scripts/stream-rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
STREAMS=${STREAMS:-1000}
MOCK_PORT=${MOCK_PORT:-19110}
GW_PORT=${GW_PORT:-19111}
cargo build --release --quiet --bin lynkr --example mock_openai

work=$(mktemp -d)
cleanup() { kill "${mock_pid:-}" 2>/dev/null || true; kill -INT "${gw_pid:-}" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n 65536 2>/dev/null || true

MOCK_STREAM_CHUNKS=20 MOCK_STREAM_GAP_MS=50 target/release/examples/mock_openai "127.0.0.1:$MOCK_PORT" &
mock_pid=$!
cat >"$work/lynkr.yaml" <<YAML
server: {listen: ["127.0.0.1:$GW_PORT"], threads: 2, pid_file: $work/pid, upgrade_sock: $work/sock}
providers:
  mock: {base_url: "http://127.0.0.1:$MOCK_PORT/v1", model: gpt-bench}
models: {default: mock}
resilience: {load_shedding: {max_in_flight: 4096}}
YAML
LYNKR_LOG_LEVEL=warn "${LYNKR_BIN:-target/release/lynkr}" -c "$work/lynkr.yaml" 2>"$work/lynkr.log" &
gw_pid=$!
for _ in $(seq 100); do
  (echo >/dev/tcp/127.0.0.1/$GW_PORT) 2>/dev/null && break
  sleep 0.1
done
rss() { awk '/VmRSS/ {printf "%d MB", $2 / 1024}' "/proc/$gw_pid/status"; }
echo "idle at start: $(rss)"
python3 - "$GW_PORT" "$ROUNDS" "$STREAMS" "$gw_pid" <<'PY'
import asyncio, sys, time
port, rounds, streams, pid = (int(a) for a in sys.argv[1:])
body = b'{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Say hello"}]}'
request = (b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body)) + body

def rss():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024

async def one():
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(request)
    await w.drain()
    data = await asyncio.wait_for(r.read(), 60)
    w.close()
    return b"message_stop" in data

async def main():
    for n in range(rounds):
        peak = 0
        async def watch():
            nonlocal peak
            while True:
                peak = max(peak, rss())
                await asyncio.sleep(0.05)
        watcher = asyncio.create_task(watch())
        started = time.time()
        done = await asyncio.gather(*(one() for _ in range(streams)), return_exceptions=True)
        watcher.cancel()
        ok = sum(1 for d in done if d is True)
        took = time.time() - started
        await asyncio.sleep(7)
        print(f"round {n + 1}: {ok}/{streams} streams complete in {took:.1f} s, "
              f"peak {peak} MB, idle after {rss()} MB", flush=True)

asyncio.run(main())
PY
