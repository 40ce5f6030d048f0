#!/usr/bin/env bash
# JVM interop test of rpcenv-transport against Spark's own network-common (pyspark's jars):
#   1. Spark's TransportClient drives our examples/echo_server;
#   2. our examples/interop_client drives Spark's TransportServer with an echo RpcHandler;
#   3. with Spark's AES auth (AuthClientBootstrap / AuthServerBootstrap), for CTR and GCM and
#      engine versions 1 and 2, both directions (Spark client -> our echo_server, our
#      examples/echo_client -> Spark server), and a wrong secret refused both ways;
#   4. our echo_client over TLS against Spark's TLS server (spark.ssl.rpc.*, PEM, OpenSSL).
# Skips (exit 0) when java is absent. Installs pyspark into $ANCHORS_CACHE (default
# ~/.cache/rpcenv-anchors) when missing, as shared/anchors/spark-jvm does. Exits non-zero on any
# mismatch.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../../.." && pwd)"

if ! command -v java >/dev/null 2>&1 || ! command -v javac >/dev/null 2>&1; then
  echo "[interop] java/javac not found: skipping the JVM interop test"
  exit 0
fi

CACHE="${ANCHORS_CACHE:-$HOME/.cache/rpcenv-anchors}"
VENV="$CACHE/venv"
OUT="$CACHE/transport-interop"
find_jars() { ls -d "$VENV"/lib/python3*/site-packages/pyspark/jars 2>/dev/null | head -n 1 || true; }
JARS="$(find_jars)"
if [ -z "$JARS" ] || ! ls "$JARS"/spark-network-common_*.jar >/dev/null 2>&1; then
  echo "[interop] installing pyspark into $VENV" >&2
  mkdir -p "$CACHE"
  [ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV" >&2
  ok=
  for v in "${PYSPARK_VERSION:-4.3.0}" 4.2.1 4.1.1 4.0.1; do
    if "$VENV/bin/pip" install -q --no-deps "pyspark==$v" >&2; then ok=1; break; fi
  done
  [ -n "$ok" ] || { echo "[interop] could not install pyspark" >&2; exit 1; }
  JARS="$(find_jars)"
fi
CP="$OUT/classes:$JARS/*"

if [ ! -f "$OUT/classes/Interop.class" ] || [ "$HERE/src/Interop.java" -nt "$OUT/classes/Interop.class" ]; then
  echo "[interop] compiling the harness" >&2
  rm -rf "$OUT/classes"; mkdir -p "$OUT/classes"
  javac -nowarn -cp "$JARS/*" -d "$OUT/classes" "$HERE/src/Interop.java" >&2
fi

echo "[interop] building the Rust examples" >&2
(cd "$ROOT" && cargo build -q -p rpcenv-transport --example echo_server --example interop_client --example echo_client) >&2
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples"

JVM_FLAGS=(
  -Xmx1g -XX:+IgnoreUnrecognizedVMOptions
  --add-opens=java.base/java.lang=ALL-UNNAMED
  --add-opens=java.base/java.nio=ALL-UNNAMED
  --add-opens=java.base/sun.nio.ch=ALL-UNNAMED
  --add-opens=java.base/java.util.concurrent=ALL-UNNAMED
  -Dio.netty.tryReflectionSetAccessible=true
  -Dlog4j2.configurationFile="$HERE/conf/log4j2.properties"
  -Dlog4j2.disable.jmx=true
)

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Wait (up to 60 s) for "listening on HOST:PORT" as the first line of $1; print the port.
wait_port() {
  local file="$1" i line
  for i in $(seq 1 600); do
    line="$(head -n 1 "$file" 2>/dev/null || true)"
    case "$line" in
      "listening on "*) echo "${line##*:}"; return 0 ;;
    esac
    sleep 0.1
  done
  echo "[interop] no 'listening on' line in $file" >&2
  return 1
}

echo "[interop] 1/2: Spark TransportClient -> rpcenv echo_server"
"$TARGET/echo_server" --host 127.0.0.1 --port 0 >"$TMP/echo.out" 2>"$TMP/echo.err" &
PIDS+=($!)
PORT="$(wait_port "$TMP/echo.out")"
java "${JVM_FLAGS[@]}" -cp "$CP" Interop client "$PORT"

