//! The last stage of the training loss as one op: from the network's output F `[B, C, T]`,
//! the noisy input x̃ and the clean sources x,
//!
//!   loss_b = w_b / (C·T) · Σ (clamp(c_skip,b · x̃ + c_out,b · F, −1, 1) − x)²,
//!
//! with the gradient dF = g_b · w_b · 2/(C·T) · (D − x) · c_out,b where D is not clamped and 0
//! where it is (at exactly ±1 the composite ops split the gradient in halves; a set of measure
//! zero). Composed from candle ops this stage took about a quarter of a CPU training step: its
//! backward walks a dozen full-size tensors (the clamp's masks, gradients of the constant
//! coefficients) on one thread. Only F receives a gradient. CPU f32 only (see
//! [`edm_item_losses`]).

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::cpu::storage_f32;

/// Per-item coefficients of the loss: c_skip, c_out and the loss weight w (already f32).
#[derive(Clone, Debug)]
pub struct EdmLossCoefficients {
    pub c_skip: Vec<f32>,
    pub c_out: Vec<f32>,
    pub weight: Vec<f32>,
}

/// Whether [`edm_item_losses`] runs for these tensors (else the caller composes candle ops).
pub fn fused_loss_applies(f: &Tensor) -> bool {
    matches!(f.device(), Device::Cpu) && f.dtype() == DType::F32
}

/// Per-item losses `[B]` (see the module doc); `f`, `x_noisy`, `x` are `[B, C, T]` f32 on the CPU.
pub fn edm_item_losses(f: &Tensor, x_noisy: &Tensor, x: &Tensor, k: &EdmLossCoefficients) -> Result<Tensor> {
    let b = f.dim(0)?;
    if x_noisy.dims() != f.dims() || x.dims() != f.dims() || [k.c_skip.len(), k.c_out.len(), k.weight.len()] != [b; 3] {
        candle_core::bail!("edm loss: F {:?}, x̃ {:?}, x {:?} and {} coefficients do not match", f.dims(), x_noisy.dims(), x.dims(), b);
    }
    f.contiguous()?.apply_op3(&x_noisy.contiguous()?, &x.contiguous()?, EdmItemLoss(k.clone()))
}

/// Splits each item into this many-sample chunks for the threads.
const CHUNK: usize = 16_384;

struct EdmItemLoss(EdmLossCoefficients);

impl EdmItemLoss {
    fn denoised(&self, item: usize, f: f32, xn: f32) -> f32 {
        self.0.c_skip[item] * xn + self.0.c_out[item] * f
    }
}

impl CustomOp3 for EdmItemLoss {
    fn name(&self) -> &'static str {
        "edm-item-loss"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (f, xn, x) = (storage_f32(s1, l1, self.name())?, storage_f32(s2, l2, self.name())?, storage_f32(s3, l3, self.name())?);
        let b = l1.shape().dims()[0];
        let per_item = f.len() / b.max(1);
        let chunks_per_item = per_item.div_ceil(CHUNK).max(1);
        let partial: Vec<f64> = (0..b * chunks_per_item)
            .into_par_iter()
            .map(|job| {
                let (item, chunk) = (job / chunks_per_item, job % chunks_per_item);
                let start = item * per_item + chunk * CHUNK;
                let end = (start + CHUNK).min((item + 1) * per_item);
                (start..end)
                    .map(|i| {
                        let d = self.denoised(item, f[i], xn[i]).clamp(-1.0, 1.0) - x[i];
                        (d * d) as f64
                    })
                    .sum()
            })
            .collect();
        let losses = (0..b)
            .map(|item| {
                let sum: f64 = partial[item * chunks_per_item..(item + 1) * chunks_per_item].iter().sum();
                (sum / per_item as f64 * self.0.weight[item] as f64) as f32
            })
            .collect();
        Ok((CpuStorage::F32(losses), Shape::from(b)))
    }

    fn bwd(&self, f: &Tensor, xn: &Tensor, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g: Vec<f32> = grad.to_dtype(DType::F32)?.to_vec1()?;
        let per_item = (f.elem_count() / f.dim(0)?.max(1)) as f32;
        // dF = scale_b · (D − x) where D is not clamped: scale_b = g_b · w_b · 2/(C·T) · c_out,b
        let k = &self.0;
        let scale = (0..g.len()).map(|b| g[b] * k.weight[b] * 2.0 / per_item * k.c_out[b]).collect();
        let df = f.apply_op3(xn, x, EdmItemLossGrad { loss: EdmItemLoss(k.clone()), scale })?;
        Ok((Some(df), None, None))
    }
}

