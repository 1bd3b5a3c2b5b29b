#!/usr/bin/env bash
# Runs on a CUDA machine from the repo root, with the binaries packed by tools/gpu/build.sh in .gpu/
# (msdm, gpu_parity). Writes logs to ${OUT:-gpu-out}/. Usage: tools/gpu/device_run.sh [parity] [bench]
set -u
OUT=${OUT:-gpu-out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
what=${*:-parity bench}
for f in .gpu/*.xz; do [ -e "$f" ] || continue; python3 -c 'import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],"wb"))' "$f" "${f%.xz}"; chmod +x "${f%.xz}"; done
ldd .gpu/msdm | grep -E 'not found|cuda|cublas|curand' | tee "$OUT/ldd.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/device.txt"
nproc >> "$OUT/device.txt"
if [[ $what == *parity* ]]; then
  MSDM_TEST_DEVICE=cuda MSDM_PARITY_DIR=$PWD/tests/fixtures/parity timeout 240 .gpu/gpu_parity --nocapture 2>&1 | tee "$OUT/parity.log"
fi
if [[ $what == *bench* ]]; then
  for dt in ${DTYPES:-f32 bf16 f16}; do
    timeout ${BENCH_TIMEOUT:-150} .gpu/msdm bench --device cuda --config paper --length 262144 --dtype "$dt" \
      --iters 10 ${BENCH_FLAGS:---window-separation} --json 2>&1 | tee "$OUT/bench-$dt.log"
  done
fi
