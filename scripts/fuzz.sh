#!/usr/bin/env bash
# Builds and runs the cargo-fuzz targets in fuzz/ for a bounded time each.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS per target (default $FUZZ_SECONDS or 60); targets default to all. FUZZ_RUNS=N stops
# a target after N inputs instead (the time bound still applies). Exits non-zero if any target
# crashes, panics, times out or runs out of memory; the input is left under
# $FUZZ_WORK_DIR/artifacts/<target>/ (replay: cargo fuzz run <target> <file>).
#
# The toolchain is stable: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags, and no
# sanitizer is used (-s none: the library has no unsafe code; panics and failed checks are
# what the targets look for).
# Builds go to $CARGO_TARGET_DIR/fuzz (outside the clone in CI), the growing corpus to
# $FUZZ_WORK_DIR; fuzz/corpus/<target>/ holds the committed seeds and is only read.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.2
ALL_TARGETS=(stomp_decoder destination sockjs_framing session)

seconds="${1:-${FUZZ_SECONDS:-60}}"
shift $(($# > 0 ? 1 : 0))
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    echo "== installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

target_dir="${FUZZ_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}/fuzz}"
work="${FUZZ_WORK_DIR:-$target_dir/work}"
export RUSTC_BOOTSTRAP=1
build=(-s none --codegen-units 16 --target-dir "$target_dir")

start=$(date +%s)
echo "== cargo fuzz build (${targets[*]})"
for t in "${targets[@]}"; do
    cargo fuzz build "${build[@]}" "$t"
done
echo "== fuzz build took $(($(date +%s) - start))s"

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    args=(
        -max_total_time="$seconds"
        -artifact_prefix="$work/artifacts/$t/"
        -dict="$PWD/fuzz/dict/stomp.dict"
        -timeout=10
        -rss_limit_mb=2048
        -print_final_stats=1
    )
    [ -z "${FUZZ_RUNS:-}" ] || args+=(-runs="$FUZZ_RUNS")
    echo "== fuzz $t for ${seconds}s"
    t0=$(date +%s)
    if cargo fuzz run "${build[@]}" "$t" "$work/corpus/$t" "$PWD/fuzz/corpus/$t" -- "${args[@]}"; then
        echo "== fuzz $t: no crash in $(($(date +%s) - t0))s"
    else
        echo "== fuzz $t: FAILED, input in $work/artifacts/$t/"
        failed+=("$t")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "== fuzzing found crashes in: ${failed[*]}"
    exit 1
fi
echo "== fuzzing passed (${targets[*]})"
