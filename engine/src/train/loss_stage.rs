//! The last stage of the training loss as one op: from the network's output F `[B, C, T]`,
//! the noisy input x̃ and the clean sources x, with coefficients per row r = (b, c) (all rows of
//! an item alike for a reference model; per stem for a per-stem σ model),
//!
//!   loss_b = 1/(C·T) · Σ_c w_r Σ_t (clamp(c_skip,r · x̃ + c_out,r · F, −1, 1) − x)²,
//!
//! with the gradient dF = g_b · w_r · 2/(C·T) · (D − x) · c_out,r where D is not clamped and 0
//! where it is (at exactly ±1 the composite ops split the gradient in halves; a set of measure
//! zero). Composed from candle ops this stage took about a quarter of a CPU training step: its
//! backward walks a dozen full-size tensors (the clamp's masks, gradients of the constant
//! coefficients) on one thread. Only F receives a gradient. CPU f32 only (see
//! [`edm_item_losses`]).

use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::ops::cpu::storage_f32;

/// Coefficients of the loss per row (item b, stem c; index b·C + c): c_skip, c_out and the loss
/// weight w (already f32; 0 leaves a row out of the loss, e.g. a clean given stem).
#[derive(Clone, Debug)]
pub struct EdmLossCoefficients {
    pub c_skip: Vec<f32>,
    pub c_out: Vec<f32>,
    pub weight: Vec<f32>,
}

impl EdmLossCoefficients {
    /// Per-item coefficients repeated over the item's `stems` rows.
    pub fn per_item(c_skip: &[f32], c_out: &[f32], weight: &[f32], stems: usize) -> Self {
        let rep = |v: &[f32]| v.iter().flat_map(|&x| std::iter::repeat_n(x, stems)).collect();
        Self { c_skip: rep(c_skip), c_out: rep(c_out), weight: rep(weight) }
    }
}

/// Whether [`edm_item_losses`] runs for these tensors (else the caller composes candle ops).
pub fn fused_loss_applies(f: &Tensor) -> bool {
    matches!(f.device(), Device::Cpu) && f.dtype() == DType::F32 && !crate::ops::composite_only()
}

/// Per-item losses `[B]` (see the module doc); `f`, `x_noisy`, `x` are `[B, C, T]` f32 on the CPU.
pub fn edm_item_losses(f: &Tensor, x_noisy: &Tensor, x: &Tensor, k: &EdmLossCoefficients) -> Result<Tensor> {
    let (b, c, _) = f.dims3()?;
    if x_noisy.dims() != f.dims() || x.dims() != f.dims() || [k.c_skip.len(), k.c_out.len(), k.weight.len()] != [b * c; 3] {
        candle_core::bail!(
            "edm loss: F {:?}, x̃ {:?}, x {:?} and {} coefficients do not match",
            f.dims(),
            x_noisy.dims(),
            x.dims(),
            k.c_skip.len()
        );
    }
    f.contiguous()?.apply_op3(&x_noisy.contiguous()?, &x.contiguous()?, EdmItemLoss(k.clone()))
}

/// Splits each item into this many-sample chunks for the threads.
const CHUNK: usize = 16_384;

struct EdmItemLoss(EdmLossCoefficients);

impl EdmItemLoss {
    fn denoised(&self, row: usize, f: f32, xn: f32) -> f32 {
        self.0.c_skip[row] * xn + self.0.c_out[row] * f
    }
}

