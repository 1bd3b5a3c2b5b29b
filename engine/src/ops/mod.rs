//! The score network's primitive ops. This is the only module that decides *how* a convolution, a
//! norm or an attention is computed; the network code ([`crate::unet`]) only says *what* is computed.
//!
//! Two implementations of every heavy op:
//! - the **composite** path, built from candle operations that have correct gradients; it serves
//!   training (weights are `Var`s) and every non-CPU device and dtype (candle's own CPU `conv1d`
//!   has a wrong weight gradient for batch > 1 and `conv_transpose1d` has no backward; see
//!   `candle-notes.md`);
//! - the **fast** CPU f32 path ([`cpu`]): convolutions as sums of large multithreaded gemm calls
//!   over shifted views (no im2col for stride 1, no zero-stuffing), GroupNorm fused with its
//!   scale/shift and SiLU, LayerNorms in one kernel each. It is taken only when every input is a
//!   CPU f32 tensor that tracks no gradient (inference), so gradients always come from the
//!   composite path; its outputs match the composite path's to float rounding (tests below).
//!
//! `MSDM_OPS=composite` in the environment (or [`set_fast_kernels`]) turns the fast path off.
//!
//! Tensors are `[batch, channels, time]` unless stated otherwise.

mod average;
mod channel;
mod columns;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod edm_loss;
mod group_norm;
mod simd;
mod threads;
pub mod profile;

pub use average::moving_average;
pub use edm_loss::{edm_item_losses, fused_loss_applies, EdmLossCoefficients};
pub use threads::{configure_cpu_threads, on_workers, ComputePool};

use std::sync::atomic::{AtomicU8, Ordering};

use candle_core::{DType, Device, Result, Tensor, D};

/// Group-norm epsilon and layer-norm epsilon of the reference (PyTorch defaults).
pub const NORM_EPS: f64 = 1e-5;

/// 0: not yet decided (read `MSDM_OPS`), 1: fast kernels on, 2: off.
static FAST: AtomicU8 = AtomicU8::new(0);

/// Turns the fast CPU kernels on or off for the whole process (they are on unless `MSDM_OPS` is
/// `composite`).
pub fn set_fast_kernels(on: bool) {
    FAST.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether the fast CPU kernels are enabled.
pub fn fast_kernels() -> bool {
    match FAST.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = std::env::var("MSDM_OPS").map_or(true, |v| v != "composite");
            set_fast_kernels(on);
            on
        }
    }
}

/// Whether the fast CPU kernels may take these tensors: all on the CPU, f32, not tracking
/// gradients.
fn fast_path(ts: &[&Tensor]) -> bool {
    fast_kernels() && ts.iter().all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && !t.track_op())
}

fn fast_path_opt(ts: &[&Tensor], opt: &[Option<&Tensor>]) -> bool {
    fast_path(ts) && opt.iter().flatten().all(|t| fast_path(&[t]))
}

/// `y = x · Wᵀ + b` over the last dimension; `w` is `[out, in]` (PyTorch layout).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    profile::time(|| format!("linear {:?}x{:?}", x.dims(), w.dims()), || linear_dispatch(x, w, b))
}

fn linear_dispatch(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    if fast_path_opt(&[x, w], &[b]) && w.rank() == 2 && x.rank() >= 2 {
        let (d_out, d_in) = w.dims2()?;
        let dims = x.dims().to_vec();
        if dims[dims.len() - 1] == d_in && b.map_or(true, |b| b.dims() == [d_out]) {
            let rows = x.elem_count() / d_in.max(1);
            let y = cpu::with_f32(x, |xs| {
                cpu::with_f32(w, |ws| match b {
                    Some(b) => cpu::with_f32(b, |bs| Ok(cpu::linear(xs, rows, d_in, ws, d_out, Some(bs)))),
                    None => Ok(cpu::linear(xs, rows, d_in, ws, d_out, None)),
                })
            })?;
            let mut shape = dims;
            *shape.last_mut().expect("rank >= 2") = d_out;
            return Tensor::from_vec(y, shape, &Device::Cpu);
        }
    }
    linear_composite(x, w, b)
}

