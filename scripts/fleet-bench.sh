#!/usr/bin/env bash
# The fleet simulator's benchmark runs (issue #15): release builds of
# `tern` and `tern-fleet`, then, each against a `tern server` of its own
# (SQLite in a temporary directory, 127.0.0.1), the runs the README's
# capacity table quotes. Each run's JSON report goes to OUT (default
# target/fleet-bench/), its table to the terminal.
#
#   scripts/fleet-bench.sh                 # all of them (about 25 minutes)
#   scripts/fleet-bench.sh idle capacity   # some of them
#   SERVER_ARGS="--database postgres://..." scripts/fleet-bench.sh idle
#
# idle       200 agents polling back to back on kept-alive connections: the
#            idle polls per second the server answers
# fleet-N    N agents (1000, 5000) at 60 s ±10 %, 1 % changing state per
#            interval, 1 command a second, 10 % reconnecting, 120 s measured
# hold-N     N agents (20000) at 240 s holding their connections: the
#            server's memory per connected agent, and its connection cap
#            (8,192); 240 s spreads the first contacts (about 100 full states
#            a second here)
# capacity   the largest fleet at 60 s holding p99 < 250 ms: 2,000 agents,
#            the poll rate stepped (see benches/fleet/src/capacity.rs)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
out="${OUT:-$CARGO_TARGET_DIR/fleet-bench}"
mkdir -p "$out"
cargo build --release -q -p tern -p tern-fleet
fleet="$CARGO_TARGET_DIR/release/tern-fleet"
extra=()
for a in ${SERVER_ARGS:-}; do extra+=("--server-arg=$a"); done

run() {
    local name=$1
    shift
    echo "== $name: tern-fleet --spawn $*" >&2
    "$fleet" --spawn "${extra[@]}" --json "$@" >"$out/$name.json"
}

runs=("$@")
[ ${#runs[@]} -gt 0 ] || runs=(idle fleet-1000 fleet-5000 capacity hold-20000)
for r in "${runs[@]}"; do
    case "$r" in
    idle) run idle --idle --agents 200 --duration 30 ;;
    fleet-*) run "$r" --agents "${r#fleet-}" --interval 60 --duration 120 --change-share 0.01 \
        --command-rate 1 --reconnect-share 0.1 ;;
    hold-*) run "$r" --agents "${r#hold-}" --interval 240 --duration 60 --change-share 0 ;;
    capacity) run capacity --find-capacity --agents 2000 --change-share 0.01 --command-rate 1 \
        --reconnect-share 0.1 --start-rate 200 --step-duration 20 ;;
    *) echo "unknown run $r" >&2; exit 2 ;;
    esac
done
echo "reports in $out" >&2
