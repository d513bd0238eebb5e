#!/usr/bin/env bash
# N refserver replicas on loopback ports behind smg (Shepherd Model Gateway), one machine.
#
#   deploy/local/fleet.sh start [N] [POLICY]   # N=3, POLICY=cache_aware (or round_robin, ...)
#   deploy/local/fleet.sh status
#   deploy/local/fleet.sh stop
#
# Environment: SMG (smg binary, default: smg on PATH), REFSERVER (default: refserver),
# GATEWAY_PORT (8080), BASE_PORT (first replica's port, 8081), SLOTS (-np, 2),
# RUN_DIR (pids and logs, /tmp/refserver-fleet), EXTRA (more refserver flags, e.g. "-m DIR").
# Each replica runs with -t 1 pinned to one core (taskset), round-robin over the cores.
set -euo pipefail

SMG=${SMG:-smg}
REFSERVER=${REFSERVER:-refserver}
GATEWAY_PORT=${GATEWAY_PORT:-8080}
BASE_PORT=${BASE_PORT:-8081}
SLOTS=${SLOTS:-2}
RUN_DIR=${RUN_DIR:-/tmp/refserver-fleet}
EXTRA=${EXTRA:-}

wait_for() {  # URL SECONDS: until it answers 200
  local url=$1 deadline=$((SECONDS + $2))
  until curl -sf -o /dev/null "$url"; do
    if ((SECONDS > deadline)); then echo "timed out waiting for $url" >&2; return 1; fi
    sleep 0.2
  done
}

start_replicas() {
  local n=$1 cores i port
  cores=$(nproc)
  for ((i = 0; i < n; i++)); do
    port=$((BASE_PORT + i))
    # shellcheck disable=SC2086  # REFSERVER and EXTRA are word lists
    taskset -c $((i % cores)) $REFSERVER --host 127.0.0.1 --port "$port" -t 1 -np "$SLOTS" \
      --metrics --metrics-compat vllm $EXTRA >"$RUN_DIR/replica-$port.log" 2>&1 &
    echo $! >"$RUN_DIR/replica-$port.pid"
  done
  for ((i = 0; i < n; i++)); do
    port=$((BASE_PORT + i))
    wait_for "http://127.0.0.1:$port/health" 120
    curl -sf -o /dev/null "http://127.0.0.1:$port/v1/models"  # first answers of a fresh process are slow
  done
}

start_gateway() {  # POLICY URL...: smg, started again if its discovery misses a worker's model
  local policy=$1 attempt
  shift
  for attempt in 1 2 3 4 5; do
    "$SMG" launch --host 127.0.0.1 --port "$GATEWAY_PORT" --worker-urls "$@" --policy "$policy" \
      --health-check-interval-secs 1 --health-check-timeout-secs 1 \
      --health-failure-threshold 1 --health-success-threshold 1 \
      --prometheus-host 127.0.0.1 --prometheus-port $((GATEWAY_PORT + 20000)) \
      --log-level warn >"$RUN_DIR/smg.log" 2>&1 &
    echo $! >"$RUN_DIR/smg.pid"
    wait_for "http://127.0.0.1:$GATEWAY_PORT/workers" 60
    sleep 2
    if curl -s "http://127.0.0.1:$GATEWAY_PORT/workers" | python3 -c '
import json, sys
workers = json.load(sys.stdin)["workers"]
sys.exit(not (len(workers) == int(sys.argv[1]) and all(w["model_id"] != "unknown" for w in workers)))' "$#"; then
      return 0
    fi
    echo "smg registered a worker without its model (attempt $attempt); starting it again" >&2
    stop_pid "$RUN_DIR/smg.pid"
  done
  return 1
}

stop_pid() {  # PIDFILE: SIGTERM (replicas drain), wait, remove
  local pid
  [[ -f $1 ]] || return 0
  pid=$(cat "$1")
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  rm -f "$1"
}

case ${1:-} in
  start)
    n=${2:-3}
    policy=${3:-cache_aware}
    mkdir -p "$RUN_DIR"
    start_replicas "$n"
    urls=()
    for ((i = 0; i < n; i++)); do urls+=("http://127.0.0.1:$((BASE_PORT + i))"); done
    start_gateway "$policy" "${urls[@]}"
    echo "gateway: http://127.0.0.1:$GATEWAY_PORT (policy $policy) -> ${urls[*]}; logs in $RUN_DIR"
    ;;
  status)
    curl -s "http://127.0.0.1:$GATEWAY_PORT/workers" | python3 -c '
import json, sys
for w in json.load(sys.stdin)["workers"]:
    print(w["url"], w["model_id"], "healthy" if w["is_healthy"] else "UNHEALTHY")'
    ;;
  stop)
    stop_pid "$RUN_DIR/smg.pid"
    for f in "$RUN_DIR"/replica-*.pid; do stop_pid "$f"; done
    ;;
  *)
    sed -n '2,12p' "$0"
    exit 2
    ;;
esac
