#!/usr/bin/env bash
# make fuzz: builds the cargo-fuzz targets of fuzz/ once, then runs each for
# FUZZ_SECONDS (default 60) from its seed corpus (fuzz/corpus/<target>/, read
# only) plus a working corpus outside the tree; fails if any target crashes.
# A crash's input is kept in fuzz/artifacts/<target>/ (docs/fuzzing.md).
#
#   FUZZ_SECONDS=60        seconds per target
#   FUZZ_TARGETS="a b"     which targets (default: all of `cargo fuzz list`)
#   FUZZ_TARGET_DIR=...    build and working corpora (default /var/tmp/tps-fuzz-target)
#   FUZZ_NIGHTLY=0         use stable + RUSTC_BOOTSTRAP=1 even where nightly exists
#
# Toolchain: cargo fuzz needs nightly (-Z sanitizer flags). The rustup
# toolchain `nightly` is used when present; otherwise stable with
# RUSTC_BOOTSTRAP=1, which lets stable rustc take the same -Z flags.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_TARGET_DIR=${FUZZ_TARGET_DIR:-/var/tmp/tps-fuzz-target}
# The main workspace's CARGO_TARGET_DIR must not leak into this crate's build.
unset CARGO_TARGET_DIR

if [[ ${FUZZ_NIGHTLY:-1} != 0 ]] && rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
    echo "fuzz: toolchain nightly ($(rustup run nightly rustc --version))"
else
    toolchain=()
    export RUSTC_BOOTSTRAP=1
    echo "fuzz: stable with RUSTC_BOOTSTRAP=1 (no nightly toolchain, or FUZZ_NIGHTLY=0) ($(rustc --version))"
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi
echo "fuzz: $(cargo fuzz --version)"

# -a: debug assertions and overflow checks on (an overflow is a finding).
flags=(--debug-assertions --target-dir "$FUZZ_TARGET_DIR")
targets=${FUZZ_TARGETS:-$(cargo "${toolchain[@]}" fuzz list)}

t0=$SECONDS
echo "fuzz: building $(echo $targets)"
cargo "${toolchain[@]}" fuzz build "${flags[@]}"
echo "fuzz: built in $((SECONDS - t0))s"

mkdir -p "$FUZZ_TARGET_DIR/logs"
failed=()
for target in $targets; do
    work="$FUZZ_TARGET_DIR/corpus/$target"
    log="$FUZZ_TARGET_DIR/logs/$target.log"
    mkdir -p "$work" "corpus/$target"
    echo "fuzz: $target for ${FUZZ_SECONDS}s (log $log)"
    # New inputs go to the first corpus (the working one); the seeds stay as
    # they are. -timeout: one input taking 10 s is a finding too.
    if cargo "${toolchain[@]}" fuzz run "${flags[@]}" "$target" "$work" "corpus/$target" -- \
        -max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        echo "fuzz: $target ok: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)," \
            "corpus $(find "$work" -type f | wc -l) inputs"
    else
        failed+=("$target")
        echo "fuzz: $target FAILED; the end of its log:" >&2
        grep -vE '^#[0-9]+' "$log" | grep -vE '^ +([0-9]+: | +at )' | tail -n 40 >&2
        echo "fuzz: the input is in $(pwd)/artifacts/$target/; replay it with" >&2
        echo "  cd fuzz && cargo ${toolchain[*]} fuzz run $target artifacts/$target/<file>" >&2
    fi
done

if ((${#failed[@]})); then
    echo "fuzz: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: every target ran ${FUZZ_SECONDS}s without a crash ($((SECONDS - t0))s in all)"
