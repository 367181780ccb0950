#!/bin/sh
# Run the detector flow with a recovery store in $AD_RECOVERY_DIR (created on first run).
set -eu
dir=${AD_RECOVERY_DIR:-/recovery}
parts=${AD_RECOVERY_PARTS:-4}
if [ -z "$(ls -A "$dir" 2>/dev/null)" ]; then
  mkdir -p "$dir"
  python -m bytewax.recovery "$dir" "$parts"
fi
unset AD_RECOVERY_DIR AD_RECOVERY_PARTS
exec python -m bytewax.run flows.detector -w "${AD_WORKERS:-2}" -r "$dir" \
  -s "${AD_SNAPSHOT_S:-5}" -b "${AD_BACKUP_S:-0}" "$@"
