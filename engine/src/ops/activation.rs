//! Activations. [`gelu`] (the feed-forward's and the mappings', exact erf form) has forms:
//! - [`Path::FastCpu`]: one vectorized pass ([`simd::gelu`]); candle's CPU `gelu_erf` calls libm's
//!   erf per element, which cost 11 of the 88 ms of a small-model call at batch 4;
//! - [`Path::CpuGrad`]: the same pass as one op whose backward is one pass too (candle's
//!   derivative of `gelu_erf` runs through several element-wise nodes);
//! - [`Path::Cuda`], [`Path::Composite`]: candle's `gelu_erf`.
//!
//! [`silu`] is candle's op on every path (the SiLU after a GroupNorm is fused into
//! [`super::group_norm`]).

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{storage_f32, with_f32};
use super::path::{path_for, Path};
use super::{profile, simd};

/// Elements per parallel task: below this, one thread does the whole tensor.
const CHUNK: usize = 1 << 14;

/// Exact (erf) GELU, as `nn.GELU()`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    profile::time(|| format!("gelu {:?}", x.dims()), || match path_for(&[x]) {
        Path::FastCpu => {
            let y = with_f32(x, |xs| Ok(gelu_slice(xs)))?;
            Tensor::from_vec(y, x.shape(), &Device::Cpu)
        }
        Path::CpuGrad => x.contiguous()?.apply_op1(Gelu),
        // candle's CUDA gelu_erf is one kernel already
        Path::Cuda | Path::Composite => gelu_composite(x),
    })
}

/// The composite form of [`gelu`]: candle's op, differentiable on any device and dtype.
pub fn gelu_composite(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

fn gelu_slice(x: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| simd::gelu(x, y));
    y
}

fn gelu_backward_slice(x: &[f32], dy: &[f32]) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (x, dy))| simd::gelu_backward(x, dy, dx));
    dx
}

/// The [`Path::CpuGrad`] form: the forward pass, with the backward as one pass.
struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_f32(s, l, self.name())?;
        Ok((CpuStorage::F32(gelu_slice(x)), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        profile::time(|| format!("gelu backward {:?}", x.dims()), || {
            let dx = with_f32(x, |xs| with_f32(dy, |dys| Ok(gelu_backward_slice(xs, dys))))?;
            Ok(Some(Tensor::from_vec(dx, x.shape(), &Device::Cpu)?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{rand, rel_diff, var};

    #[test]
    fn fast_gelu_matches_composite() {
        // odd length, several parallel chunks, values out into both tails
        let x = rand(&[3, 7, 5000], 80).affine(3.0, -0.5).unwrap();
        let fast = gelu(&x).unwrap();
        assert!(rel_diff(&fast, &gelu_composite(&x).unwrap()) < 1e-6, "{}", rel_diff(&fast, &gelu_composite(&x).unwrap()));
        // a strided input (the kernel reads it made contiguous)
        let xt = x.transpose(1, 2).unwrap();
        let fast_t = gelu(&xt).unwrap();
        assert_eq!(fast_t.dims(), &[3, 5000, 7]);
        assert!(rel_diff(&fast_t, &gelu_composite(&xt).unwrap()) < 1e-6);
    }

    #[test]
    fn gelu_op_gradient_matches_composite() {
        let x = var(&rand(&[2, 5, 9000], 81).affine(2.5, 0.3).unwrap());
        let w = rand(&[2, 5, 9000], 82);
        let loss = |y: Tensor| (y * &w).unwrap().sum_all().unwrap();
        let g_op = loss(gelu(&x).unwrap()).backward().unwrap();
        let g_comp = loss(gelu_composite(&x).unwrap()).backward().unwrap();
        let (a, b) = (g_op.get(&x).expect("gradient reaches x"), g_comp.get(&x).unwrap());
        assert!(rel_diff(a, b) < 1e-5, "{}", rel_diff(a, b));
        // the forward through the op is the composite's too
        assert!(rel_diff(&gelu(&x).unwrap(), &gelu_composite(&x).unwrap()) < 1e-6);
    }
}
