#!/usr/bin/env bash
# Link-time stubs for the CUDA libraries that cudarc's `dynamic-linking` feature links against
# (libcuda, libnvrtc, libcurand, libcublas, libcublasLt), for building on a machine without the
# driver or those libraries. Each stub has the real library's SONAME and defines every function
# cudarc declares, so the binary records DT_NEEDED on the real names; the GPU machine's real
# libraries are loaded at run time (LD_LIBRARY_PATH=/usr/local/cuda/lib64). Never ship the stubs.
set -eu
DIR=${1:-/work/cuda-stubs}
SRC=$(ls -d ~/.cargo/registry/src/*/cudarc-0.19.10/src | head -1)
mkdir -p "$DIR"
for spec in driver:libcuda.so.1 nvrtc:libnvrtc.so.13 curand:libcurand.so.10 cublas:libcublas.so.13 cublaslt:libcublasLt.so.13; do
  m=${spec%%:*}; so=${spec#*:}; base=${so%%.so*}
  grep -oP 'load::<_F>\("\K\w+' "$SRC/$m/sys/mod.rs" | sort -u | sed 's/.*/void &(void){}/' > "$DIR/$base.c"
  gcc -shared -fPIC -o "$DIR/$so" -Wl,-soname,"$so" "$DIR/$base.c"
  ln -sf "$so" "$DIR/$base.so"
done
echo "stubs in $DIR"