/// The differentiable version of [`linear`] (any device and dtype).
pub fn linear_composite(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = match x.rank() {
        2 => x.matmul(&w.t()?)?,
        _ => x.broadcast_matmul(&w.t()?)?,
    };
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// CPU f32: the columns come from one op with a direct backward ([`columns`]).
fn cpu_f32(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32
}

/// Columns for a stride-1 convolution with kernel `k` and symmetric padding `pad`:
/// `[B, C, L]` → `[B, C·k, L_out]`, row `c·k + j` holding `x_pad[c, j + t]`.
fn im2col(x: &Tensor, k: usize, pad: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    if k == 1 && pad == 0 {
        return Ok(x.clone());
    }
    if cpu_f32(x) {
        return columns::im2col(x, k, 1, pad);
    }
    #[cfg(feature = "cuda")]
    if let Some(cols) = cuda::im2col(x, k, 1, pad)? {
        return Ok(cols);
    }
    let xp = if pad > 0 { x.pad_with_zeros(2, pad, pad)? } else { x.clone() };
    let l_out = l + 2 * pad + 1 - k;
    let taps = (0..k).map(|j| xp.narrow(2, j, l_out)).collect::<Result<Vec<_>>>()?;
    Tensor::stack(&taps, 2)?.reshape((b, c * k, l_out))
}

/// Columns for a strided convolution with kernel `k`, stride `s` and padding `pad`, for input
/// lengths where `(L + 2·pad)` is a multiple of `s`.
fn im2col_strided(x: &Tensor, k: usize, s: usize, pad: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    let lp = l + 2 * pad;
    if lp % s != 0 || lp < k {
        candle_core::bail!("strided conv: padded length {lp} is not a multiple of the stride {s}");
    }
    if cpu_f32(x) {
        return columns::im2col(x, k, s, pad);
    }
    #[cfg(feature = "cuda")]
    if let Some(cols) = cuda::im2col(x, k, s, pad)? {
        return Ok(cols);
    }
    let l_out = (lp - k) / s + 1;
    // x_pad[o·s + j] = xr[o + j / s, j % s]
    let xr = x.pad_with_zeros(2, pad, pad)?.reshape((b, c, lp / s, s))?;
    let taps = (0..k)
        .map(|j| xr.narrow(2, j / s, l_out)?.narrow(3, j % s, 1)?.squeeze(3))
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&taps, 2)?.reshape((b, c * k, l_out))
}

/// `w · cols[b]` for every batch item: `w` `[M, K]`, `cols` `[B, K, N]` → `[B, M, N]`.
///
/// A batched matmul broadcasts `w`, and candle's backward then sums the `[B, M, K]` weight
/// gradient over the batch with a slow per-element loop. Where that sum is larger than the
/// columns and the output together (deep levels: many channels, short time), the batch is folded
/// into the time axis instead, `w · [cols[0] | cols[1] | …]`, one plain matmul whose weight
/// gradient is one gemm, at the price of two transposing copies. On a GPU the same fold pays at
/// inference too: cuBLAS runs B small products (N of 32 to 512) several times slower than one
/// product B times as wide (the paper network at batch 4 took 5.4 times its batch-1 time).
fn shared_weight_matmul(w: &Tensor, cols: &Tensor) -> Result<Tensor> {
    let (bsz, k, n) = cols.dims3()?;
    let m = w.dim(0)?;
    if bsz > 1 && (w.track_op() || !cols.device().is_cpu()) && m * k > (k + m) * n {
        let folded = cols.transpose(0, 1)?.contiguous()?.reshape((k, bsz * n))?;
        return w.matmul(&folded)?.reshape((m, bsz, n))?.transpose(0, 1)?.contiguous();
    }
    w.broadcast_matmul(cols)
}

/// A 1-D convolution with bias, weight `[C_out, C_in, k]` (PyTorch layout).
#[derive(Clone, Debug)]
pub struct Conv1d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv1d {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let name = || {
            let (co, ci, k) = self.weight.dims3().unwrap_or_default();
            format!("conv1d k{k} s{} {ci}->{co} L{}", self.stride, x.dim(2).unwrap_or(0))
        };
        profile::time(name, || {
            if fast_path_opt(&[x, &self.weight], &[self.bias.as_ref()]) {
                return self.forward_fast(x);
            }
            self.forward_composite(x)
        })
    }

    fn shape(&self, x: &Tensor) -> Result<cpu::ConvShape> {
        let (batch, c_in, len) = x.dims3()?;
        let (c_out, wc_in, kernel) = self.weight.dims3()?;
        if wc_in != c_in {
            candle_core::bail!("conv1d: input has {c_in} channels, the weight expects {wc_in}");
        }
        if self.stride == 0 || len + 2 * self.padding < kernel {
            candle_core::bail!("conv1d: input length {len} is too short for kernel {kernel} (padding {})", self.padding);
        }
        Ok(cpu::ConvShape { batch, c_in, len, c_out, kernel, stride: self.stride, padding: self.padding })
    }

    fn forward_fast(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.shape(x)?;
        let y = cpu::with_f32(x, |xs| {
            cpu::with_f32(&self.weight, |w| match &self.bias {
                Some(b) => cpu::with_f32(b, |b| Ok(cpu::conv1d(xs, w, Some(b), s))),
                None => Ok(cpu::conv1d(xs, w, None, s)),
            })
        })?;
        Tensor::from_vec(y, (s.batch, s.c_out, s.len_out()), &Device::Cpu)
    }

    /// The differentiable version (any device and dtype).
    pub fn forward_composite(&self, x: &Tensor) -> Result<Tensor> {
        let (c_out, c_in, k) = self.weight.dims3()?;
        let cols = if self.stride == 1 {
            im2col(x, k, self.padding)?
        } else {
            im2col_strided(x, k, self.stride, self.padding)?
        };
        let w = self.weight.reshape((c_out, c_in * k))?;
        let y = shared_weight_matmul(&w, &cols)?;
        match &self.bias {
            Some(b) => channel::add_channel(&y, b),
            None => Ok(y),
        }
    }
}

