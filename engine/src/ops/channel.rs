//! Per-channel maps `y[b, c, t] = x[b, c, t] · w[c] + s[c]` (a convolution's bias, a norm's
//! affine) whose parameter gradients are fast sums, for training on the CPU.
//!
//! candle's backward of a broadcast sums the gradient over the broadcast axes (here batch and
//! time) with a per-element index loop: its fast reduction only covers trailing axes. That loop
//! took about 30% of a training step. These ops sum over time first (contiguous rows), then over
//! the batch (a few rows). Only CPU f32 runs them; other devices and dtypes use the plain
//! broadcast (see [`add_channel`], [`affine_channel`]).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::storage_f32;

fn custom(x: &Tensor, params: &[&Tensor]) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 && params.iter().all(|p| p.dtype() == DType::F32)
}

/// `x + s[c]` for `x` `[B, C, L]` and `s` `[C]`.
pub fn add_channel(x: &Tensor, s: &Tensor) -> Result<Tensor> {
    if custom(x, &[s]) {
        return x.contiguous()?.apply_op2(&s.contiguous()?, AddChannel);
    }
    #[cfg(feature = "cuda")]
    if let Some(y) = super::cuda::add_channel(x, s)? {
        return Ok(y);
    }
    x.broadcast_add(&s.reshape((1, (), 1))?)
}

/// `x · w[c] + s[c]` for `x` `[B, C, L]` and `w`, `s` `[C]`.
pub fn affine_channel(x: &Tensor, w: &Tensor, s: &Tensor) -> Result<Tensor> {
    if custom(x, &[w, s]) {
        return x.contiguous()?.apply_op3(&w.contiguous()?, &s.contiguous()?, AffineChannel);
    }
    x.broadcast_mul(&w.reshape((1, (), 1))?)?.broadcast_add(&s.reshape((1, (), 1))?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|i| (((i as u64 + 1) * (seed * 2654435761 + 97)) % 1000) as f32 / 500.0 - 1.0).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Values and gradients (x, w, s) equal the plain broadcast composition's.
    #[test]
    fn match_broadcast_ops_with_gradients() {
        let (x, w, s) = (Var::from_tensor(&rand(&[3, 5, 7], 1)).unwrap(), Var::from_tensor(&rand(&[5], 2)).unwrap(), Var::from_tensor(&rand(&[5], 3)).unwrap());
        let probe = rand(&[3, 5, 7], 4);
        let plain_aff = x.broadcast_mul(&w.reshape((1, 5, 1)).unwrap()).unwrap().broadcast_add(&s.reshape((1, 5, 1)).unwrap()).unwrap();
        let plain_add = x.broadcast_add(&s.reshape((1, 5, 1)).unwrap()).unwrap();
        for (ours, plain) in [(affine_channel(&x, &w, &s).unwrap(), plain_aff), (add_channel(&x, &s).unwrap(), plain_add)] {
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