echo "[interop] 2/2: rpcenv TransportClient -> Spark TransportServer"
java "${JVM_FLAGS[@]}" -cp "$CP" Interop server >"$TMP/jvm.out" 2>"$TMP/jvm.err" &
PIDS+=($!)
PORT="$(wait_port "$TMP/jvm.out")" || { cat "$TMP/jvm.err" >&2; exit 1; }
"$TARGET/interop_client" --host 127.0.0.1 --port "$PORT"

stop_all() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  PIDS=()
}
stop_all

# Start our echo_server with the given flags; sets PORT. Not to be run inside $(...): the pid
# must reach this shell's PIDS, or the cleanup would leave the server running.
start_echo() {
  "$TARGET/echo_server" --host 127.0.0.1 --port 0 "$@" >"$TMP/echo.out" 2>"$TMP/echo.err" &
  PIDS+=($!)
  PORT="$(wait_port "$TMP/echo.out")"
}
# Start Spark's server with the given JVM properties; sets PORT (same rule as start_echo).
start_jvm() {
  java "${JVM_FLAGS[@]}" "$@" -cp "$CP" Interop server >"$TMP/jvm.out" 2>"$TMP/jvm.err" &
  PIDS+=($!)
  PORT="$(wait_port "$TMP/jvm.out")" || { cat "$TMP/jvm.err" >&2; return 1; }
}

APP=interop-app
SECRET=interop-secret
for cipher in ctr gcm; do
  for version in 1 2; do
    case $cipher in ctr) spark_cipher=AES/CTR/NoPadding ;; gcm) spark_cipher=AES/GCM/NoPadding ;; esac
    SPARK_AUTH=(
      -Dspark.network.crypto.enabled=true -Dspark.network.crypto.saslFallback=false
      -Dspark.network.crypto.cipher=$spark_cipher -Dspark.network.crypto.authEngineVersion=$version
      -Dinterop.appId=$APP
    )
    OURS=(--app-id $APP --cipher $cipher --auth-version $version)

    echo "[interop] auth $cipher v$version: Spark TransportClient + AuthClientBootstrap -> rpcenv echo_server"
    start_echo --secret $SECRET "${OURS[@]}"
    java "${JVM_FLAGS[@]}" "${SPARK_AUTH[@]}" -Dinterop.secret=$SECRET -cp "$CP" Interop client "$PORT"
    if [ "$cipher$version" = ctr1 ] || [ "$cipher$version" = gcm2 ]; then
      echo "[interop] auth $cipher v$version: Spark client with a wrong secret is refused"
      java "${JVM_FLAGS[@]}" "${SPARK_AUTH[@]}" -Dinterop.secret=wrong -cp "$CP" Interop client-auth-fail "$PORT"
    fi
    stop_all

    echo "[interop] auth $cipher v$version: rpcenv echo_client -> Spark TransportServer + AuthServerBootstrap"
    start_jvm "${SPARK_AUTH[@]}" -Dinterop.secret=$SECRET
    "$TARGET/echo_client" --host 127.0.0.1 --port "$PORT" --secret $SECRET "${OURS[@]}"
    if [ "$cipher$version" = ctr1 ] || [ "$cipher$version" = gcm2 ]; then
      echo "[interop] auth $cipher v$version: our client with a wrong secret is refused by Spark"
      if "$TARGET/echo_client" --host 127.0.0.1 --port "$PORT" --secret wrong "${OURS[@]}" >"$TMP/wrong.out" 2>&1; then
        cat "$TMP/wrong.out"; echo "[interop] MISMATCH: a wrong secret was accepted" >&2; exit 1
      fi
      grep -q "Authentication failed" "$TMP/wrong.out" || { cat "$TMP/wrong.out"; echo "[interop] MISMATCH: no 'Authentication failed' in the refusal" >&2; exit 1; }
      echo "ok our client refused: $(grep FAILED "$TMP/wrong.out" | head -n 1)"
    fi
    stop_all
  done
done

echo "[interop] TLS: rpcenv echo_client -> Spark TransportServer with spark.ssl.rpc.*"
DATA="$HERE/../tests/data"
start_jvm -Dspark.ssl.rpc.enabled=true -Dspark.ssl.rpc.openSslEnabled=true \
  -Dspark.ssl.rpc.protocol=TLSv1.3 -Dspark.ssl.rpc.privateKey="$DATA/server.key" \
  -Dspark.ssl.rpc.certChain="$DATA/server.pem"
"$TARGET/echo_client" --host 127.0.0.1 --port "$PORT" --tls --tls-ca "$DATA/ca.pem"
stop_all

echo "[interop] all directions passed (plain, auth CTR/GCM v1/v2, wrong secrets, TLS)"
