//! LayerNorm without bias over one dimension of a rank-3 tensor ([`layer_norm_no_bias`]; the
//! library's `LayerNorm`/`LayerNorm1d`: biased variance, eps [`NORM_EPS`]). Forms:
//! - [`Path::FastCpu`]: one kernel over slices each for the channels of `[B, C, L]`
//!   ([`layer_norm_channels`]) and for the last dimension ([`layer_norm_last`]);
//! - [`Path::Cuda`]: one kernel instead of eight (`ln_channels`, `ln_last` in kernels.cu);
//! - [`Path::CpuGrad`]: the CPU kernels as one op with a hand-written backward
//!   ([`super::layer_norm_grad`]);
//! - [`Path::Composite`]: candle ops.

use candle_core::{CpuStorage, CustomOp2, Device, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu::{expect_len, storage_f32, with_f32, SendPtr};
use super::layer_norm_grad;
use super::path::{path_for, Path};
use super::{profile, simd, NORM_EPS};

/// The library's LayerNorm without bias over dimension `dim` (biased variance, eps 1e-5);
/// `g` broadcasts against `x`.
pub fn layer_norm_no_bias(x: &Tensor, g: &Tensor, dim: D) -> Result<Tensor> {
    profile::time(|| format!("layer_norm {:?}", x.dims()), || match path_for(&[x, g]) {
        Path::FastCpu => match layer_norm_fast(x, g, dim)? {
            Some(y) => Ok(y),
            None => layer_norm_no_bias_composite(x, g, dim),
        },
        Path::Cuda => {
            #[cfg(feature = "cuda")]
            if let Some(y) = cuda::layer_norm(x, g, dim, NORM_EPS)? {
                return Ok(y);
            }
            layer_norm_no_bias_composite(x, g, dim)
        }
        Path::CpuGrad => {
            let axis = candle_core::shape::Dim::to_index(&dim, x.shape(), "layer_norm")?;
            match layer_norm_grad(x, g, axis)? {
                Some(y) => Ok(y),
                None => layer_norm_no_bias_composite(x, g, dim),
            }
        }
        Path::Composite => layer_norm_no_bias_composite(x, g, dim),
    })
}

/// The [`Path::FastCpu`] form, or `None` for shapes it does not take.
fn layer_norm_fast(x: &Tensor, g: &Tensor, dim: D) -> Result<Option<Tensor>> {
    if x.rank() != 3 {
        return Ok(None);
    }
    let (b, c, l) = x.dims3()?;
    let rank = x.rank();
    let d = candle_core::shape::Dim::to_index(&dim, x.shape(), "layer_norm")?;
    if d == rank - 2 && g.elem_count() == c {
        let y = with_f32(x, |xs| with_f32(g, |gs| Ok(layer_norm_channels(xs, b, c, l, gs, NORM_EPS))))?;
        return Ok(Some(Tensor::from_vec(y, (b, c, l), &Device::Cpu)?));
    }
    if d == rank - 1 && g.elem_count() == l {
        let y = with_f32(x, |xs| with_f32(g, |gs| Ok(layer_norm_last(xs, l, gs, NORM_EPS))))?;
        return Ok(Some(Tensor::from_vec(y, (b, c, l), &Device::Cpu)?));
    }
    Ok(None)
}

/// The composite form of [`layer_norm_no_bias`]: candle ops only, differentiable on any device
/// and dtype.
pub fn layer_norm_no_bias_composite(x: &Tensor, g: &Tensor, dim: D) -> Result<Tensor> {
    let mean = x.mean_keepdim(dim)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(dim)?;
    xc.broadcast_div(&(var + NORM_EPS)?.sqrt()?)?.broadcast_mul(g)
}

/// Bias-free LayerNorm over the channels of `x` `[B, C, L]` at every time step (eps), times `g`
/// `[C]`: the library's `LayerNorm1d`/`LayerNorm` applied over `dim` = channels.
pub fn layer_norm_channels(x: &[f32], batch: usize, c: usize, len: usize, g: &[f32], eps: f64) -> Vec<f32> {
    expect_len("layer_norm input", x, batch * c * len);
    expect_len("layer_norm gain", g, c);
    let mut out = vec![0f32; batch * c * len];
    // Blocks of time steps: statistics accumulate over channel rows, vectorized along time.
    const BLOCK: usize = 256;
    let blocks_per_item = len.div_ceil(BLOCK);
    let optr = SendPtr(out.as_mut_ptr());
    (0..batch * blocks_per_item).into_par_iter().for_each(|task| {
        let optr = optr;
        let (b, blk) = (task / blocks_per_item, task % blocks_per_item);
        let t0 = blk * BLOCK;
        let n = BLOCK.min(len - t0);
        let xb = &x[b * c * len..(b + 1) * c * len];
        let mut mean = [0f32; BLOCK];
        let mut var = [0f32; BLOCK];
        for ch in 0..c {
            let xr = &xb[ch * len + t0..ch * len + t0 + n];
            for (m, &v) in mean.iter_mut().zip(xr) {
                *m += v;
            }
        }
        let inv_c = 1.0 / c as f32;
        mean.iter_mut().for_each(|m| *m *= inv_c);
        for ch in 0..c {
            let xr = &xb[ch * len + t0..ch * len + t0 + n];
            for ((s, &v), &m) in var.iter_mut().zip(xr).zip(&mean) {
                let d = v - m;
                *s += d * d;
            }
        }
        let rstd: Vec<f32> = var[..n].iter().map(|&s| 1.0 / ((s * inv_c) as f64 + eps).sqrt() as f32).collect();
        for ch in 0..c {
            let xr = &xb[ch * len + t0..ch * len + t0 + n];
            // SAFETY: this task alone writes columns t0..t0+n of item b.
            let y = unsafe { std::slice::from_raw_parts_mut(optr.0.add(b * c * len + ch * len + t0), n) };
            let gc = g[ch];
            for (((y, &v), &m), &r) in y.iter_mut().zip(xr).zip(&mean).zip(&rstd) {
                *y = (v - m) * r * gc;
            }
        }
    });
    out
}

/// Bias-free LayerNorm over the last dimension of `x` `[rows, d]`, times `g` `[d]`.
pub fn layer_norm_last(x: &[f32], d: usize, g: &[f32], eps: f64) -> Vec<f32> {
    expect_len("layer_norm gain", g, d);
    assert!(d > 0 && x.len() % d == 0, "layer_norm: {} values are not rows of {d}", x.len());
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(d.max(1)).zip(x.par_chunks(d.max(1))).for_each(|(y, xr)| {
        let mean = simd::sum(xr) / d as f64;
        let var = simd::centered_sq_sum(xr, mean as f32) / d as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for ((y, &v), &gc) in y.iter_mut().zip(xr).zip(g) {
            *y = ((v as f64 - mean) * rstd) as f32 * gc;
        }
    });
    out
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaDevice, CudaStorage, DType, Result, Shape, Tensor, D};

    use crate::ops::cuda::{func, launch_err, with_slice, Kernel, Op};

    /// LayerNorm without bias over dimension `dim` (the channels of `[B, C, L]`, or the last) of
    /// a rank-3 tensor, `g` holding that dimension's gains, or `None`.
    pub fn layer_norm(x: &Tensor, g: &Tensor, dim: D, eps: f64) -> Result<Option<Tensor>> {
        if x.rank() != 3 {
            return Ok(None);
        }
        let dim = candle_core::shape::Dim::to_index(&dim, x.shape(), "layer_norm")?;
        if !(dim == 1 || dim == 2) || g.elem_count() != x.dim(dim)? {
            return Ok(None);
        }
        Ok(Some(x.contiguous()?.apply_op1_no_bwd(&Op(LayerNorm { g: g.flatten_all()?, channels: dim == 1, eps: eps as f32 }))?))
    }

    struct LayerNorm {
        g: Tensor,
        channels: bool,
        eps: f32,
    }

    impl Kernel for LayerNorm {
        const NAME: &'static str = "msdm-layer-norm";

        fn run<T: CudaDType + DeviceRepr>(&self, dev: &CudaDevice, x: &CudaView<'_, T>, shape: &Shape, dtype: DType) -> Result<(CudaStorage, Shape)> {
            let (b, c, l) = shape.dims3()?;
            let mut y = unsafe { dev.alloc::<T>(b * c * l) }?;
            let stream = dev.cuda_stream();
            with_slice::<T, _>(&self.g, |g| {
                if self.channels {
                    let f = func(dev, "ln_channels", dtype)?;
                    let mut args = stream.launch_builder(&f);
                    let (c32, l32) = (c as u32, l as u32);
                    args.arg(x).arg(&g).arg(&mut y).arg(&c32).arg(&l32).arg(&self.eps);
                    let cfg = LaunchConfig { grid_dim: (l.div_ceil(32) as u32, b as u32, 1), block_dim: (32, 32, 1), shared_mem_bytes: 0 };
                    unsafe { args.launch(cfg) }.map_err(launch_err)?;
                } else {
                    let f = func(dev, "ln_last", dtype)?;
                    let mut args = stream.launch_builder(&f);
                    let l32 = l as u32;
                    args.arg(x).arg(&g).arg(&mut y).arg(&l32).arg(&self.eps);
                    let threads = if l >= 1024 { 256 } else { 128 };
                    let cfg = LaunchConfig { grid_dim: ((b * c) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
                    unsafe { args.launch(cfg) }.map_err(launch_err)?;
                }
                Ok(())
            })?;
            Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape.clone()))
        }
    }
}

