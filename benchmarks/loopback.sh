#!/usr/bin/env bash
# Run a command with Ray's traffic kept on loopback: inside a private network namespace with only
# `lo` up (`unshare -n`, needs root), where Ray binds to 127.0.0.1; where that is not possible, as is.
# Usage: bash benchmarks/loopback.sh COMMAND [ARG...]     (the scripts here call it for every Ray run)
set -euo pipefail
if [ "$#" -eq 0 ]; then
  echo "usage: $0 COMMAND [ARG...]" >&2
  exit 2
fi
if unshare -n true 2>/dev/null; then
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' loopback "$@"
fi
exec "$@"