/// The reference `Upsample1d` transposed convolution (kernel 2f, stride f, padding f/2 + f%2,
/// output padding f%2; weight `[C_in, C_out, 2f]`), computed in polyphase form: output phase r
/// of each input step is a two-tap convolution, so all f phases are one matrix product over
/// three shifted copies of the input. Exact, with gradients, no zero-stuffing.
#[derive(Clone, Debug)]
pub struct ConvTranspose1d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub factor: usize,
    /// The phase matrix of inference weights (they never change), built once: about a dozen
    /// small kernels per call on a GPU otherwise.
    phases: std::sync::OnceLock<Tensor>,
}

impl ConvTranspose1d {
    /// Weight `[C_in, C_out, 2f]`, bias `[C_out]`, upsampling factor f.
    pub fn new(weight: Tensor, bias: Tensor, factor: usize) -> Self {
        Self { weight, bias, factor, phases: std::sync::OnceLock::new() }
    }

    /// The phase matrix: built at every call for weights that track gradients (training), once
    /// otherwise.
    fn phases(&self) -> Result<Tensor> {
        if self.weight.track_op() {
            return self.phase_matrix();
        }
        if let Some(p) = self.phases.get() {
            return Ok(p.clone());
        }
        let p = self.phase_matrix()?;
        Ok(self.phases.get_or_init(|| p).clone())
    }

    /// The `[C_out·f, C_in·3]` matrix mapping the three shifted inputs to the f output phases.
    fn phase_matrix(&self) -> Result<Tensor> {
        let (c_in, c_out, k) = self.weight.dims3()?;
        let f = self.factor;
        if k != 2 * f {
            candle_core::bail!("upsample kernel {k} does not match factor {f}");
        }
        let p = f / 2 + f % 2;
        // w_t[j] : [C_out, C_in]
        let wt = self.weight.permute((2, 1, 0))?; // [k, C_out, C_in]
        let zero = Tensor::zeros((c_out, c_in), self.weight.dtype(), self.weight.device())?;
        let mut rows = Vec::with_capacity(f);
        for r in 0..f {
            let j0 = (r + p) % f;
            let c = (r + p) / f;
            // offsets into the 1-padded input: tap a ∈ {0,1} uses weight j0 + a·f at offset c + 1 − a
            let mut blocks = vec![zero.clone(), zero.clone(), zero.clone()];
            for a in 0..2 {
                let off = c + 1 - a;
                blocks[off] = wt.get(j0 + a * f)?;
            }
            // [C_out, 3, C_in] → columns ordered (c_in, offset)
            let m = Tensor::stack(&blocks, 2)?; // [C_out, C_in, 3]
            rows.push(m.reshape((c_out, c_in * 3))?);
        }
        // rows ordered (c_out, phase)
        Tensor::stack(&rows, 1)?.reshape((c_out * f, c_in * 3))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let name = || format!("conv_transpose f{} {:?} L{}", self.factor, self.weight.dims(), x.dim(2).unwrap_or(0));
        profile::time(name, || {
            if fast_path(&[x, &self.weight, &self.bias]) {
                return self.forward_fast(x);
            }
            self.forward_composite(x)
        })
    }

    fn forward_fast(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c_in, l) = x.dims3()?;
        let (wc_in, c_out, k) = self.weight.dims3()?;
        let f = self.factor;
        if wc_in != c_in || k != 2 * f || f == 0 {
            candle_core::bail!("upsample: weight {:?} does not fit {c_in} input channels and factor {f}", self.weight.dims());
        }
        let y = cpu::with_f32(x, |xs| {
            cpu::with_f32(&self.weight, |w| {
                cpu::with_f32(&self.bias, |bias| Ok(cpu::conv_transpose1d(xs, w, bias, b, c_in, l, c_out, f)))
            })
        })?;
        Tensor::from_vec(y, (b, c_out, l * f), &Device::Cpu)
    }

    /// The differentiable version (any device and dtype).
    pub fn forward_composite(&self, x: &Tensor) -> Result<Tensor> {
        let (b, _c_in, l) = x.dims3()?;
        let f = self.factor;
        let c_out = self.weight.dim(1)?;
        let cols = im2col(x, 3, 1)?; // [B, C_in·3, L]
        let y = shared_weight_matmul(&self.phases()?, &cols)?; // [B, C_out·f, L]
        let y = y.reshape((b, c_out, f, l))?.transpose(2, 3)?.reshape((b, c_out, l * f))?;
        channel::add_channel(&y, &self.bias)
    }
}

/// Nearest-neighbour upsampling by `f` along time.
pub fn upsample_nearest(x: &Tensor, f: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    x.unsqueeze(3)?.broadcast_as((b, c, l, f))?.reshape((b, c, l * f))
}

/// GroupNorm with affine weight and bias, optionally followed by `h·(scale+1)+shift`
/// (`scale`, `shift`: `[B, C, 1]`) and SiLU — the pre-activation half of a ConvBlock1d.
pub fn group_norm_scale_shift_silu(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    scale_shift: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let (_, c, l) = x.dims3()?;
    if groups == 0 || c % groups != 0 {
        candle_core::bail!("group norm: {c} channels do not split into {groups} groups");
    }
    let name = || format!("group_norm_silu C{c} L{l}");
    profile::time(name, || group_norm_dispatch(x, groups, weight, bias, scale_shift))
}

