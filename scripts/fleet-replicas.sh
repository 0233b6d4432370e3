#!/usr/bin/env bash
# The fleet simulator against two `tern server` replicas on one PostgreSQL
# database behind HAProxy (TCP mode, send-proxy-v2, as deploy/ has it), all
# on this machine: the README's two-replica rows.
#
#   scripts/fleet-replicas.sh postgres://tern@127.0.0.1:55432/postgres idle capacity
#
# DATABASE_ADMIN_URL is a PostgreSQL URL with the right to create a
# database (scripts/postgres.sh start prints one); each run gets a fresh
# database. Reports go to OUT (default target/fleet-bench/replicas-*.json).
set -euo pipefail
cd "$(dirname "$0")/.."
admin=${1:?usage: scripts/fleet-replicas.sh DATABASE_ADMIN_URL [idle] [capacity]}
shift
runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(idle capacity)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
out="${OUT:-$CARGO_TARGET_DIR/fleet-bench}"
mkdir -p "$out"
cargo build --release -q -p tern -p tern-fleet
bin="$CARGO_TARGET_DIR/release"
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for r in "${runs[@]}"; do
    db="tern_fleet_replicas_$$_$r"
    psql "$admin" -qc "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db"
    url="${admin%/*}/$db"
    p1=$(free_port) p2=$(free_port) front=$(free_port)
    mkdir -p "$work/$r/r1" "$work/$r/r2"
    # Replica 1 makes the identity, replica 2 gets a copy (a shared volume
    # in deploy/compose.yaml). HAProxy connects from 127.0.0.2.
    "$bin/tern" server --listen "127.0.0.1:$p1" --data "$work/$r/r1" --database "$url" \
        --proxy-protocol 127.0.0.2 >"$work/$r/r1.out" 2>"$work/$r/r1.log" &
    pids+=($!)
    for _ in $(seq 100); do grep -q "^listening on" "$work/$r/r1.out" 2>/dev/null && break; sleep 0.1; done
    cp "$work/$r/r1/"{cert.pem,key.pem,secret.key,admin-token} "$work/$r/r2/"
    "$bin/tern" server --listen "127.0.0.1:$p2" --data "$work/$r/r2" --database "$url" \
        --proxy-protocol 127.0.0.2 >"$work/$r/r2.out" 2>"$work/$r/r2.log" &
    pids+=($!)
    for _ in $(seq 100); do grep -q "^listening on" "$work/$r/r2.out" 2>/dev/null && break; sleep 0.1; done
    cat >"$work/$r/haproxy.cfg" <<EOF
defaults
  mode tcp
  timeout connect 2s
  timeout client 15m
  timeout server 15m
frontend tern
  bind 127.0.0.1:$front
  maxconn 100000
  default_backend replicas
backend replicas
  balance leastconn
  server r1 127.0.0.1:$p1 check inter 1s send-proxy-v2 check-send-proxy source 127.0.0.2
  server r2 127.0.0.1:$p2 check inter 1s send-proxy-v2 check-send-proxy source 127.0.0.2
EOF
    haproxy -f "$work/$r/haproxy.cfg" -db -q &
    pids+=($!)
    sleep 1
    fp=$(sed -n 's/^certificate sha256 //p' "$work/$r/r1.out")
    token=$(cat "$work/$r/r1/admin-token")
    common=(--server "https://127.0.0.1:$front" --token "$token" --fingerprint "$fp" --json)
    echo "== replicas-$r" >&2
    case "$r" in
    idle) "$bin/tern-fleet" "${common[@]}" --idle --agents 200 --duration 30 >"$out/replicas-idle.json" ;;
    capacity) "$bin/tern-fleet" "${common[@]}" --find-capacity --agents 2000 --change-share 0.01 \
        --command-rate 1 --reconnect-share 0.1 --start-rate 200 --step-duration 20 >"$out/replicas-capacity.json" ;;
    *) echo "unknown run $r" >&2; exit 2 ;;
    esac
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
    psql "$admin" -qc "DROP DATABASE IF EXISTS $db"
done
echo "reports in $out" >&2
