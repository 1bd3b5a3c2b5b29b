//! The one rule that picks how an op call is computed: [`path_for`] looks at the call's input
//! tensors and names a [`Path`]; every op matches on it (see the module doc of [`crate::ops`]).

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Tensor};

/// How an op call is computed, from its inputs alone (see [`path_for`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Every input on the CPU, f32, none tracking a gradient, fast kernels on (inference): kernels
    /// over plain slices with no backward (large multithreaded gemms, fused norms).
    FastCpu,
    /// Every input on the CPU and f32, but some input tracks a gradient (training) or the fast
    /// kernels are off: custom ops with hand-written backward passes where an op has one.
    CpuGrad,
    /// Every input on CUDA in one float dtype (f32, bf16, f16), none tracking a gradient, fast
    /// kernels on, our PTX loads on this GPU: fused kernels (inference). Never chosen without the
    /// `cuda` feature.
    Cuda,
    /// Anything else (gradients off the CPU, other dtypes, Metal): candle's own ops only. They have
    /// correct gradients on every device and dtype, and every other form is tested against them.
    Composite,
}

/// The path for a call with these inputs (weights and biases included).
pub fn path_for(inputs: &[&Tensor]) -> Path {
    if composite_only() {
        return Path::Composite;
    }
    if inputs.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32) {
        return if fast_kernels() && inputs.iter().all(|t| !t.track_op()) { Path::FastCpu } else { Path::CpuGrad };
    }
    #[cfg(feature = "cuda")]
    if fast_kernels() && super::cuda::takes(inputs) {
        return Path::Cuda;
    }
    Path::Composite
}

/// 0: not yet decided (read `MSDM_OPS`), 1: fast kernels on, 2: off, 3: candle's ops only.
static FAST: AtomicU8 = AtomicU8::new(0);

/// Turns the inference kernels ([`Path::FastCpu`], [`Path::Cuda`]) on or off for the whole
/// process (they are on unless `MSDM_OPS` is `composite`). Off, CPU f32 calls take
/// [`Path::CpuGrad`] and the rest [`Path::Composite`].
pub fn set_fast_kernels(on: bool) {
    FAST.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether the inference kernels are enabled.
pub fn fast_kernels() -> bool {
    mode() == 1
}

/// Every call takes [`Path::Composite`], and training's fused loss stage and optimizer step
/// compose candle ops too: `MSDM_OPS=candle`, so that a whole training run can be compared with
/// one on candle's ops alone (docs/speed.md: the 200-step loss curves).
pub fn composite_only() -> bool {
    mode() == 3
}

fn mode() -> u8 {
    match FAST.load(Ordering::Relaxed) {
        0 => {
            let mode = match std::env::var("MSDM_OPS").as_deref() {
                Ok("composite") => 2,
                Ok("candle") => 3,
                _ => 1,
            };
            // a concurrent first call decides the same
            let _ = FAST.compare_exchange(0, mode, Ordering::Relaxed, Ordering::Relaxed);
            FAST.load(Ordering::Relaxed)
        }
        m => m,
    }
}
