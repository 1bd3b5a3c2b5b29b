//! A convolution's columns (im2col), the first half of the convolutions' gemm form
//! ([`super::conv`], [`super::conv_transpose`]): `[B, C, L]` → `[B, C·k, L_out]` with
//! `cols[b, c·k + j, o] = x_pad[b, c, o·stride + j]`, `x_pad` being `x` with `pad` zeros on both
//! sides and `L_out = (L + 2·pad − k) / stride + 1`. In the caller's [`Path`]:
//! - CPU (f32): one op with a direct backward. Built from candle ops, the columns are k narrowed
//!   views of the padded input stacked together; candle's backward then zero-pads each tap's
//!   gradient to the full input and adds it up (k full-size allocations, memsets and additions per
//!   convolution), which was about a fifth of a training step. Here the backward is one pass that
//!   adds each column back where it came from (col2im).
//! - CUDA: one kernel (`im2col` in kernels.cu) instead of k shifted copies and a stack.
//! - Composite: the stacked narrowed views.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::storage_f32;
use super::path::Path;

/// Columns for a stride-1 convolution with kernel `k` and symmetric padding `pad`:
/// `[B, C, L]` → `[B, C·k, L_out]`, row `c·k + j` holding `x_pad[c, j + t]`.
pub fn im2col(x: &Tensor, k: usize, pad: usize, path: Path) -> Result<Tensor> {
    x.dims3()?;
    if k == 1 && pad == 0 {
        return Ok(x.clone());
    }
    match path {
        Path::FastCpu | Path::CpuGrad => cpu_columns(x, k, 1, pad),
        Path::Cuda => {
            #[cfg(feature = "cuda")]
            if let Some(cols) = cuda::im2col(x, k, 1, pad)? {
                return Ok(cols);
            }
            stacked(x, k, pad)
        }
        Path::Composite => stacked(x, k, pad),
    }
}

/// Columns for a strided convolution with kernel `k`, stride `s` and padding `pad`, for input
/// lengths where `(L + 2·pad)` is a multiple of `s`.
pub fn im2col_strided(x: &Tensor, k: usize, s: usize, pad: usize, path: Path) -> Result<Tensor> {
    let l = x.dims3()?.2;
    let lp = l + 2 * pad;
    if lp % s != 0 || lp < k {
        candle_core::bail!("strided conv: padded length {lp} is not a multiple of the stride {s}");
    }
    match path {
        Path::FastCpu | Path::CpuGrad => cpu_columns(x, k, s, pad),
        Path::Cuda => {
            #[cfg(feature = "cuda")]
            if let Some(cols) = cuda::im2col(x, k, s, pad)? {
                return Ok(cols);
            }
            stacked_strided(x, k, s, pad)
        }
        Path::Composite => stacked_strided(x, k, s, pad),
    }
}

/// The composite stride-1 columns: `k` narrowed views of the padded input, stacked.
fn stacked(x: &Tensor, k: usize, pad: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    let xp = if pad > 0 { x.pad_with_zeros(2, pad, pad)? } else { x.clone() };
    let l_out = l + 2 * pad + 1 - k;
    let taps = (0..k).map(|j| xp.narrow(2, j, l_out)).collect::<Result<Vec<_>>>()?;
    Tensor::stack(&taps, 2)?.reshape((b, c * k, l_out))
}

/// The composite strided columns (`L + 2·pad` a multiple of `s`, checked by the caller).
fn stacked_strided(x: &Tensor, k: usize, s: usize, pad: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    let lp = l + 2 * pad;
    let l_out = (lp - k) / s + 1;
    // x_pad[o·s + j] = xr[o + j / s, j % s]
    let xr = x.pad_with_zeros(2, pad, pad)?.reshape((b, c, lp / s, s))?;
    let taps = (0..k)
        .map(|j| xr.narrow(2, j / s, l_out)?.narrow(3, j % s, 1)?.squeeze(3))
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&taps, 2)?.reshape((b, c * k, l_out))
}

/// The CPU op (any stride); `x` must be a CPU f32 tensor.
fn cpu_columns(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Columns { k, stride: stride.max(1), pad })
}
#[derive(Clone, Copy)]
struct Columns {
    k: usize,
    stride: usize,
    pad: usize,
}

impl Columns {
    fn out_len(&self, len: usize) -> Result<usize> {
        let padded = len + 2 * self.pad;
        if padded < self.k {
            candle_core::bail!("im2col: input of {len} samples is shorter than the kernel ({})", self.k);
        }
        Ok((padded - self.k) / self.stride + 1)
    }

    /// The input sample feeding column `o` of tap `j`, if inside the input.
    #[inline]
    fn source(&self, o: usize, j: usize, len: usize) -> Option<usize> {
        (o * self.stride + j).checked_sub(self.pad).filter(|&t| t < len)
    }
}

