#!/usr/bin/env bash
# The dependency rules of the workspace (issue #13), checked with cargo tree
# (.ci/run runs this): what the product crate may not pull in.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
# deps PACKAGE FEATURE-ARGS...: the names of every crate PACKAGE builds on
# (normal dependencies only: no dev- or build-dependencies).
deps() {
    local pkg=$1
    shift
    cargo tree -q -p "$pkg" -e normal --prefix none "$@" | sed 's/ .*//' | sort -u
}
# forbid WHAT PACKAGE CRATE... -- FEATURE-ARGS...
forbid() {
    local what=$1 pkg=$2
    shift 2
    local crates=()
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do crates+=("$1"); shift; done
    [ "${1:-}" = "--" ] && shift
    local have
    have=$(deps "$pkg" "$@")
    for c in "${crates[@]}"; do
        if grep -qx "$c" <<<"$have"; then
            echo "check-deps: $what depends on $c" >&2
            cargo tree -q -p "$pkg" -e normal -i "$c" "$@" >&2 || true
            fail=1
        fi
    done
}
# The bench lab stays out of the product: `tern` never links tern-bench,
# nor the crates only the lab uses.
forbid "the tern crate (default features)" tern tern-bench tern-fleet json-patch hdrhistogram
forbid "the agent-only build" tern tern-bench json-patch -- --no-default-features --features agent
# flate2 only as tower-http's gzip for the web UI, never a direct dependency.
if cargo tree -q -p tern -e normal --depth 1 --prefix none | sed 's/ .*//' | grep -qx flate2; then
    echo "check-deps: the tern crate depends on flate2 directly" >&2
    fail=1
fi
# The protocol core does no I/O: no runtime, no Docker client, no
# database, no HTTP stack.
forbid "the protocol core (tern-proto)" tern-proto tokio bollard rusqlite axum hyper rustls mio -- --all-features
# Each role builds only what it uses: a server-only build has no Docker
# client, an agent-only build no database, router or templates.
forbid "the server-only build" tern bollard -- --no-default-features --features server
forbid "the agent-only build" tern rusqlite axum maud tower-http -- --no-default-features --features agent
[ "$fail" = 0 ] && echo "check-deps: the dependency rules hold"
exit "$fail"
