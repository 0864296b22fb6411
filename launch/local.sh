#!/usr/bin/env bash
# One multi-process diffjax job on this machine's CPU: the same code path as a multi-host pod
# (jax.distributed, per-process data loading, process-0-only logging), without a cluster.
#
#   launch/local.sh --num_processes=2 --devices_per_process=2 [--port=PORT] [--dry-run] \
#       -- --config=configs/digits.py:test --workdir=workdirs/local \
#          --config.mesh.data=2 --config.mesh.fsdp=2
#
# Each process simulates D CPU devices (XLA_FLAGS), uses gloo for cross-process collectives and
# finds the others through the coordinator at localhost:PORT (process 0 hosts it). Without
# --port a free port is picked, so two local jobs never join each other's coordinator. Output lines
# are prefixed with "[process i]". If one process fails the others are stopped (a JAX job cannot
# go on with a missing peer; left alone they would block in a collective until a timeout) and the
# script exits with that first non-zero code.
#
# Environment: PYTHON (default: the repository's .venv/bin/python if present, else python3);
# KILL_GRACE_S (seconds between SIGTERM and SIGKILL for the survivors, default 10).
set -euo pipefail

usage() {
  sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

num_processes=""
devices_per_process=""
port=""
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --num_processes=*) num_processes="${1#*=}" ;;
    --devices_per_process=*) devices_per_process="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --dry-run|--dry_run) dry_run=1 ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) echo "local.sh: unknown option '$1' (launcher options come before '--', training" \
            "arguments after it)." >&2; exit 2 ;;
  esac
  shift
done
train_args=("$@")

is_positive_int() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
if ! is_positive_int "$num_processes" || ! is_positive_int "$devices_per_process"; then
  echo "local.sh: --num_processes=N and --devices_per_process=D are required positive integers" \
       "(got '${num_processes}' and '${devices_per_process}')." >&2
  exit 2
fi
if [[ -z "$port" ]]; then
  # The kernel hands out an unused port; another job could take it before process 0 binds it,
  # but unlike a fixed default that needs a race, not just a second job.
  # (The system python3, not $PYTHON: any interpreter can ask the kernel for a port.)
  port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')"
fi
if ! [[ "$port" =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
  echo "local.sh: --port must be a TCP port number, got '$port'." >&2
  exit 2
fi
if [[ ${#train_args[@]} -eq 0 ]]; then
  echo "local.sh: no training arguments; pass them after '--', e.g." \
       "-- --config=configs/digits.py:test --workdir=workdirs/local" >&2
  exit 2
fi

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then PYTHON="$repo/.venv/bin/python"; else PYTHON=python3; fi
fi
kill_grace_s="${KILL_GRACE_S:-10}"

# The environment of process $1, as NAME=value words (printed by --dry-run, passed to env).
process_env() {
  local id="$1"
  printf '%s\n' \
    "JAX_PLATFORMS=cpu" \
    "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$devices_per_process" \
    "DIFFJAX_CPU_COLLECTIVES=gloo" \
    "DIFFJAX_COORDINATOR_ADDRESS=localhost:$port" \
    "DIFFJAX_NUM_PROCESSES=$num_processes" \
    "DIFFJAX_PROCESS_ID=$id"
}

# Shell words, single-quoted where needed: printed commands can be pasted back into a shell.
quote() {
  local words=() word
  for word in "$@"; do
    if [[ "$word" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then words+=("$word")
    else words+=("'${word//\'/\'\\\'\'}'"); fi
  done
  echo "${words[*]}"
}

command_for() {
  local id="$1"
  local -a words=()
  mapfile -t words < <(process_env "$id")
  quote env "${words[@]}" "$PYTHON" -m diffjax.main "${train_args[@]}"
}

if (( dry_run )); then
  echo "cd $(quote "$repo")"
  for (( i = 0; i < num_processes; i++ )); do
    echo "$(command_for "$i")  # process $i"
  done
  exit 0
fi

cd "$repo"
pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  local deadline=$(( SECONDS + kill_grace_s ))
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
# shellcheck disable=SC2329  # called by the trap below
on_signal() {
  echo "local.sh: interrupted; stopping all processes." >&2
  stop_all
  exit 130
}
trap on_signal INT TERM

for (( i = 0; i < num_processes; i++ )); do
  mapfile -t env_words < <(process_env "$i")
  # Output goes through a prefixing filter; $! stays the Python process, so we can wait on it.
  env "${env_words[@]}" "$PYTHON" -m diffjax.main "${train_args[@]}" \
    > >(sed -u "s/^/[process $i] /") 2>&1 &
  pids+=("$!")
done

# Poll rather than `wait -n`: we must know which process ended first, and stop the others then.
status=0
remaining=${#pids[@]}
declare -A finished=()
while (( remaining > 0 )); do
  for i in "${!pids[@]}"; do
    pid="${pids[$i]}"
    [[ -n "${finished[$i]:-}" ]] && continue
    kill -0 "$pid" 2>/dev/null && continue
    rc=0
    wait "$pid" || rc=$?
    finished[$i]=1
    remaining=$(( remaining - 1 ))
    if (( rc != 0 && status == 0 )); then
      status=$rc
      echo "local.sh: process $i exited with code $rc; stopping the others." >&2
      stop_all
    fi
  done
  (( remaining > 0 )) && sleep 0.2
done
trap - INT TERM
exit "$status"