impl CustomOp1 for Columns {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_f32(s, l, self.name())?;
        let (b, c, len) = l.shape().dims3()?;
        let l_out = self.out_len(len)?;
        let mut cols = vec![0f32; b * c * self.k * l_out];
        // one (b, c) input row → its k column rows
        cols.par_chunks_mut(self.k * l_out).zip(x.par_chunks(len.max(1))).for_each(|(rows, xr)| {
            for (j, row) in rows.chunks_mut(l_out).enumerate() {
                for (o, v) in row.iter_mut().enumerate() {
                    if let Some(t) = self.source(o, j, len) {
                        *v = xr[t];
                    }
                }
            }
        });
        Ok((CpuStorage::F32(cols), Shape::from((b, c * self.k, l_out))))
    }

    fn bwd(&self, x: &Tensor, _cols: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let len = x.dim(2)?;
        Ok(Some(grad.contiguous()?.apply_op1(ColumnsBack { cols: *self, len })?))
    }
}

/// The adjoint of [`Columns`] (col2im): every column value added back to its input sample.
struct ColumnsBack {
    cols: Columns,
    len: usize,
}

impl CustomOp1 for ColumnsBack {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = storage_f32(s, l, self.name())?;
        let (b, ck, l_out) = l.shape().dims3()?;
        let k = self.cols.k;
        if ck % k != 0 || self.cols.out_len(self.len)? != l_out {
            candle_core::bail!("col2im: gradient shape {:?} does not fit kernel {k}", l.shape().dims());
        }
        let c = ck / k;
        let mut x = vec![0f32; b * c * self.len];
        x.par_chunks_mut(self.len.max(1)).zip(g.par_chunks(k * l_out)).for_each(|(xr, rows)| {
            for (j, row) in rows.chunks(l_out).enumerate() {
                for (o, &v) in row.iter().enumerate() {
                    if let Some(t) = self.cols.source(o, j, self.len) {
                        xr[t] += v;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(x), Shape::from((b, c, self.len))))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaDevice, CudaStorage, DType, Result, Shape, Tensor};

    use crate::ops::cuda::{func, launch_err, Kernel, Op};

    /// The columns of a convolution with kernel `k`, stride `s` and padding `pad`
    /// (`[B, C, L]` → `[B, C·k, L_out]`, row `c·k + j`), or `None`.
    pub fn im2col(x: &Tensor, k: usize, s: usize, pad: usize) -> Result<Option<Tensor>> {
        if x.rank() != 3 {
            return Ok(None);
        }
        Ok(Some(x.contiguous()?.apply_op1_no_bwd(&Op(Columns { k, s, pad }))?))
    }

    struct Columns {
        k: usize,
        s: usize,
        pad: usize,
    }

    impl Kernel for Columns {
        const NAME: &'static str = "msdm-im2col";

        fn run<T: CudaDType + DeviceRepr>(&self, dev: &CudaDevice, x: &CudaView<'_, T>, shape: &Shape, dtype: DType) -> Result<(CudaStorage, Shape)> {
            let (b, c, l) = shape.dims3()?;
            if l + 2 * self.pad < self.k || self.s == 0 {
                candle_core::bail!("conv1d: input length {l} is too short for kernel {} (padding {})", self.k, self.pad);
            }
            let l_out = (l + 2 * self.pad - self.k) / self.s + 1;
            let total = b * c * self.k * l_out;
            let mut cols = unsafe { dev.alloc::<T>(total) }?;
            let f = func(dev, "im2col", dtype)?;
            let stream = dev.cuda_stream();
            let mut args = stream.launch_builder(&f);
            let dims = [b as u32, c as u32, l as u32, self.k as u32, self.s as u32, self.pad as u32, l_out as u32];
            args.arg(x).arg(&mut cols);
            for d in &dims {
                args.arg(d);
            }
            let blocks = total.div_ceil(256).min(65_535 * 8) as u32;
            let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            unsafe { args.launch(cfg) }.map_err(launch_err)?;
            Ok((CudaStorage::wrap_cuda_slice(cols, dev.clone()), Shape::from((b, c * self.k, l_out))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{max_diff, rand};
    use candle_core::Device;

    /// The one-op columns (CPU f32) equal the stacked narrow views, values and input gradients,
    /// for stride 1 and strided convolutions.
    #[test]
    fn columns_match_stacked_views_with_gradients() {
        for (k, s, pad, l) in [(3, 1, 1, 9), (5, 1, 2, 4), (9, 4, 4, 16), (5, 2, 2, 10), (1, 1, 0, 5), (3, 1, 0, 6)] {
            let x = candle_core::Var::from_tensor(&rand(&[2, 3, l], 5)).unwrap();
            let ours = cpu_columns(&x, k, s, pad).unwrap();
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
}
