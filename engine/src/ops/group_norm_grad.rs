//! The hand-written backward of GroupNorm → per-channel affine → optional `h·(1 + scale) + shift`
//! → SiLU on the CPU (f32), for the [`super::Path::CpuGrad`] form in [`super::group_norm`]: two
//! passes over the input instead of candle's backward through some fifteen element-wise ops, each
//! allocating a full-size tensor.
//!
//! Per batch item and group of `n` values, with `x̂ = (x − μ)·r`, `r = 1/√(σ² + ε)`,
//! `h₀ = x̂·γ + β`, `h = h₀·(1 + a) + b` and `y = h·sig(h)`:
//! - `dh = dy · sig(h)·(1 + h·(1 − sig(h)))`;
//! - `db = Σ_t dh`, `da = Σ_t dh·h₀`, `dh₀ = dh·(1 + a)`, `dγ = Σ_{b,t} dh₀·x̂`, `dβ = Σ_{b,t} dh₀`;
//! - `dx̂ = dh₀·γ`, `dx = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))` over the group.

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::cpu::with_f32;
use super::{simd, NORM_EPS};

/// Gradients for `x`, the packed `[γ, β]` and (if present) the packed `[scale, shift]`.
pub fn backward(groups: usize, x: &Tensor, params: &Tensor, ss: Option<&Tensor>, grad: &Tensor) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    super::profile::time(|| format!("group_norm_silu backward {:?}", x.dims()), || backward_timed(groups, x, params, ss, grad))
}

fn backward_timed(groups: usize, x: &Tensor, params: &Tensor, ss: Option<&Tensor>, grad: &Tensor) -> Result<(Tensor, Tensor, Option<Tensor>)> {
    let (b, c, l) = x.dims3()?;
    let (x, params, grad) = (x.contiguous()?, params.contiguous()?, grad.contiguous()?);
    let ss = ss.map(Tensor::contiguous).transpose()?;
    with_f32(&x, |xs| {
        with_f32(&params, |p| {
            with_f32(&grad, |dy| {
                let ss_vals = match &ss {
                    Some(t) => Some(with_f32(t, |s| Ok(split_scale_shift(s, b, c)))?),
                    None => None,
                };
                let g = backward_f32(xs, dy, b, c, l, groups, p, ss_vals.as_ref());
                let dx = Tensor::from_vec(g.dx, (b, c, l), &Device::Cpu)?;
                let dp = Tensor::from_vec(g.dparams, 2 * c, &Device::Cpu)?;
                let dss = match ss_vals {
                    Some(_) => Some(Tensor::from_vec(g.dss, (b, 2 * c), &Device::Cpu)?),
                    None => None,
                };
                Ok((dx, dp, dss))
            })
        })
    })
}

/// `[B, 2C]` packed `[scale | shift]` rows → (`scale`, `shift`), each `[B·C]`.
pub fn split_scale_shift(s: &[f32], b: usize, c: usize) -> (Vec<f32>, Vec<f32>) {
    let mut scale = Vec::with_capacity(b * c);
    let mut shift = Vec::with_capacity(b * c);
    for row in s.chunks(2 * c).take(b) {
        scale.extend_from_slice(&row[..c]);
        shift.extend_from_slice(&row[c..]);
    }
    (scale, shift)
}

struct Grads {
    dx: Vec<f32>,
    /// `[dγ (C), dβ (C)]`
    dparams: Vec<f32>,
    /// `[B, 2C]`: `[d scale | d shift]` per batch item
    dss: Vec<f32>,
}

/// Per-row sums of the first backward pass.
#[derive(Clone, Copy, Default)]
struct RowSums {
    dshift: f64,
    dscale: f64,
    dgamma: f64,
    dbeta: f64,
    /// Σ dx̂ and Σ dx̂·x̂
    s1: f64,
    s2: f64,
}

#[allow(clippy::too_many_arguments)]
fn backward_f32(
    x: &[f32],
    dy: &[f32],
    b: usize,
    c: usize,
    l: usize,
    groups: usize,
    params: &[f32],
    ss: Option<&(Vec<f32>, Vec<f32>)>,
) -> Grads {
    let (gamma, beta) = params.split_at(c);
    let cpg = c / groups;
    let n = (cpg * l) as f64;
    // Group statistics as in the forward (mean, then centred sum of squares), in f64.
    let stats: Vec<(f64, f64)> = (0..b * groups)
        .into_par_iter()
        .map(|bg| {
            let data = &x[bg * cpg * l..(bg + 1) * cpg * l];
            // SIMD lanes as in the forward's statistics (scalar f64 loops here took a fifth of
            // this backward)
            let mean = simd::sum(data) / n;
            let var = simd::centered_sq_sum(data, mean as f32) / n;
            (mean, 1.0 / (var + NORM_EPS).sqrt())
        })
        .collect();
    let row_coef = |row: usize| {
        let (bi, ch) = (row / c, row % c);
        let (mean, rstd) = stats[bi * groups + ch / cpg];
        let (a, t) = ss.map_or((0.0, 0.0), |(s, t)| (s[row], t[row]));
        (mean as f32, rstd as f32, gamma[ch], beta[ch], a, t)
    };
    let mut dx = vec![0f32; x.len()];
    // Pass 1: dx̂ into dx, and the row sums.
    let sums: Vec<RowSums> = dx
        .par_chunks_mut(l.max(1))
        .zip(x.par_chunks(l.max(1)).zip(dy.par_chunks(l.max(1))))
        .enumerate()
        .map(|(row, (dxr, (xr, dyr)))| {
            let (mean, rstd, g, be, a, t) = row_coef(row);
            // one vectorized pass (f32 lanes, SIMD exp) instead of f64 sums per element
            let [dshift, dscale, dgamma, dbeta, s1, s2] = simd::gn_silu_backward_row(xr, dyr, dxr, &[mean, rstd, g, be, a, t]);
            RowSums { dshift, dscale, dgamma, dbeta, s1, s2 }
        })
        .collect();
    // Group means of dx̂ and dx̂·x̂.
    let group_means: Vec<(f32, f32)> = (0..b * groups)
        .map(|bg| {
            let rows = &sums[bg * cpg..(bg + 1) * cpg];
            let s1: f64 = rows.iter().map(|r| r.s1).sum();
            let s2: f64 = rows.iter().map(|r| r.s2).sum();
            ((s1 / n) as f32, (s2 / n) as f32)
        })
        .collect();
    // Pass 2: dx = r·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)).
    dx.par_chunks_mut(l.max(1)).zip(x.par_chunks(l.max(1))).enumerate().for_each(|(row, (dxr, xr))| {
        let (mean, rstd, ..) = row_coef(row);
        let (m1, m2) = group_means[(row / c) * groups + (row % c) / cpg];
        for (d, &xv) in dxr.iter_mut().zip(xr) {
            let xh = (xv - mean) * rstd;
            *d = rstd * (*d - m1 - xh * m2);
        }
    });
    let mut dparams = vec![0f32; 2 * c];
    for ch in 0..c {
        dparams[ch] = (0..b).map(|bi| sums[bi * c + ch].dgamma).sum::<f64>() as f32;
        dparams[c + ch] = (0..b).map(|bi| sums[bi * c + ch].dbeta).sum::<f64>() as f32;
    }
    let mut dss = vec![0f32; 2 * b * c];
    for bi in 0..b {
        for ch in 0..c {
            dss[bi * 2 * c + ch] = sums[bi * c + ch].dscale as f32;
            dss[bi * 2 * c + c + ch] = sums[bi * c + ch].dshift as f32;
        }
    }
    Grads { dx, dparams, dss }
}
