#!/usr/bin/env bash
# The Ardour check with an AddressSanitizer-built plugin: Ardour itself is not instrumented, but with
# GCC's libasan preloaded every heap block (Ardour's too) gets red zones, and every load and store the
# plugin makes (nice-plug's VST3 wrapper included, which is compiled into the plugin) is checked. An
# out-of-bounds access or use-after-free aborts the session with ASan's report in the run's log.
#   tools/hosts/ardour_asan.sh [RUNS]      (after tools/hosts/asan_host.sh has built target/asan)
set -euo pipefail
cd "$(dirname "$0")/../.."
so=target/asan/x86_64-unknown-linux-gnu/debug/libmsdm_plugin.so
[ -f "$so" ] || { echo "no ASan build at $so: run tools/hosts/asan_host.sh (or its first cargo build) first"; exit 2; }
asan=$(ls /usr/lib/x86_64-linux-gnu/libasan.so.* 2>/dev/null | head -1)
[ -n "$asan" ] || { echo "no libasan: apt-get install libasan8"; exit 2; }
bundle=$(mktemp -d)/"MSDM Stems.vst3"
mkdir -p "$bundle/Contents/x86_64-linux"
cp "$so" "$bundle/Contents/x86_64-linux/MSDM Stems.so"
export ASAN_OPTIONS="detect_leaks=0:verify_asan_link_order=0:halt_on_error=1:abort_on_error=1"
ARDOUR_PRELOAD="$asan" tools/hosts/ardour_check.sh "${1:-3}" "$bundle"