/// dF of [`EdmItemLoss`]: `scale[b] · (D − x)` where D is not clamped, else 0.
struct EdmItemLossGrad {
    loss: EdmItemLoss,
    scale: Vec<f32>,
}

impl CustomOp3 for EdmItemLossGrad {
    fn name(&self) -> &'static str {
        "edm-item-loss-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (f, xn, x) = (storage_f32(s1, l1, self.name())?, storage_f32(s2, l2, self.name())?, storage_f32(s3, l3, self.name())?);
        let b = l1.shape().dims()[0];
        let per_item = f.len() / b.max(1);
        let mut df = vec![0f32; f.len()];
        df.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, out)| {
            let start = ci * CHUNK;
            for (j, o) in out.iter_mut().enumerate() {
                let i = start + j;
                let item = i / per_item;
                let pre = self.loss.denoised(item, f[i], xn[i]);
                if pre > -1.0 && pre < 1.0 {
                    *o = self.scale[item] * (pre - x[i]);
                }
            }
        });
        Ok((CpuStorage::F32(df), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::SeededNoise;
    use candle_core::Var;

    /// The same loss from candle ops (the clamp's gradient splits at ±1, which random data never hits).
    fn composite(f: &Tensor, xn: &Tensor, x: &Tensor, k: &EdmLossCoefficients) -> Tensor {
        let b = f.dim(0).unwrap();
        let col = |v: &[f32]| Tensor::from_vec(v.to_vec(), (b, 1, 1), f.device()).unwrap();
        let d = (xn.broadcast_mul(&col(&k.c_skip)).unwrap() + f.broadcast_mul(&col(&k.c_out)).unwrap()).unwrap().clamp(-1f32, 1f32).unwrap();
        let mse = (d - x).unwrap().sqr().unwrap().flatten_from(1).unwrap().mean(1).unwrap();
        (mse * Tensor::from_vec(k.weight.clone(), b, f.device()).unwrap()).unwrap()
    }

    #[test]
    fn fused_loss_matches_candle_ops_in_value_and_gradient() {
        let (b, c, t) = (3, 4, 20_000); // items span several chunks
        let dev = Device::Cpu;
        let rand = |seed, scale: f32| {
            let v: Vec<f32> = SeededNoise::new(seed).standard_normal(b * c * t).iter().map(|v| v * scale).collect();
            Tensor::from_vec(v, (b, c, t), &dev).unwrap()
        };
        let (xn, x) = (rand(1, 0.8), rand(2, 0.3));
        let f = Var::from_tensor(&rand(3, 1.5)).unwrap();
        let k = EdmLossCoefficients { c_skip: vec![0.9, 0.5, 0.02], c_out: vec![0.1, 0.6, 0.2], weight: vec![100.0, 5.0, 26.0] };
        // some outputs are clamped
        let pre = (xn.broadcast_mul(&Tensor::from_vec(k.c_skip.clone(), (b, 1, 1), &dev).unwrap()).unwrap()
            + f.as_tensor().broadcast_mul(&Tensor::from_vec(k.c_out.clone(), (b, 1, 1), &dev).unwrap()).unwrap())
        .unwrap();
        let clamped = pre.abs().unwrap().ge(1.0).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(clamped > 100.0, "{clamped} clamped outputs");

        let ours = edm_item_losses(f.as_tensor(), &xn, &x, &k).unwrap();
        let plain = composite(f.as_tensor(), &xn, &x, &k);
        let (a, p): (Vec<f32>, Vec<f32>) = (ours.to_vec1().unwrap(), plain.to_vec1().unwrap());
        for (a, p) in a.iter().zip(&p) {
            assert!((a - p).abs() <= 1e-5 * p.abs(), "{a} vs {p}");
        }
        // gradient of a weighted sum of the items
        let probe = Tensor::new(&[0.7f32, -1.3, 2.0], &dev).unwrap();
        let ga = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (&plain * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let (ga, gp) = (ga.get(f.as_tensor()).unwrap(), gp.get(f.as_tensor()).unwrap());
        let err = (ga - gp).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let scale = gp.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(scale > 0.0 && err <= 1e-5 * scale, "gradient error {err} (scale {scale})");
        let zeros = ga.eq(0.0).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(zeros, clamped, "clamped outputs get no gradient");
    }
}
