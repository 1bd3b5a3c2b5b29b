#!/usr/bin/env bash
# The plugin and our CLAP host under AddressSanitizer: every host scenario (including `lifecycle`: 20
# load/render/destroy/unload cycles in one process) runs an ASan-built host that loads an ASan-built
# plugin, and the fast-kernel shape test runs ASan-built. Any heap overflow, use-after-free or double
# free aborts with ASan's report.
#   tools/hosts/asan_host.sh
# The sanitizer needs RUSTC_BOOTSTRAP on the stable toolchain and an explicit --target (so that
# proc-macros, which run inside the compiler, are built without it). Own target folder: target/asan.
set -euo pipefail
cd "$(dirname "$0")/../.."
export RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR=target/asan
# Leaks are not what this looks for (candle and rayon keep process-lifetime pools on purpose).
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=1}"
t=x86_64-unknown-linux-gnu
out=target/asan/$t/debug
cargo build --target $t -p msdm-plugin --features assert_process_allocs
# The host carries ASan's runtime (linked statically) and must export it to the plugin it dlopens;
# only the host binary gets the flag, so the dependencies' build is shared.
cargo rustc --target $t -p msdm-tests --bin plugin-scenario -- -C link-arg=-Wl,--export-dynamic
cargo test --target $t -p msdm --test kernel_shapes
work=$(mktemp -d)
cargo run -q --target $t -p msdm-cli -- import tests/fixtures/parity/msdm_tiny4/model.ckpt -o "$work/tiny.safetensors"
bad=0
for sc in ports separate impute state rate_change cancel cycles offline lifecycle; do
  steps=2; [ $sc = cancel ] && steps=2000
  rm -rf "$work/cache"
  if MSDM_PLUGIN_LIB="$PWD/$out/libmsdm_plugin.so" MSDM_MODEL="$work/tiny.safetensors" MSDM_CACHE_DIR="$work/cache" \
     MSDM_PLUGIN_STEPS=$steps MSDM_DEVICE=cpu "$out/plugin-scenario" $sc >"$work/$sc.log" 2>&1; then
    echo "$sc: passed under ASan"
  else
    bad=$((bad+1)); echo "$sc: FAILED (log: $work/$sc.log)"; grep -m3 -A5 AddressSanitizer "$work/$sc.log" || tail -5 "$work/$sc.log"
  fi
done
[ $bad = 0 ]