impl CustomOp3 for EdmItemLoss {
    fn name(&self) -> &'static str {
        "edm-item-loss"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (f, xn, x) = (storage_f32(s1, l1, self.name())?, storage_f32(s2, l2, self.name())?, storage_f32(s3, l3, self.name())?);
        let dims = l1.shape().dims();
        let (b, t) = (dims[0], dims[2]);
        let rows = self.0.weight.len();
        let per_item = f.len() / b.max(1);
        let chunks_per_row = t.div_ceil(CHUNK).max(1);
        let partial: Vec<f64> = (0..rows * chunks_per_row)
            .into_par_iter()
            .map(|job| {
                let (row, chunk) = (job / chunks_per_row, job % chunks_per_row);
                let start = row * t + chunk * CHUNK;
                let end = (start + CHUNK).min((row + 1) * t);
                let sum: f64 = (start..end)
                    .map(|i| {
                        let d = self.denoised(row, f[i], xn[i]).clamp(-1.0, 1.0) - x[i];
                        (d * d) as f64
                    })
                    .sum();
                sum * self.0.weight[row] as f64
            })
            .collect();
        let per_item_jobs = rows / b.max(1) * chunks_per_row;
        let losses = (0..b)
            .map(|item| {
                let sum: f64 = partial[item * per_item_jobs..(item + 1) * per_item_jobs].iter().sum();
                (sum / per_item as f64) as f32
            })
            .collect();
        Ok((CpuStorage::F32(losses), Shape::from(b)))
    }

    fn bwd(&self, f: &Tensor, xn: &Tensor, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g: Vec<f32> = grad.to_dtype(DType::F32)?.to_vec1()?;
        let per_item = (f.elem_count() / f.dim(0)?.max(1)) as f32;
        let stems = f.dim(1)?;
        // dF = scale_r · (D − x) where D is not clamped: scale_r = g_b · w_r · 2/(C·T) · c_out,r
        let k = &self.0;
        let scale = (0..k.weight.len()).map(|r| g[r / stems] * k.weight[r] * 2.0 / per_item * k.c_out[r]).collect();
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
        let t = l1.shape().dims()[2].max(1);
        let mut df = vec![0f32; f.len()];
        df.par_chunks_mut(CHUNK).enumerate().for_each(|(ci, out)| {
            let start = ci * CHUNK;
            for (j, o) in out.iter_mut().enumerate() {
                let i = start + j;
                let row = i / t;
                let pre = self.loss.denoised(row, f[i], xn[i]);
                if pre > -1.0 && pre < 1.0 {
                    *o = self.scale[row] * (pre - x[i]);
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
        let (b, c, _) = f.dims3().unwrap();
        let col = |v: &[f32]| Tensor::from_vec(v.to_vec(), (b, c, 1), f.device()).unwrap();
        let d = (xn.broadcast_mul(&col(&k.c_skip)).unwrap() + f.broadcast_mul(&col(&k.c_out)).unwrap()).unwrap().clamp(-1f32, 1f32).unwrap();
        let err = (d - x).unwrap().sqr().unwrap().broadcast_mul(&col(&k.weight)).unwrap();
        err.flatten_from(1).unwrap().mean(1).unwrap()
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
        // item 0 alike over its stems (a reference model), items 1 and 2 per stem (a per-stem σ model)
        let mut k = EdmLossCoefficients::per_item(&[0.9], &[0.1], &[100.0], c);
        k.c_skip.extend([0.5, 0.7, 0.3, 0.5, 0.02, 0.2, 0.9, 0.6]);
        k.c_out.extend([0.6, 0.4, 0.8, 0.6, 0.2, 0.5, 0.3, 0.1]);
        k.weight.extend([5.0, 12.0, 3.0, 5.0, 26.0, 1.0, 80.0, 9.0]);
        // some outputs are clamped
        let pre = (xn.broadcast_mul(&Tensor::from_vec(k.c_skip.clone(), (b, c, 1), &dev).unwrap()).unwrap()
            + f.as_tensor().broadcast_mul(&Tensor::from_vec(k.c_out.clone(), (b, c, 1), &dev).unwrap()).unwrap())
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

        // A row of weight 0 (a clean given stem) adds nothing and gets no gradient.
        let mut masked = k.clone();
        masked.weight[5] = 0.0;
        let ours = edm_item_losses(f.as_tensor(), &xn, &x, &masked).unwrap();
        let plain = composite(f.as_tensor(), &xn, &x, &masked);
        let (a, p): (Vec<f32>, Vec<f32>) = (ours.to_vec1().unwrap(), plain.to_vec1().unwrap());
        assert!(a[1] < 0.99 * composite(f.as_tensor(), &xn, &x, &k).to_vec1::<f32>().unwrap()[1]);
        for (a, p) in a.iter().zip(&p) {
            assert!((a - p).abs() <= 1e-5 * p.abs(), "{a} vs {p}");
        }
        let g = ours.sum_all().unwrap().backward().unwrap();
        let row = g.get(f.as_tensor()).unwrap().get(1).unwrap().get(1).unwrap();
        assert_eq!(row.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}