fn group_norm_dispatch(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    scale_shift: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    let ss_tensors: Vec<&Tensor> = scale_shift.map_or(vec![], |(a, b)| vec![a, b]);
    if fast_path(&[x, weight, bias]) && ss_tensors.iter().all(|t| fast_path(&[t])) {
        let y = cpu::with_f32(x, |xs| {
            cpu::with_f32(weight, |w| {
                cpu::with_f32(bias, |bi| match scale_shift {
                    Some((scale, shift)) => {
                        let (scale, shift) = (scale.broadcast_as((b, c, 1))?, shift.broadcast_as((b, c, 1))?);
                        cpu::with_f32(&scale, |sc| {
                            cpu::with_f32(&shift, |sh| Ok(cpu::group_norm(xs, b, c, l, groups, w, bi, Some((sc, sh)), NORM_EPS, true)))
                        })
                    }
                    None => Ok(cpu::group_norm(xs, b, c, l, groups, w, bi, None, NORM_EPS, true)),
                })
            })
        })?;
        return Tensor::from_vec(y, (b, c, l), &Device::Cpu);
    }
    #[cfg(feature = "cuda")]
    if let Some(y) = cuda::group_norm_silu(x, groups, weight, bias, scale_shift, NORM_EPS)? {
        return Ok(y);
    }
    // Training on the CPU: one op with a hand-written backward.
    if let Some(y) = group_norm::group_norm_silu(x, groups, weight, bias, scale_shift)? {
        return Ok(y);
    }
    group_norm_scale_shift_silu_composite(x, groups, weight, bias, scale_shift)
}

/// The differentiable version of [`group_norm_scale_shift_silu`] (any device and dtype).
pub fn group_norm_scale_shift_silu_composite(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    scale_shift: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    let xg = x.reshape((b, groups, (c / groups) * l))?;
    let mean = xg.mean_keepdim(2)?;
    let xc = xg.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(2)?;
    let xn = xc.broadcast_div(&(var + NORM_EPS)?.sqrt()?)?.reshape((b, c, l))?;
    let mut h = channel::affine_channel(&xn, &weight.reshape(c)?, &bias.reshape(c)?)?;
    if let Some((scale, shift)) = scale_shift {
        h = h.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?;
    }
    h.silu()
}

/// The library's LayerNorm without bias over dimension `dim` (biased variance, eps 1e-5);
/// `g` broadcasts against `x`.
pub fn layer_norm_no_bias(x: &Tensor, g: &Tensor, dim: D) -> Result<Tensor> {
    profile::time(|| format!("layer_norm {:?}", x.dims()), || layer_norm_dispatch(x, g, dim))
}

fn layer_norm_dispatch(x: &Tensor, g: &Tensor, dim: D) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.rank() == 3 {
        let d = candle_core::shape::Dim::to_index(&dim, x.shape(), "layer_norm")?;
        if let Some(y) = cuda::layer_norm(x, g, d, NORM_EPS)? {
            return Ok(y);
        }
    }
    if fast_path(&[x, g]) && x.rank() == 3 {
        let (b, c, l) = x.dims3()?;
        let rank = x.rank();
        let d = candle_core::shape::Dim::to_index(&dim, x.shape(), "layer_norm")?;
        if d == rank - 2 && g.elem_count() == c {
            let y = cpu::with_f32(x, |xs| cpu::with_f32(g, |gs| Ok(cpu::layer_norm_channels(xs, b, c, l, gs, NORM_EPS))))?;
            return Tensor::from_vec(y, (b, c, l), &Device::Cpu);
        }
        if d == rank - 1 && g.elem_count() == l {
            let y = cpu::with_f32(x, |xs| cpu::with_f32(g, |gs| Ok(cpu::layer_norm_last(xs, l, gs, NORM_EPS))))?;
            return Tensor::from_vec(y, (b, c, l), &Device::Cpu);
        }
    }
    layer_norm_no_bias_composite(x, g, dim)
}

/// The differentiable version of [`layer_norm_no_bias`] (any device and dtype).
pub fn layer_norm_no_bias_composite(x: &Tensor, g: &Tensor, dim: D) -> Result<Tensor> {
    let mean = x.mean_keepdim(dim)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(dim)?;
    xc.broadcast_div(&(var + NORM_EPS)?.sqrt()?)?.broadcast_mul(g)
}

/// Exact (erf) GELU, as `nn.GELU()`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    profile::time(|| format!("gelu {:?}", x.dims()), || x.gelu_erf())
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

/// Multi-head attention core on `[B, T, H·D]` queries/keys/values, heads split as `(h d)` with the
/// head index major; `q` is scaled by `D^-½` before `q·kᵀ`, softmax in f32 over keys.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    profile::time(|| format!("attention {:?}", q.dims()), || attention_composite(q, k, v, heads))
}

