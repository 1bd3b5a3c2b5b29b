#!/usr/bin/env bash
# Runs on a CUDA machine from the repo root, with the binaries packed by tools/gpu/build.sh in .gpu/
# (msdm, gpu_parity). Writes logs to ${OUT:-gpu-out}/.
# Usage: tools/gpu/device_run.sh [parity] [bench] [eager] [reference] [train]
#   parity:    engine/tests/gpu_parity.rs on the GPU (f32/f16/bf16, graph replays vs eager calls)
#   bench:     `msdm bench` on the paper config, one 262,144-sample window, per dtype in $DTYPES
#   eager:     the same with CUDA graphs off (MSDM_CUDA_GRAPH=0), for the first dtype
#   reference: the PyTorch reference on the same GPU (tools/bench/gpu_reference.py); needs the
#              wheels of audio-diffusion-pytorch 0.0.43 and einops-exts in .whl/ (see docs/gpu.md)
#   train:     `msdm train --device cuda`, 300 steps at batch 4 and 16, for tools/train/wide-sigma.json
#              (the bundled model's network) and wide128.json; needs a small mini-Slakh set in
#              $TRAIN_DATA (default .gpudata/data; the GPU machine has no SoundFont, see docs/gpu.md)
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
bench() { # dtype log-name
  timeout ${BENCH_TIMEOUT:-150} .gpu/msdm bench --device cuda --config paper --length 262144 --dtype "$1" \
    --iters 10 ${BENCH_FLAGS:---window-separation} --json 2>&1 | tee "$OUT/$2.log"
}
if [[ $what == *bench* ]]; then
  for dt in ${DTYPES:-f32 bf16 f16}; do bench "$dt" "bench-$dt"; done
fi
if [[ $what == *eager* ]]; then
  dt=${DTYPES:-f32}; dt=${dt%% *}
  MSDM_CUDA_GRAPH=0 bench "$dt" "bench-eager-$dt"
fi
if [[ $what == *reference* ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  timeout 120 .gpu/msdm bench --device cuda --config paper --length 65536 --iters 1 --save-model /tmp/paper.safetensors >/dev/null 2>&1
  PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout ${REF_TIMEOUT:-240} python3 tools/bench/gpu_reference.py \
    --model /tmp/paper.safetensors --length 262144 2>&1 | tee "$OUT/reference.log"
fi
if [[ $what == *train* ]]; then
  for cfg in wide-sigma wide128; do
    for b in 4 16; do
      rm -rf "/tmp/run-$cfg-$b"
      timeout ${TRAIN_TIMEOUT:-100} .gpu/msdm train --run-dir "/tmp/run-$cfg-$b" --data "${TRAIN_DATA:-.gpudata/data}" \
        --config "tools/train/$cfg.json" --window 65536 --batch "$b" --lr 3e-4 --min-duration 4 --steps 300 \
        --checkpoint-every 1000 --val-every 1000 --log-every 50 --device cuda --quiet 2>&1 | tail -2
      { echo "== $cfg batch $b"; tail -2 "/tmp/run-$cfg-$b/train.csv"; } | tee -a "$OUT/train.log"
    done
  done
fi
