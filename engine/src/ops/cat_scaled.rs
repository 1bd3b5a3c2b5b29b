//! `[x, skip · scale]` along the channels, a U-Net skip connection ([`cat_scaled`]). Forms:
//! [`Path::Cuda`]: one kernel (`cat_scaled` in kernels.cu) instead of a scale and a copy; every
//! other path: candle's ops (on the CPU a concatenation is a copy already; no backward of our own).

use candle_core::{Result, Tensor};

use super::path::{path_for, Path};

/// `[x, skip · scale]` along the channels (a U-Net skip connection, scaled).
pub fn cat_scaled(x: &Tensor, skip: &Tensor, scale: f64) -> Result<Tensor> {
    match path_for(&[x, skip]) {
        Path::Cuda => {
            #[cfg(feature = "cuda")]
            if let Some(y) = cuda::cat_scaled(x, skip, scale)? {
                return Ok(y);
            }
            cat_scaled_composite(x, skip, scale)
        }
        Path::FastCpu | Path::CpuGrad | Path::Composite => cat_scaled_composite(x, skip, scale),
    }
}

/// The composite form of [`cat_scaled`]: candle ops only.
pub fn cat_scaled_composite(x: &Tensor, skip: &Tensor, scale: f64) -> Result<Tensor> {
    if scale == 1.0 {
        return Tensor::cat(&[x, skip], 1);
    }
    Tensor::cat(&[x, &(skip * scale)?], 1)
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, CudaStorageSlice};
    use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, Tensor};

    use crate::ops::cuda::{func, launch_err, view};

    /// `[x, skip · scale]` along the channels of two `[B, C, L]` tensors, or `None`.
    pub fn cat_scaled(x: &Tensor, skip: &Tensor, scale: f64) -> Result<Option<Tensor>> {
        if x.rank() != 3 || skip.rank() != 3 || x.dim(0)? != skip.dim(0)? || x.dim(2)? != skip.dim(2)? {
            return Ok(None);
        }
        Ok(Some(x.contiguous()?.apply_op2_no_bwd(&skip.contiguous()?, &CatScaled { scale: scale as f32 })?))
    }

    struct CatScaled {
        scale: f32,
    }

    impl CatScaled {
        fn run<T: CudaDType + DeviceRepr>(&self, dev: &CudaDevice, x: &CudaSlice<T>, lx: &Layout, s: &CudaSlice<T>, ls: &Layout, dtype: DType) -> Result<(CudaStorage, Shape)> {
            let (b, c1, l) = lx.shape().dims3()?;
            let c2 = ls.shape().dims3()?.1;
            let (x, s) = (view(x, lx)?, view(s, ls)?);
            let mut y = unsafe { dev.alloc::<T>(b * (c1 + c2) * l) }?;
            let f = func(dev, "cat_scaled", dtype)?;
            let stream = dev.cuda_stream();
            let mut args = stream.launch_builder(&f);
            let (c1_32, c2_32, l32) = (c1 as u32, c2 as u32, l as u32);
            args.arg(&x).arg(&s).arg(&mut y).arg(&c1_32).arg(&c2_32).arg(&l32).arg(&self.scale);
            let cfg = LaunchConfig { grid_dim: (l.div_ceil(1024) as u32, (b * (c1 + c2)) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            unsafe { args.launch(cfg) }.map_err(launch_err)?;
            Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), Shape::from((b, c1 + c2, l))))
        }
    }

    impl candle_core::CustomOp2 for CatScaled {
        fn name(&self) -> &'static str {
            "msdm-cat-scaled"
        }

        fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
            candle_core::bail!("msdm-cat-scaled runs on CUDA only")
        }

        fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
            let dev = s1.device();
            match (&s1.slice, &s2.slice) {
                (CudaStorageSlice::F32(x), CudaStorageSlice::F32(s)) => self.run(dev, x, l1, s, l2, DType::F32),
                (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(s)) => self.run(dev, x, l1, s, l2, DType::BF16),
                (CudaStorageSlice::F16(x), CudaStorageSlice::F16(s)) => self.run(dev, x, l1, s, l2, DType::F16),
                _ => candle_core::bail!("msdm-cat-scaled: unsupported dtypes {:?} / {:?}", s1.dtype(), s2.dtype()),
            }
        }
    }
}