/// The differentiable attention core (any device and dtype).
pub fn attention_composite(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, hd) = q.dims3()?;
    let d = hd / heads;
    let split = |x: &Tensor| -> Result<Tensor> {
        let tk = x.dim(1)?;
        x.reshape((b, tk, heads, d))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let q = (q * (d as f64).powf(-0.5))?;
    let sim = q.matmul(&k.t()?)?;
    let dtype = sim.dtype();
    #[cfg(feature = "cuda")]
    let fused = cuda::inference(&sim);
    #[cfg(not(feature = "cuda"))]
    let fused = false;
    let attn = if fused {
        // one kernel, f32 accumulation, output in the tensor's dtype
        candle_nn::ops::softmax_last_dim(&sim)?
    } else {
        candle_nn::ops::softmax(&sim.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(dtype)?
    };
    let out = attn.matmul(&v)?; // [B, H, T, D]
    out.transpose(1, 2)?.reshape((b, t, hd))
}

/// `[x, skip · scale]` along the channels (a U-Net skip connection, scaled).
pub fn cat_scaled(x: &Tensor, skip: &Tensor, scale: f64) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let Some(y) = cuda::cat_scaled(x, skip, scale)? {
        return Ok(y);
    }
    if scale == 1.0 {
        return Tensor::cat(&[x, skip], 1);
    }
    Tensor::cat(&[x, &(skip * scale)?], 1)
}

/// `[B, C, L]` → `[B, C·p, L/p]` with `out[c·p + i, l] = x[c, l·p + i]`.
pub fn patch(x: &Tensor, p: usize) -> Result<Tensor> {
    profile::time(|| format!("patch {:?}", x.dims()), || patch_composite(x, p))
}

fn patch_composite(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    x.reshape((b, c, l / p, p))?.transpose(2, 3)?.reshape((b, c * p, l / p))
}

/// Inverse of [`patch`].
pub fn unpatch(x: &Tensor, p: usize) -> Result<Tensor> {
    profile::time(|| format!("unpatch {:?}", x.dims()), || unpatch_composite(x, p))
}

fn unpatch_composite(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, cp, l) = x.dims3()?;
    x.reshape((b, cp / p, p, l))?.transpose(2, 3)?.reshape((b, cp / p, l * p))
}