/// Bias-free LayerNorm of `x` (rank 3) over axis `axis` (1 or 2), gain `g` with one value per
/// position of that axis (any shape), or `None` for other shapes.
fn layer_norm_grad(x: &Tensor, g: &Tensor, axis: usize) -> Result<Option<Tensor>> {
    if x.rank() != 3 || !(1..=2).contains(&axis) || g.elem_count() != x.dim(axis)? {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op2(&g.contiguous()?, LayerNorm { axis })?))
}

struct LayerNorm {
    axis: usize,
}

impl LayerNorm {
    /// `(outer, D, inner)` of a `[B, C, L]` input.
    fn view(&self, dims: &[usize]) -> (usize, usize, usize) {
        let (b, c, l) = (dims[0], dims[1], dims[2]);
        if self.axis == 2 {
            (b * c, l, 1)
        } else {
            (b, c, l)
        }
    }
}

impl CustomOp2 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, g) = (storage_f32(s1, l1, self.name())?, storage_f32(s2, l2, self.name())?);
        let (b, c, l) = l1.shape().dims3()?;
        let y = if self.axis == 2 { layer_norm_last(x, l, g, NORM_EPS) } else { layer_norm_channels(x, b, c, l, g, NORM_EPS) };
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, g: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        profile::time(|| format!("layer_norm backward {:?} axis {}", x.dims(), self.axis), || {
            let (outer, d, inner) = self.view(x.dims());
            let dy = dy.contiguous()?;
            let (dx, dg) = with_f32(x, |xs| with_f32(g, |gs| with_f32(&dy, |dys| Ok(layer_norm_grad::backward(xs, gs, dys, outer, d, inner)))))?;
            let dx = x.track_op().then(|| Tensor::from_vec(dx, x.shape(), &Device::Cpu)).transpose()?;
            let dg = g.track_op().then(|| Tensor::from_vec(dg, g.shape(), &Device::Cpu)).transpose()?;
            Ok((dx, dg))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{rand, rel_diff};

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
}
