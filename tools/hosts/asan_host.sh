#!/usr/bin/env bash
# The plugin and our CLAP host under AddressSanitizer: the host test suite (every scenario, including
# `lifecycle`: 20 load/render/destroy/unload cycles in one process) runs an ASan-built host that loads an
# ASan-built plugin, and the fast-kernel shape test runs ASan-built. Any heap overflow, use-after-free or
# double free aborts the scenario with ASan's report, which fails the test.
#   tools/hosts/asan_host.sh [EXTRA CARGO TEST ARGS]
# The sanitizer needs RUSTC_BOOTSTRAP on the stable toolchain and an explicit --target (so that
# proc-macros, which run inside the compiler, are built without it). Own target folder: target/asan.
set -euo pipefail
cd "$(dirname "$0")/../.."
export RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR=target/asan
# Leaks are not what this looks for (candle and rayon keep process-lifetime pools on purpose).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}"
t=x86_64-unknown-linux-gnu
cargo build --target $t -p msdm-plugin --features assert_process_allocs
export MSDM_PLUGIN_LIB="$PWD/target/asan/$t/debug/libmsdm_plugin.so"
cargo test --target $t -p msdm --test kernel_shapes "$@"
cargo test --target $t -p msdm-tests --test plugin_host "$@"