#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v = crate::noise::SeededNoise::new(seed).standard_normal(n);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn conv1d_matches_candle() {
        for (k, s, p) in [(3, 1, 1), (1, 1, 0), (9, 4, 4), (5, 2, 2)] {
            let x = rand(&[2, 6, 64], 1);
            let w = rand(&[5, 6, k], 2);
            let b = rand(&[5], 3);
            let ours = Conv1d { weight: w.clone(), bias: Some(b.clone()), stride: s, padding: p }.forward(&x).unwrap();
            let reference =
                x.conv1d(&w, p, s, 1, 1).unwrap().broadcast_add(&b.reshape((5, 1)).unwrap()).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            assert!(max_diff(&ours, &reference) < 1e-4, "k={k} s={s}");
        }
    }

    #[test]
    fn conv_transpose_matches_candle() {
        // Compared item by item: candle's own conv_transpose1d is checked on batch 1 only.
        for f in [2usize, 4, 3] {
            let x = rand(&[2, 6, 16], 4);
            let w = rand(&[6, 5, 2 * f], 5);
            let b = rand(&[5], 6);
            let p = f / 2 + f % 2;
            let ours = ConvTranspose1d::new(w.clone(), b.clone(), f).forward(&x).unwrap();
            assert_eq!(ours.dims(), &[2, 5, 16 * f]);
            for i in 0..2 {
                let xi = x.narrow(0, i, 1).unwrap();
                let full = xi.conv_transpose1d(&w, 0, 0, f, 1, 1).unwrap();
                let reference = full.narrow(2, p, 16 * f).unwrap().broadcast_add(&b.reshape((5, 1)).unwrap()).unwrap();
                assert!(max_diff(&ours.narrow(0, i, 1).unwrap(), &reference) < 1e-4, "f={f} item {i}");
            }
        }
    }

    /// The trainable fused GroupNorm + scale/shift + SiLU equals the composite, values and every
    /// gradient (x, weight, bias, scale, shift).
    #[test]
    fn trainable_group_norm_matches_composite_with_gradients() {
        for with_ss in [true, false] {
            let v = |shape: &[usize], seed| candle_core::Var::from_tensor(&rand(shape, seed)).unwrap();
            let (x, w, b) = (v(&[2, 6, 5], 11), v(&[6], 12), v(&[6], 13));
            let (sc, sh) = (v(&[2, 6, 1], 14), v(&[2, 6, 1], 15));
            let ss = with_ss.then_some((sc.as_tensor(), sh.as_tensor()));
            let ours = group_norm::group_norm_silu(&x, 3, &w, &b, ss).unwrap().unwrap();
            let plain = group_norm_scale_shift_silu_composite(&x, 3, &w, &b, ss).unwrap();
            assert!(max_diff(&ours, &plain) < 1e-5, "values differ by {}", max_diff(&ours, &plain));
            let probe = rand(&[2, 6, 5], 16);
            let ga = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&plain * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let vars: Vec<&candle_core::Var> = if with_ss { vec![&x, &w, &b, &sc, &sh] } else { vec![&x, &w, &b] };
            for (i, var) in vars.into_iter().enumerate() {
                let (a, e) = (ga.get(var).unwrap(), gb.get(var).unwrap());
                assert_eq!(a.dims(), e.dims());
                assert!(max_diff(a, e) < 1e-4, "gradient {i} differs by {}", max_diff(a, e));
            }
        }
    }

    /// The one-op columns (CPU f32) equal the stacked narrow views, values and input gradients,
    /// for stride 1 and strided convolutions.
    #[test]
    fn columns_match_stacked_views_with_gradients() {
        for (k, s, pad, l) in [(3, 1, 1, 9), (5, 1, 2, 4), (9, 4, 4, 16), (5, 2, 2, 10), (1, 1, 0, 5), (3, 1, 0, 6)] {
            let x = candle_core::Var::from_tensor(&rand(&[2, 3, l], 5)).unwrap();
            let ours = columns::im2col(&x, k, s, pad).unwrap();
            // the composite: every tap a narrowed view of the padded input, stacked
            let xp = x.pad_with_zeros(2, pad, pad).unwrap();
            let l_out = (l + 2 * pad - k) / s + 1;
            let taps: Vec<Tensor> = (0..k)
                .map(|j| {
                    let idx: Vec<u32> = (0..l_out).map(|o| (o * s + j) as u32).collect();
                    xp.index_select(&Tensor::new(idx, &Device::Cpu).unwrap(), 2).unwrap()
                })
                .collect();
            let plain = Tensor::stack(&taps, 2).unwrap().reshape((2, 3 * k, l_out)).unwrap();
            assert_eq!(ours.dims(), plain.dims());
            assert!(max_diff(&ours, &plain) == 0.0, "k {k} s {s}");
            let probe = rand(plain.dims(), 6);
            let ga = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&plain * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let (ga, gb) = (ga.get(&x).unwrap(), gb.get(&x).unwrap());
            assert!(max_diff(ga, gb) < 1e-5, "k {k} s {s}: gradient differs by {}", max_diff(ga, gb));
        }
    }

    #[test]
    fn conv_weight_gradient_is_per_sample_sum() {
        // The trap in candle's own conv1d: batch > 1 weight gradients. Ours must equal the sum of
        // per-sample gradients.
        // Long inputs take the batched matmul, short ones with many channels fold the batch into
        // time (see `shared_weight_matmul`); both must be right.
        for (c, l) in [(4, 32), (24, 4)] {
            let x = rand(&[3, c, l], 7);
            let w = candle_core::Var::from_tensor(&rand(&[c + 1, c, 3], 8)).unwrap();
            let conv = |x: &Tensor| Conv1d { weight: w.as_tensor().clone(), bias: None, stride: 1, padding: 1 }.forward(x);
            let g_batch = conv(&x).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let g_batch = g_batch.get(&w).unwrap().clone();
            let mut g_sum = Tensor::zeros_like(&g_batch).unwrap();
            for i in 0..3 {
                let xi = x.narrow(0, i, 1).unwrap();
                let g = conv(&xi).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
                g_sum = (g_sum + g.get(&w).unwrap()).unwrap();
            }
            assert!(max_diff(&g_batch, &g_sum) < 1e-3 * max_diff(&g_sum, &g_sum.zeros_like().unwrap()).max(1.0), "C {c}, L {l}");
        }
    }

    fn plain(t: &Tensor) -> Tensor {
        t.detach()
    }

    fn var(t: &Tensor) -> Tensor {
        candle_core::Var::from_tensor(t).unwrap().as_tensor().clone()
    }

    /// Relative max difference, scaled by the reference's max magnitude.
    fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
        let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-6);
        max_diff(a, b) / scale
    }

    #[test]
    fn fast_conv1d_matches_composite() {
        // (c_in, c_out, k, stride, padding, len): 1×1, k=3, the downsampling 2f+1 with f = 2, 4,
        // odd lengths where the op allows them, batch 2.
        let cases = [
            (6, 5, 1, 1, 0, 37),
            (6, 5, 3, 1, 1, 37),
            (16, 24, 3, 1, 1, 64),
            (3, 4, 3, 1, 1, 1),
            (512, 8, 3, 1, 1, 700), // large weight, short input: gathered columns, one gemm
            (6, 5, 5, 2, 2, 64),
            (6, 10, 9, 4, 4, 128),
            (5, 7, 9, 4, 4, 36),
        ];
        for (i, &(ci, co, k, s, p, l)) in cases.iter().enumerate() {
            let x = rand(&[2, ci, l], 10 + i as u64);
            let w = rand(&[co, ci, k], 20 + i as u64);
            let b = rand(&[co], 30 + i as u64);
            for bias in [Some(b.clone()), None] {
                let conv = Conv1d { weight: plain(&w), bias: bias.clone(), stride: s, padding: p };
                assert!(fast_path_opt(&[&x, &conv.weight], &[conv.bias.as_ref()]));
                let fast = conv.forward_fast(&x).unwrap();
                let comp = conv.forward_composite(&x).unwrap();
                assert_eq!(fast.dims(), comp.dims());
                assert!(rel_diff(&fast, &comp) < 1e-5, "case {i}: {}", rel_diff(&fast, &comp));
                // forward() on a Var weight takes the composite path and tracks the gradient
                let tracked = Conv1d { weight: var(&w), bias, stride: s, padding: p }.forward(&x).unwrap();
                assert!(tracked.track_op());
                assert!(rel_diff(&fast, &tracked) < 1e-5);
            }
        }
    }

    #[test]
    fn fast_linear_matches_composite() {
        for (shape, d_out) in [(vec![2usize, 7, 24], 5usize), (vec![3, 24], 9), (vec![1, 1, 24], 24), (vec![1, 70, 40], 33)] {
            let d_in = shape[shape.len() - 1];
            let x = rand(&shape, 90);
            let w = rand(&[d_out, d_in], 91);
            let b = rand(&[d_out], 92);
            for bias in [Some(&b), None] {
                let fast = linear(&x, &w, bias).unwrap();
                assert!(!fast.track_op());
                let comp = linear_composite(&x, &w, bias).unwrap();
                assert_eq!(fast.dims(), comp.dims());
                assert!(rel_diff(&fast, &comp) < 1e-5, "{shape:?} -> {d_out}: {}", rel_diff(&fast, &comp));
            }
        }
    }

    #[test]
    fn fast_conv_transpose_matches_composite() {
        for (f, l) in [(2usize, 16usize), (4, 16), (2, 17), (4, 5), (3, 9), (2, 1)] {
            let x = rand(&[2, 6, l], 40 + f as u64);
            let w = rand(&[6, 5, 2 * f], 41 + l as u64);
            let b = rand(&[5], 42);
            let up = ConvTranspose1d::new(plain(&w), b.clone(), f);
            let fast = up.forward_fast(&x).unwrap();
            let comp = up.forward_composite(&x).unwrap();
            assert_eq!(fast.dims(), &[2, 5, l * f]);
            assert!(rel_diff(&fast, &comp) < 1e-5, "f={f} l={l}: {}", rel_diff(&fast, &comp));
        }
    }

    #[test]
    fn fast_group_norm_matches_composite() {
        for (c, groups, l) in [(8usize, 1usize, 33usize), (8, 4, 64), (16, 8, 31), (4, 4, 5), (64, 8, 256)] {
            let x = (rand(&[2, c, l], 50 + c as u64) * 3.0).unwrap().affine(1.0, 0.7).unwrap();
            let w = rand(&[c], 51).affine(0.2, 1.0).unwrap();
            let b = rand(&[c], 52);
            // scale/shift as the network makes them: halves of a [B, 2C, 1] projection
            let ss = rand(&[2, 2 * c, 1], 53);
            let (scale, shift) = (ss.narrow(1, 0, c).unwrap(), ss.narrow(1, c, c).unwrap());
            for with_ss in [false, true] {
                let sso = if with_ss { Some((&scale, &shift)) } else { None };
                let fast = group_norm_scale_shift_silu(&x, groups, &w, &b, sso).unwrap();
                let comp = group_norm_scale_shift_silu_composite(&x, groups, &w, &b, sso).unwrap();
                assert!(!fast.track_op());
                assert!(rel_diff(&fast, &comp) < 1e-5, "c={c} g={groups} l={l} ss={with_ss}: {}", rel_diff(&fast, &comp));
            }
        }
    }

    #[test]
    fn fast_layer_norms_match_composite() {
        let x = rand(&[2, 12, 300], 60).affine(2.0, 0.5).unwrap();
        let g = rand(&[1, 12, 1], 61);
        let fast = layer_norm_no_bias(&x, &g, D::Minus2).unwrap();
        let comp = layer_norm_no_bias_composite(&x, &g, D::Minus2).unwrap();
        assert!(rel_diff(&fast, &comp) < 1e-5, "channels: {}", rel_diff(&fast, &comp));
        let x = rand(&[2, 7, 24], 62).affine(2.0, -0.5).unwrap();
        let g = rand(&[24], 63);
        let fast = layer_norm_no_bias(&x, &g, D::Minus1).unwrap();
        let comp = layer_norm_no_bias_composite(&x, &g, D::Minus1).unwrap();
        assert!(rel_diff(&fast, &comp) < 1e-5, "last: {}", rel_diff(&fast, &comp));
    }

    #[test]
    fn variables_keep_exact_gradients() {
        // With Var parameters no op takes the inference kernels: gradients reach every parameter
        // and equal those of the composite functions called directly (up to float rounding: on
        // the CPU the group norm is one op with a hand-written backward).
        let x = rand(&[2, 8, 20], 70);
        let gw = candle_core::Var::from_tensor(&rand(&[8], 71).affine(0.1, 1.0).unwrap()).unwrap();
        let gb = candle_core::Var::from_tensor(&rand(&[8], 72)).unwrap();
        let cw = candle_core::Var::from_tensor(&rand(&[6, 8, 3], 73)).unwrap();
        let loss = |gn: &dyn Fn(&Tensor) -> Tensor| {
            let h = gn(&x);
            let y = Conv1d { weight: cw.as_tensor().clone(), bias: None, stride: 1, padding: 1 }.forward_composite(&h).unwrap();
            y.sqr().unwrap().sum_all().unwrap()
        };
        let through_dispatch = loss(&|x| group_norm_scale_shift_silu(x, 4, gw.as_tensor(), gb.as_tensor(), None).unwrap());
        let direct = loss(&|x| group_norm_scale_shift_silu_composite(x, 4, gw.as_tensor(), gb.as_tensor(), None).unwrap());
        let (g1, g2) = (through_dispatch.backward().unwrap(), direct.backward().unwrap());
        for v in [&gw, &gb, &cw] {
            let (a, b) = (g1.get(v).expect("gradient reaches the var"), g2.get(v).unwrap());
            let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(max_diff(a, b) <= 1e-4 * scale.max(1.0), "{} vs scale {scale}", max_diff(a, b));
        }
    }

    #[test]
    fn tiny_network_fast_equals_composite() {
        // The same weights as Vars (composite everywhere) and as plain tensors (fast kernels).
        use crate::unet::params::{FreshParams, TensorMap};
        let cfg = crate::config::ModelConfig::tiny();
        let fresh = FreshParams::new(3, &Device::Cpu);
        let composite = crate::unet::UNet1d::new(&cfg, &fresh).unwrap();
        let map = fresh.vars.borrow().iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
        let fast = crate::unet::UNet1d::new(&cfg, &TensorMap::new(map)).unwrap();
        let t = cfg.length_multiple() * 3;
        let x = rand(&[2, 4, t], 80);
        let sigma = Tensor::new(&[0.2f32, -0.4], &Device::Cpu).unwrap();
        let a = fast.forward(&x, &sigma).unwrap();
        let b = composite.forward(&x, &sigma).unwrap();
        assert!(!a.track_op() && b.track_op());
        assert!(rel_diff(&a, &b) < 1e-4, "{}", rel_diff(&a, &b));
    }

    #[test]
    fn patch_unpatch_fold() {
        let x = rand(&[1, 2, 8], 9);
        let p = patch(&x, 4).unwrap();
        let xv: Vec<Vec<f32>> = x.squeeze(0).unwrap().to_vec2().unwrap();
        let pv: Vec<Vec<f32>> = p.squeeze(0).unwrap().to_vec2().unwrap();
        // out[c·p + i, l] = x[c, l·p + i]
        assert_eq!(pv[1 * 4 + 3][1], xv[1][7]);
        assert_eq!(pv[2][0], xv[0][2]);
        assert!(max_diff(&unpatch(&p, 4).unwrap(), &x) == 0.0);
    }
}

