#!/usr/bin/env bash
# End-to-end throughput and p99 of the native and WASM strategies through the real gateway:
# nginx (1 worker) answering `return 200` on two loopback ports, `sluice serve` (release) with
# one route per strategy and pool size, and wrk driving each route in alternating rounds.
#
#   bash benches/load/strategies.sh            # ROUNDS=3 DURATION=5s CONNS=32 THREADS=2
#   SIZES="16 10000" STRATEGIES="round-robin p2c-ewma consistent-hash" bash benches/load/strategies.sh
#
# SIZES (default 2): one service per size, its instances alternating between the same two
# upstream ports, so a large pool and a small one differ only in what the gateway does per
# instance. Bounded: ROUNDS x sizes x strategies x DURATION of load, loopback only. Needs nginx and wrk
# (Debian: nginx-light, wrk). Prints a markdown table.
set -euo pipefail
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-2}
STRATEGIES=${STRATEGIES:-"native-round-robin round-robin native-least-conn least-conn"}
SIZES=${SIZES:-2}

root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up1=$(free_port); up2=$(free_port); proxy=$(free_port); admin=$(free_port)

cat > "$work/nginx.conf" <<CONF
worker_processes 1;
error_log $work/nginx-error.log;
pid $work/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/body; proxy_temp_path $work/proxy;
  fastcgi_temp_path $work/fcgi; uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$up1; listen 127.0.0.1:$up2; location / { return 200 "ok\n"; } }
}
CONF
nginx -c "$work/nginx.conf" -p "$work"

for n in $SIZES; do
  printf '[services.bench%s]\ninstances = [\n' "$n"
  for i in $(seq 0 $((n - 1))); do
    printf '  { id = "i-%05d", addr = "127.0.0.1:%s" },\n' "$i" "$([ $((i % 2)) = 0 ] && echo "$up1" || echo "$up2")"
  done
  printf ']\n\n'
done > "$work/services.toml"
{
  printf '[proxy]\nlisten = ["127.0.0.1:%s"]\nthreads = %s\n\n' "$proxy" "$THREADS"
  printf '[admin]\nlisten = "127.0.0.1:%s"\n\n' "$admin"
  printf '[registry]\nkind = "file"\npath = "%s"\n\n[log]\nlevel = "warn"\n\n' "$work/services.toml"
  for n in $SIZES; do
    for s in $STRATEGIES; do
      printf '[[routes]]\npath_prefix = "/%s/%s"\nservice = "bench%s"\nstrategy = "%s"\nhash_on = "path"\n\n' "$n" "$s" "$n" "$s"
    done
  done
} > "$work/sluice.toml"

(cd "$root" && cargo build --release -q -p sluice)
"$root/target/release/sluice" serve --config "$work/sluice.toml" 2> "$work/sluice.log" &
pids+=($!)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null || { cat "$work/sluice.log"; exit 1; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $(date -u +%F)"
echo "command: ROUNDS=$ROUNDS DURATION=$DURATION CONNS=$CONNS THREADS=$THREADS SIZES=\"$SIZES\" STRATEGIES=\"$STRATEGIES\" bash benches/load/strategies.sh"
echo
echo "| round | pool | strategy | requests/s | p50 | p99 |"
echo "| --- | ---: | --- | --- | --- | --- |"
order=()
for n in $SIZES; do for s in $STRATEGIES; do order+=("$n/$s"); done; done
for round in $(seq "$ROUNDS"); do
  # Rotate the order every round, so no strategy always runs first or last.
  shift_by=$(( (round - 1) % ${#order[@]} ))
  rotated=("${order[@]:$shift_by}" "${order[@]:0:$shift_by}")
  for route in "${rotated[@]}"; do
    n=${route%%/*}; s=${route#*/}
    out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$proxy/$route/")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1 == "50%" {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    non2xx=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
    [ -n "$non2xx" ] && echo "warning: $route: $non2xx non-2xx responses" >&2
    echo "| $round | $n | $s | $rps | $p50 | $p99 |"
  done
done
echo
echo "requests that fell back to native round-robin, by strategy and reason (non-zero only):"
curl -s "http://127.0.0.1:$admin/metrics" | grep '^sluice_strategy_fallbacks_total' | awk '$2 != 0 {print "  " $0}'
echo "(end)"
