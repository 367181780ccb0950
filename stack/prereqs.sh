#!/usr/bin/env bash
# Debian packages the tests need beyond Python: redis-server (the Redis service) and
# docker-compose (validates docker-compose.yml; no Docker engine is needed for that).
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
# kubectl (offline manifest checks) ships with the Google Cloud SDK, like the emulator
command -v kubectl >/dev/null 2>&1 || {
  echo "[prereqs] ERROR: kubectl not found (apt-get install kubectl, or the google-cloud-cli kubectl component)" >&2
  exit 1; }
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[prereqs] ERROR: please install: ${missing[*]} (Debian/Ubuntu: apt-get install ${missing[*]})" >&2
  exit 1
fi
echo "[prereqs] installing ${missing[*]} from Debian" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 || {
  apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