#[cfg(test)]
mod timing {
    use super::*;

    /// Per-op timings for tuning: `cargo test --release -p msdm --lib ops::timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn time_kernels() {
        let rand = |shape: &[usize], seed: u64| {
            let n: usize = shape.iter().product();
            Tensor::from_vec(crate::noise::SeededNoise::new(seed).standard_normal(n), shape, &Device::Cpu).unwrap()
        };
        let time = |f: &dyn Fn()| {
            f();
            let mut best = f64::INFINITY;
            for _ in 0..10 {
                let t = std::time::Instant::now();
                f();
                best = best.min(t.elapsed().as_secs_f64() * 1000.0);
            }
            best
        };
        for (ci, co, k, s, l) in [(256, 128, 3, 1, 1024), (512, 256, 3, 1, 128), (256, 256, 3, 1, 64), (64, 128, 9, 4, 4096), (4, 4, 3, 1, 65536), (256, 256, 3, 1, 4096), (1024, 1024, 3, 1, 256), (1024, 1024, 3, 1, 8), (512, 512, 3, 1, 1024), (2048, 1024, 3, 1, 32)] {
            let x = rand(&[1, ci, l], 1);
            let conv = Conv1d { weight: rand(&[co, ci, k], 2), bias: Some(rand(&[co], 3)), stride: s, padding: (k - 1) / 2 };
            let ms = time(&|| {
                conv.forward(&x).unwrap();
            });
            let gflops = 2.0 * (co * ci * k * l / s) as f64 / ms / 1e6;
            println!("conv1d {ci}->{co} k{k} s{s} L{l}: {ms:.3} ms, {gflops:.1} GFLOP/s");
        }
        for (ci, co, f, l) in [(128, 64, 4, 1024), (256, 256, 2, 64)] {
            let x = rand(&[1, ci, l], 1);
            let up = ConvTranspose1d::new(rand(&[ci, co, 2 * f], 2), rand(&[co], 3), f);
            let ms = time(&|| {
                up.forward(&x).unwrap();
            });
            let gflops = 2.0 * (co * ci * 2 * f * l) as f64 / ms / 1e6;
            println!("conv_transpose {ci}->{co} f{f} L{l}: {ms:.3} ms, {gflops:.1} GFLOP/s");
        }
        for (c, l) in [(4, 65536), (128, 1024), (256, 4096)] {
            let x = rand(&[1, c, l], 1);
            let (w, b) = (rand(&[c], 2), rand(&[c], 3));
            let ms = time(&|| {
                group_norm_scale_shift_silu(&x, 4, &w, &b, None).unwrap();
            });
            println!("group_norm_silu C{c} L{l}: {ms:.3} ms");
        }
    }
}
