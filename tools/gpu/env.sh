# Source this to build with `--features cuda` on a machine WITHOUT a system CUDA toolkit:
# nvcc 13.0 and the CUDA runtime headers/libs come from PyPI wheels in a venv.
#   python3 -m venv /work/cuda-venv
#   /work/cuda-venv/bin/pip install nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 \
#       nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85
# (cccl provides <nv/target>, which cuda_fp16.h includes.)
# Match the toolkit to the target driver: driver 580 runs CUDA 13.0 PTX; newer nvcc emits PTX it rejects.
VENV=${CUDA_VENV:-/work/cuda-venv}
CUDA_HOME=$(echo "$VENV"/lib/python3*/site-packages/nvidia/cu13)
export CUDA_HOME CUDA_PATH=$CUDA_HOME
[ -e "$CUDA_HOME/lib/libcudart.so" ] || ln -s libcudart.so.13 "$CUDA_HOME/lib/libcudart.so"
export PATH=$CUDA_HOME/bin:$PATH
# link-time stubs of libcuda/libnvrtc/libcurand/libcublas(Lt): tools/gpu/make_stubs.sh
STUBS=${CUDA_STUBS:-/work/cuda-stubs}
[ -e "$STUBS/libcuda.so" ] || "$(dirname "${BASH_SOURCE[0]}")/make_stubs.sh" "$STUBS"
export LIBRARY_PATH=$CUDA_HOME/lib:$STUBS${LIBRARY_PATH:+:$LIBRARY_PATH}
export LD_LIBRARY_PATH=$CUDA_HOME/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}   # H100/H200; no GPU here to detect it
export CUDAFORGE_THREADS=${CUDAFORGE_THREADS:-2}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-cuda}
