#!/bin/bash
# Run the detector flow with a recovery store in $AD_RECOVERY_DIR (created on first run),
# as AD_PROCESSES Bytewax processes (default auto: one per core the container may use;
# `-w` threads share one GIL, processes do not), AD_WORKERS workers each (default 1).
# Process i serves metrics on AD_METRICS_PORT + i. When one process ends, the others are
# stopped and the container exits with its status (the restart policy resumes it).
set -euo pipefail
py=${PYTHON:-python}
dir=${AD_RECOVERY_DIR:-/recovery}
parts=${AD_RECOVERY_PARTS:-4}
if [ -z "$(ls -A "$dir" 2>/dev/null)" ]; then
  mkdir -p "$dir"
  "$py" -m bytewax.recovery "$dir" "$parts"
fi
procs=${AD_PROCESSES:-auto} workers=${AD_WORKERS:-1} snap=${AD_SNAPSHOT_S:-5}
backup=${AD_BACKUP_S:-0} port=${AD_CLUSTER_PORT:-2101}
procs=$("$py" -c 'import sys; from control.launch import parse_processes as p; print(p(sys.argv[1]))' "$procs")
# these configure this script, not the flow (which warns about AD_ variables it does not know)
unset AD_RECOVERY_DIR AD_RECOVERY_PARTS AD_PROCESSES AD_WORKERS AD_SNAPSHOT_S AD_BACKUP_S AD_CLUSTER_PORT
echo "ad-entrypoint: $procs Bytewax process(es) x $workers worker(s), recovery in $dir" >&2
run=("$py" -m bytewax.run flows.detector -w "$workers" -r "$dir" -s "$snap" -b "$backup")
if [ "$procs" -le 1 ]; then
  exec "${run[@]}" "$@"
fi
addrs=""
for ((i = 0; i < procs; i++)); do addrs="${addrs:+$addrs;}127.0.0.1:$((port + i))"; done
pids=()
for ((i = 0; i < procs; i++)); do
  AD_PROCESS_ID=$i "${run[@]}" -i "$i" -a "$addrs" "$@" &
  pids+=("$!")
done
trap 'kill -INT "${pids[@]}" 2>/dev/null || true' INT TERM
status=0
wait -n "${pids[@]}" || status=$?
if [ "$status" -ne 0 ]; then  # a process failed (or we were signalled): stop the others
  kill -INT "${pids[@]}" 2>/dev/null || true
fi
for pid in "${pids[@]}"; do
  rc=0
  wait "$pid" || rc=$?
  if [ "$rc" -ne 127 ] && [ "$status" -eq 0 ]; then status=$rc; fi  # 127: reaped above
done
exit "$status"
