#!/usr/bin/env bash
# Creates the Python venv the reference scripts use (tools/parity/make_fixtures.py,
# tools/bench/compare.py, tools/bench/compare_train.py): torch 2.5.1, audio-diffusion-pytorch 0.0.43
# and its dependencies, safetensors and numpy, all from PyPI.
#
#   tools/bench/setup_pyenv.sh            # venv at /work/pyenv
#   PYENV=/some/dir tools/bench/setup_pyenv.sh
#
# Idempotent: when the venv already imports everything at the pinned versions it installs nothing.
# It prints every package it installs.
#
# torch 2.5.1's PyPI wheel for Linux x86-64 is the CUDA 12.4 build: it declares 12 nvidia-*-cu12
# wheels and triton (about 3 GB) as dependencies. We run it on the CPU only, so torch is installed
# with --no-deps plus its pure-Python dependencies. `import torch` still needs the CUDA libraries
# that libtorch_cuda.so, libtorch_cpu.so and libtorch_python.so link against (readelf -d: libcudart,
# libcupti, libcublas(Lt), libcudnn, libcufft, libcurand, libcusparse, libnccl; libcusparse needs
# libnvJitLink). When the import fails on one of those, this script installs the one wheel that
# ships it, pinned to the version torch 2.5.1 declares, with --no-deps, and tries again. Not needed
# for `import torch` (loaded lazily, only on a GPU): nvrtc, cusolver, nvtx, triton.
set -euo pipefail

PYENV="${PYENV:-/work/pyenv}"
PY="$PYENV/bin/python"

# Everything is pinned, so the venv is the same on every machine (versions that work with torch 2.5.1
# on Python 3.11).
TORCH="torch==2.5.1"
TORCH_DEPS=(filelock==3.20.0 typing-extensions==4.15.0 networkx==3.5 jinja2==3.1.6 MarkupSafe==3.0.3
            fsspec==2025.10.0 sympy==1.13.1 mpmath==1.3.0)
ADP="audio-diffusion-pytorch==0.0.43"
# audio-diffusion-pytorch 0.0.43 declares torch>=1.6, data-science-types>=0.2, einops>=0.4,
# einops-exts>=0.0.3; it is installed with --no-deps so pip does not try to pull torch's CUDA wheels.
ADP_DEPS=(einops==0.8.1 einops-exts==0.0.4 data-science-types==0.2.23)
# safetensors.torch imports packaging (declared only under safetensors' torch extra).
OTHERS=(safetensors==0.6.2 packaging==25.0 numpy==2.3.4)

# The CUDA runtime wheel for each library `import torch` may miss (versions from torch 2.5.1's metadata).
declare -A CUDA_WHEEL=(
    [libcudart]=nvidia-cuda-runtime-cu12==12.4.127
    [libcupti]=nvidia-cuda-cupti-cu12==12.4.127
    [libcublas]=nvidia-cublas-cu12==12.4.5.8
    [libcublasLt]=nvidia-cublas-cu12==12.4.5.8
    [libcudnn]=nvidia-cudnn-cu12==9.1.0.70
    [libcufft]=nvidia-cufft-cu12==11.2.1.3
    [libcurand]=nvidia-curand-cu12==10.3.5.147
    [libcusparse]=nvidia-cusparse-cu12==12.3.1.170
    [libnvJitLink]=nvidia-nvjitlink-cu12==12.4.127
    [libnccl]=nvidia-nccl-cu12==2.21.5
    [libnvrtc]=nvidia-cuda-nvrtc-cu12==12.4.127
    [libcusolver]=nvidia-cusolver-cu12==11.6.1.9
    [libnvToolsExt]=nvidia-nvtx-cu12==12.4.127
)

CHECK='
import torch, audio_diffusion_pytorch, safetensors, safetensors.torch, numpy, einops, einops_exts
from importlib.metadata import version
assert torch.__version__.split("+")[0] == "2.5.1", torch.__version__
assert version("audio-diffusion-pytorch") == "0.0.43", version("audio-diffusion-pytorch")
x = torch.randn(2, 3)
assert torch.allclose(x @ torch.eye(3), x)
adp = version("audio-diffusion-pytorch")
print(f"torch {torch.__version__}, audio-diffusion-pytorch {adp}, safetensors {safetensors.__version__}, "
      f"numpy {numpy.__version__} (CUDA build {torch.version.cuda}, CPU only here)")
'

if [[ -x "$PY" ]] && "$PY" -c "$CHECK" 2>/dev/null; then
    echo "$PYENV already has everything; nothing installed"
    exit 0
fi

pip_install() {
    echo "+ pip install $*"
    "$PY" -m pip install --quiet "$@"
}

[[ -x "$PY" ]] || { echo "+ python3 -m venv $PYENV"; python3 -m venv "$PYENV"; }
BEFORE=$("$PY" -m pip freeze --all 2>/dev/null | sort)

pip_install --no-deps "$TORCH" "${TORCH_DEPS[@]}"
pip_install --no-deps "$ADP" "${ADP_DEPS[@]}"
pip_install --no-deps "${OTHERS[@]}"

# `import torch` until it works: each failure names one shared library; install its wheel.
for _ in $(seq 1 ${#CUDA_WHEEL[@]}); do
    if err=$("$PY" -c 'import torch' 2>&1); then
        break
    fi
    lib=$(grep -oE 'lib[A-Za-z_]+\.so(\.[0-9]+)*: cannot open shared object file' <<<"$err" | head -1 | sed -E 's/\.so.*//') || true
    if [[ -z "$lib" || -z "${CUDA_WHEEL[$lib]:-}" ]]; then
        echo "import torch failed, and not on a CUDA library this script knows:" >&2
        echo "$err" >&2
        exit 1
    fi
    echo "import torch: $lib missing"
    pip_install --no-deps "${CUDA_WHEEL[$lib]}"
done

if ! "$PY" -c "$CHECK"; then
    echo "the venv at $PYENV still fails the import check" >&2
    exit 1
fi
echo "installed into $PYENV (new or changed versions):"
comm -13 <(echo "$BEFORE") <("$PY" -m pip freeze --all 2>/dev/null | sort) | sed 's/^/  /'
