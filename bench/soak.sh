#!/usr/bin/env bash
# The soak: a local cluster (master + 3 workers on 127.0.0.1) under mixed asks, sends and task
# submissions, a worker SIGKILLed and restarted every 10 s; the master's RSS and descriptors are
# sampled every 5 s and a line fitted after a warm-up of a quarter of the run. Fails when RSS
# grows faster than 1 MiB/min, descriptors grow, or a task does not complete exactly once.
#
#   bash bench/soak.sh                                # 120 s, debug build (what CI runs)
#   PROFILE=release bash bench/soak.sh --duration 10m # the README's figures
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE="${PROFILE:-debug}"
if [ "$PROFILE" = release ]; then
  cargo build --release -p rpcenv-cli -p rpcenv-cluster-tests
else
  cargo build -p rpcenv-cli -p rpcenv-cluster-tests
fi
TARGET="${CARGO_TARGET_DIR:-target}"
exec "$TARGET/$PROFILE/cluster-soak" --rpcenv "$TARGET/$PROFILE/rpcenv" "$@"
