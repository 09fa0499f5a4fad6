#!/usr/bin/env bash
# Runs one command as an N-process JAX job on this machine: the local test of the multi-host path.
#
#   bash scripts/launch_local.sh N prm-jax score --checkpoint=runs/prm --input=s.jsonl --output=o.jsonl
#
# Process i gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES=N, JAX_PROCESS_ID=i (what every prm-jax
# command reads to start jax.distributed) and LOCAL_DEVICES (default 4) virtual CPU devices. As a pod
# scheduler would, it stops the others when one process fails or is killed, and exits with the
# first failure's status (128+signal for a kill). Ctrl-C / SIGTERM reach every process.
set -uo pipefail
if [ "$#" -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: bash scripts/launch_local.sh N COMMAND [ARGS...]   (N >= 1 processes)" >&2
  exit 2
fi
n="$1"; shift
port="${PRM_JAX_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}"
devices="${LOCAL_DEVICES:-4}"
pids=()
for ((i = 0; i < n; i++)); do
  JAX_COORDINATOR_ADDRESS="localhost:$port" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i" \
    JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$devices" "$@" &
  pids+=("$!")
done
stop_all() { for p in "${pids[@]}"; do kill "-$1" "$p" 2>/dev/null; done; }
trap 'stop_all TERM' TERM
trap 'stop_all INT' INT
status=0
left=("${pids[@]}")
while [ "${#left[@]}" -gt 0 ]; do
  wait -n -p finished "${left[@]}"
  rc=$?
  [ -z "${finished:-}" ] && continue  # a trapped signal interrupted wait
  rest=()
  for p in "${left[@]}"; do [ "$p" != "$finished" ] && rest+=("$p"); done
  left=("${rest[@]+"${rest[@]}"}")
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
    status="$rc"
    echo "launch_local: process pid $finished exited with $rc; stopping the others" >&2
    stop_all KILL
  fi
  unset finished
done
exit "$status"
