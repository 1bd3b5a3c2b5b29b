#!/usr/bin/env bash
# Builds the CUDA `msdm` binary and the gpu_parity test binary on a machine without a CUDA toolkit
# or GPU (see docs/gpu.md), and packs both, stripped and xz-compressed, into .gpu/ (git-ignored via
# .git/info/exclude) for tools/gpu/device_run.sh on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tools/gpu/env.sh
nice -n 10 cargo build --release -p msdm-cli --features cuda
test_bin=$(nice -n 10 cargo test --release -p msdm --features cuda --test gpu_parity --no-run 2>&1 \
  | grep -oP 'Executable tests/gpu_parity.rs \(\K[^)]+')
mkdir -p .gpu
grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
for pair in "$CARGO_TARGET_DIR/release/msdm:msdm" "$test_bin:gpu_parity"; do
  src=${pair%%:*}; name=${pair##*:}
  cp "$src" "/tmp/$name.stripped" && strip "/tmp/$name.stripped"
  xz -T2 -6 -c "/tmp/$name.stripped" > ".gpu/$name.xz"
done
ls -la .gpu
