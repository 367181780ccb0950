#!/bin/sh
# Run the detector flow with a recovery store in $AD_RECOVERY_DIR (created on first run).
set -eu
dir=${AD_RECOVERY_DIR:-/recovery}
parts=${AD_RECOVERY_PARTS:-4}
if [ -z "$(ls -A "$dir" 2>/dev/null)" ]; then
  mkdir -p "$dir"
  python -m bytewax.recovery "$dir" "$parts"
fi
workers=${AD_WORKERS:-2} snap=${AD_SNAPSHOT_S:-5} backup=${AD_BACKUP_S:-0}
# these configure this script, not the flow (which rejects unknown AD_ variables)
unset AD_RECOVERY_DIR AD_RECOVERY_PARTS AD_WORKERS AD_SNAPSHOT_S AD_BACKUP_S
exec python -m bytewax.run flows.detector -w "$workers" -r "$dir" -s "$snap" -b "$backup" "$@"
