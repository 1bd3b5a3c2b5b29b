//! The score network's primitive ops. This is the only module that decides *how* a convolution, a
//! norm or an attention is computed; the network code ([`crate::unet`]) only says *what* is
//! computed. Tensors are `[batch, channels, time]` unless stated otherwise.
//!
//! # The rule
//!
//! Every op call asks [`path_for`] about its input tensors (weights and biases included) and
//! matches on the [`Path`] it returns, one arm per path, no catch-all:
//!
//! | path | when | what runs |
//! |---|---|---|
//! | [`Path::FastCpu`] | all inputs CPU f32, none tracks a gradient, fast kernels on | kernels over slices, no backward (inference) |
//! | [`Path::CpuGrad`] | all inputs CPU f32, otherwise (training, or fast kernels off) | custom ops with hand-written backward passes |
//! | [`Path::Cuda`] | all inputs CUDA, one float dtype, none tracks a gradient, fast kernels on, our PTX loads | fused kernels of kernels.cu, no backward (inference) |
//! | [`Path::Composite`] | anything else | candle ops only: gradients on every device and dtype |
//!
//! So gradients come from [`Path::CpuGrad`] or [`Path::Composite`] only, and every form is tested
//! against the composite one. `MSDM_OPS=candle` in the environment makes every call composite (and
//! training's fused loss stage and optimizer step too: whole runs against candle's ops alone).
//! `MSDM_OPS=composite` in the environment (or [`set_fast_kernels`])
//! turns the inference kernels off. What each op has on each path (one file per op family, its
//! CPU and CUDA forms side by side; "composite" where an op has no form of its own there):
//!
//! | op | file | FastCpu | CpuGrad | Cuda |
//! |---|---|---|---|---|
//! | [`Conv1d`] | conv.rs (+ conv_grad.rs) | gemm per tap | one op: gemm per tap, backward by hand | columns kernel → matmul → bias kernel |
//! | [`ConvTranspose1d`] | conv_transpose.rs (+ conv_grad.rs) | polyphase gemms | one op: polyphase gemms, backward by hand | as Conv1d, 3 columns |
//! | [`group_norm_scale_shift_silu`] | group_norm.rs (+ group_norm_grad.rs) | fused kernel | fused op, backward by hand | fused kernel |
//! | [`layer_norm_no_bias`] | layer_norm.rs (+ layer_norm_grad.rs) | one kernel | one op, backward by hand | one kernel |
//! | [`linear`] | linear.rs | weight read in place | composite | composite |
//! | [`attention`] | attention.rs (+ attention_grad.rs) | the CpuGrad op's forward | one op, backward by hand | softmax in the tensor's dtype |
//! | [`cat_scaled`] | cat_scaled.rs | composite | composite | one kernel |
//! | [`gelu`] | activation.rs | one vectorized pass | one op, one-pass backward | composite |
//! | [`patch`], [`unpatch`] | patch.rs | cpu.rs's transpose per channel | composite | composite |
//! | [`silu`], [`upsample_nearest`] | activation.rs, patch.rs | composite | composite | composite |
//!
//! The pieces of the gemm forms (columns.rs: im2col; channel.rs: per-channel bias and affine)
//! take the path of the op that uses them. Our convolutions never call candle's `conv1d` (its CPU
//! weight gradient is wrong for batch > 1) or `conv_transpose1d` (no backward; its CPU forward is
//! wrong for batch > 1).
//!
//! # Adding a kernel
//!
//! 1. In the op family's file (or a new `ops/<family>.rs`, declared and re-exported here), the
//!    public op calls `path_for(&[..every input..])` inside [`profile::time`] and gives each
//!    [`Path`] an arm. A path the op has no form for says so in its arm by calling the composite
//!    form; a form that does not take some shapes returns `None` and the arm falls back to it too.
//! 2. The composite form (`<op>_composite`, or `forward_composite` on a layer) uses candle ops
//!    only. It is the oracle: keep it.
//! 3. [`Path::FastCpu`]: a function over `&[f32]` in the family file, with cpu.rs's helpers
//!    (`with_f32`, `gemm_acc`, `filled_rows`); check every buffer against the shape with
//!    `expect_len` before any raw-pointer write.
//! 4. [`Path::CpuGrad`]: a candle `CustomOp` with `cpu_fwd` and `bwd` in the family file; a long
//!    backward goes to `<family>_grad.rs` (as group_norm_grad.rs does).
//! 5. [`Path::Cuda`]: the kernel in kernels.cu (for f32, bf16 and f16, suffixes `_f32`, `_bf16`,
//!    `_f16`), and in the family file a `#[cfg(feature = "cuda")] mod cuda` whose entry returns
//!    `Result<Option<Tensor>>`, built on cuda.rs's helpers (`func`, `with_slice`, `Kernel` and `Op`
//!    for one input). The arm reads
//!    `#[cfg(feature = "cuda")] if let Some(y) = cuda::op(..)? { return Ok(y); }` and then the
//!    composite form, so the build without CUDA compiles the same match.
//! 6. Tests: in the family file's `#[cfg(test)] mod tests`, each form against the composite form
//!    over several shapes (batch > 1, odd lengths; helpers in ops/tests.rs), and for a
//!    [`Path::CpuGrad`] form the gradient of every input too. CUDA forms against the CPU:
//!    `cuda_fused_ops_match_the_cpu` in engine/tests/gpu_parity.rs. The whole network, fast
//!    against composite: ops/tests.rs; its gradients: engine/tests/train_gradients.rs.
//!
//! Ops that only training uses (the loss stage, the weight average) live in [`crate::train`].
//! Threads: threads.rs ([`on_workers`], [`ComputePool`], [`configure_cpu_threads`]); time per op:
//! [`profile`] (`MSDM_OPS_PROFILE=1`).

mod activation;
mod attention;
mod attention_grad;
mod cat_scaled;
mod channel;
mod columns;
mod conv;
mod conv_grad;
mod conv_small;
mod conv_transpose;
pub(crate) mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod group_norm;
mod group_norm_grad;
mod layer_norm;
mod layer_norm_grad;
mod linear;
mod patch;
mod path;
pub mod profile;
mod simd;
mod threads;
#[cfg(test)]
mod tests;

pub use activation::{gelu, silu};
pub use attention::{attention, attention_composite};
pub use cat_scaled::{cat_scaled, cat_scaled_composite};
pub use conv::Conv1d;
pub use conv_transpose::ConvTranspose1d;
pub use group_norm::{group_norm_scale_shift_silu, group_norm_scale_shift_silu_composite};
pub use layer_norm::{layer_norm_no_bias, layer_norm_no_bias_composite};
pub use linear::{linear, linear_composite};
pub use patch::{patch, unpatch, upsample_nearest};
pub use path::{composite_only, fast_kernels, path_for, set_fast_kernels, Path};
pub use threads::{configure_cpu_threads, on_workers, ComputePool};

/// Group-norm epsilon and layer-norm epsilon of the reference (PyTorch defaults).
pub const NORM_EPS: f64 = 1e-5;
