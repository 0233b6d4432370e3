#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ for a given time each, keeping their
# corpora in fuzz/corpus/<target> and what crashes in fuzz/artifacts/<target>,
# then minimises each corpus (cargo fuzz cmin) and prints, per target, the
# executions, the corpus size and the crashes.
#
#   scripts/fuzz-campaign.sh [-t SECONDS] [-j JOBS] [-r RSS_MB] [-s] [TARGET...] [-- LIBFUZZER_ARGS...]
#
#   -t SECONDS  fuzzing time per target (default 1800)
#   -j JOBS     targets fuzzed at the same time, one process each (default 1)
#   -r RSS_MB   libFuzzer's memory limit per process (default 2048)
#   -s          (re)write the seed corpora first (fuzz/src/bin/seed.rs)
#   TARGET...   the targets to run (default: all of them but `seed`)
#   -- ARGS     passed to libFuzzer as they are (e.g. -max_len=65536)
#
# A crash does not end a target's time: the run restarts for the time left,
# up to MAX_CRASHES (default 20) crashes, each in fuzz/artifacts/<target>.
# Logs go to fuzz/target/campaign/<target>.log.
#
# New inputs are at most 64 KiB, and 4 KiB (libFuzzer's default) for the
# structured targets, whose large seeds' mutants otherwise fill the corpus
# (a state and a delta need no more), so that the committed corpus stays
# small; `-- -max_len=N` overrides it.
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`); runs on stable
# Rust through RUSTC_BOOTSTRAP=1 (cargo-fuzz uses nightly-only flags).
# On a shared machine, run it under `nice`.
set -euo pipefail

seconds=1800
jobs=1
rss=2048
seed=0
max_crashes=${MAX_CRASHES:-20}
usage() { sed -n '7,14p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while getopts "t:j:r:sh" opt; do
    case $opt in
        t) seconds=$OPTARG ;;
        j) jobs=$OPTARG ;;
        r) rss=$OPTARG ;;
        s) seed=1 ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
targets=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do targets+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
extra=("$@")
[[ $seconds =~ ^[0-9]+$ && $jobs =~ ^[1-9][0-9]*$ && $rss =~ ^[0-9]+$ ]] || usage

cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-campaign: cargo-fuzz is missing: cargo install cargo-fuzz --locked" >&2
    exit 2
fi
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list | grep -vx seed)
fi

cargo fuzz build
if [ $seed = 1 ]; then
    (cd fuzz && cargo run --release --bin seed)
fi
logs=fuzz/target/campaign
mkdir -p "$logs"

# Fuzzes one target for $seconds (restarting after a crash), minimises its
# corpus, and writes its summary line to $logs/<target>.summary.
campaign() {
    local t=$1 corpus=fuzz/corpus/$1 artifacts=fuzz/artifacts/$1
    local log=$logs/$t.log execs=0 crashes=0 left=$seconds start now rc n max_len=65536
    case $t in apply_delta | round_trip) max_len=4096 ;; esac
    mkdir -p "$corpus" "$artifacts"
    : >"$log"
    local before
    before=$(find "$artifacts" -maxdepth 1 -type f | sort)
    while [ "$left" -gt 0 ]; do
        start=$(date +%s)
        rc=0
        cargo fuzz run "$t" "$corpus" -- -max_total_time="$left" -rss_limit_mb="$rss" -timeout=30 -max_len="$max_len" \
            -print_final_stats=1 "${extra[@]}" >"$log.run" 2>&1 || rc=$?
        now=$(date +%s)
        left=$((left - (now - start)))
        n=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log.run" | grep -o '[0-9]*$' | tail -1 || true)
        execs=$((execs + ${n:-0}))
        cat "$log.run" >>"$log"
        echo "--- fuzz-campaign: run ended (rc $rc) ---" >>"$log"
        [ "$rc" = 0 ] && break
        if ! grep -q 'Test unit written to' "$log.run"; then
            echo "fuzz-campaign: $t stopped (rc $rc) without writing a crash; see $log" >&2
            break
        fi
        crashes=$((crashes + 1))
        if [ "$crashes" -ge "$max_crashes" ]; then
            echo "fuzz-campaign: $t: $crashes crashes, stopping it" >&2
            break
        fi
    done
    rm -f "$log.run"
    cargo fuzz cmin "$t" "$corpus" -- -rss_limit_mb="$rss" -timeout=30 >>"$log" 2>&1 ||
        echo "fuzz-campaign: cmin of $t failed; see $log" >&2
    local files bytes new
    files=$(find "$corpus" -type f | wc -l)
    bytes=$(du -sb "$corpus" | cut -f1)
    new=$(comm -13 <(echo "$before") <(find "$artifacts" -maxdepth 1 -type f | sort) | grep -v '^$' || true)
    printf '%-14s %12s %8s %10s %8s  %s\n' "$t" "$execs" "$files" "$bytes" "$crashes" \
        "$(echo "$new" | tr '\n' ' ')" >"$logs/$t.summary"
}

running=0
for t in "${targets[@]}"; do
    if [ "$running" -ge "$jobs" ]; then
        wait -n
        running=$((running - 1))
    fi
    echo "fuzz-campaign: $t for ${seconds}s (log: $logs/$t.log)"
    campaign "$t" &
    running=$((running + 1))
done
wait

printf '\n%-14s %12s %8s %10s %8s  %s\n' target executions files bytes crashes artifacts
for t in "${targets[@]}"; do
    cat "$logs/$t.summary" 2>/dev/null || printf '%-14s (no summary; see %s)\n' "$t" "$logs/$t.log"
done
