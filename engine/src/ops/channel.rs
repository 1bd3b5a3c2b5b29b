//! Per-channel maps `y[b, c, t] = x[b, c, t] · w[c] + s[c]` (a convolution's bias, a norm's
//! affine), pieces of the gemm and norm forms, in the caller's [`Path`]:
//! - CPU (f32): ops whose parameter gradients are fast sums. candle's backward of a broadcast sums
//!   the gradient over the broadcast axes (here batch and time) with a per-element index loop: its
//!   fast reduction only covers trailing axes. That loop took about 30% of a training step. These
//!   ops sum over time first (contiguous rows), then over the batch (a few rows).
//! - CUDA: the bias add as one kernel (`add_channel` in kernels.cu); the affine has no CUDA form
//!   (only the composite GroupNorm uses it, and on CUDA the fused GroupNorm kernel serves).
//! - Composite: the plain broadcasts.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::storage_f32;
use super::path::Path;

/// `x + s[c]` for `x` `[B, C, L]` and `s` `[C]`.
pub fn add_channel(x: &Tensor, s: &Tensor, path: Path) -> Result<Tensor> {
    match path {
        Path::FastCpu | Path::CpuGrad => x.contiguous()?.apply_op2(&s.contiguous()?, AddChannel),
        Path::Cuda => {
            #[cfg(feature = "cuda")]
            if let Some(y) = cuda::add_channel(x, s)? {
                return Ok(y);
            }
            x.broadcast_add(&s.reshape((1, (), 1))?)
        }
        Path::Composite => x.broadcast_add(&s.reshape((1, (), 1))?),
    }
}

/// `x · w[c] + s[c]` for `x` `[B, C, L]` and `w`, `s` `[C]`.
pub fn affine_channel(x: &Tensor, w: &Tensor, s: &Tensor, path: Path) -> Result<Tensor> {
    match path {
        Path::FastCpu | Path::CpuGrad => x.contiguous()?.apply_op3(&w.contiguous()?, &s.contiguous()?, AffineChannel),
        Path::Cuda | Path::Composite => x.broadcast_mul(&w.reshape((1, (), 1))?)?.broadcast_add(&s.reshape((1, (), 1))?),
    }
}
/// `Σ_b Σ_t g[b, c, t]` as `[C]`.
fn channel_sum(g: &Tensor) -> Result<Tensor> {
    let c = g.dim(1)?;
    g.contiguous()?.sum_keepdim(2)?.sum(0)?.reshape(c)
}

/// `y[row, t] = x[row, t] · w[c] + s[c]` for rows `(b, c)`.
fn apply(x: &[f32], shape: &Shape, w: Option<&[f32]>, s: &[f32]) -> Result<(CpuStorage, Shape)> {
    let (_, c, l) = shape.dims3()?;
    if s.len() != c || w.is_some_and(|w| w.len() != c) {
        candle_core::bail!("per-channel op: {} channels, parameters of length {}", c, s.len());
    }
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(l.max(1)).zip(x.par_chunks(l.max(1))).enumerate().for_each(|(row, (yr, xr))| {
        let ch = row % c;
        let (m, a) = (w.map_or(1.0, |w| w[ch]), s[ch]);
        yr.iter_mut().zip(xr).for_each(|(y, &x)| *y = x * m + a);
    });
    Ok((CpuStorage::F32(y), shape.clone()))
}

struct AddChannel;

impl CustomOp2 for AddChannel {
    fn name(&self) -> &'static str {
        "add-channel"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        apply(storage_f32(s1, l1, "add-channel")?, l1.shape(), None, storage_f32(s2, l2, "add-channel")?)
    }

    fn bwd(&self, _x: &Tensor, _s: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(g.clone()), Some(channel_sum(g)?)))
    }
}

struct AffineChannel;

impl CustomOp3 for AffineChannel {
    fn name(&self) -> &'static str {
        "affine-channel"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let w = storage_f32(s2, l2, "affine-channel")?;
        apply(storage_f32(s1, l1, "affine-channel")?, l1.shape(), Some(w), storage_f32(s3, l3, "affine-channel")?)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _s: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gx = g.broadcast_mul(&w.reshape((1, (), 1))?)?;
        let gw = channel_sum(&(g * x)?)?;
        Ok((Some(gx), Some(gw), Some(channel_sum(g)?)))
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaDevice, CudaStorage, DType, Result, Shape, Tensor};

    use crate::ops::cuda::{func, launch_err, with_slice, Kernel, Op};

    /// `x + bias` with `bias` `[C]` added along the channels of `x` `[B, C, L]`, or `None`.
    pub fn add_channel(x: &Tensor, bias: &Tensor) -> Result<Option<Tensor>> {
        if x.rank() != 3 || bias.elem_count() != x.dim(1)? {
            return Ok(None);
        }
        Ok(Some(x.contiguous()?.apply_op1_no_bwd(&Op(AddChannel { bias: bias.flatten_all()? }))?))
    }

    struct AddChannel {
        bias: Tensor,
    }

    impl Kernel for AddChannel {
        const NAME: &'static str = "msdm-add-channel";

        fn run<T: CudaDType + DeviceRepr>(&self, dev: &CudaDevice, x: &CudaView<'_, T>, shape: &Shape, dtype: DType) -> Result<(CudaStorage, Shape)> {
            let (b, c, l) = shape.dims3()?;
            let mut y = unsafe { dev.alloc::<T>(b * c * l) }?;
            let f = func(dev, "add_channel", dtype)?;
            let stream = dev.cuda_stream();
            with_slice::<T, _>(&self.bias, |bias| {
                let mut args = stream.launch_builder(&f);
                let (c32, l32) = (c as u32, l as u32);
                args.arg(x).arg(&bias).arg(&mut y).arg(&c32).arg(&l32);
                let cfg = LaunchConfig { grid_dim: (l.div_ceil(1024) as u32, (b * c) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                unsafe { args.launch(cfg) }.map_err(launch_err)?;
                Ok(())
            })?;
            Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::max_diff;
    use candle_core::{Device, Var};

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (((i as u64 + 1) * (seed * 2654435761 + 97)) % 1000) as f32 / 500.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Values and gradients (x, w, s) equal the plain broadcast composition's.
    #[test]
    fn match_broadcast_ops_with_gradients() {
        let (x, w, s) = (Var::from_tensor(&rand(&[3, 5, 7], 1)).unwrap(), Var::from_tensor(&rand(&[5], 2)).unwrap(), Var::from_tensor(&rand(&[5], 3)).unwrap());
        let probe = rand(&[3, 5, 7], 4);
        let plain_aff = x.broadcast_mul(&w.reshape((1, 5, 1)).unwrap()).unwrap().broadcast_add(&s.reshape((1, 5, 1)).unwrap()).unwrap();
        let plain_add = x.broadcast_add(&s.reshape((1, 5, 1)).unwrap()).unwrap();
        for (ours, plain) in [(affine_channel(&x, &w, &s, Path::CpuGrad).unwrap(), plain_aff), (add_channel(&x, &s, Path::CpuGrad).unwrap(), plain_add)] {
            assert!(max_diff(&ours, &plain) < 1e-6);
            let ga = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&plain * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &w, &s] {
                match (ga.get(v.as_tensor()), gb.get(v.as_tensor())) {
                    (Some(a), Some(b)) => assert!(max_diff(a, b) < 1e-5, "gradient differs by {}", max_diff(a, b)),
                    (None, None) => {}
                    _ => panic!("a gradient is missing"),
                }
            }
        }
    }
}
