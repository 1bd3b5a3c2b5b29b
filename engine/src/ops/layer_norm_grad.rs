//! The hand-written backward of the [`Path::CpuGrad`] form of [`super::layer_norm_no_bias`] (the
//! op itself, whose forward is the inference kernel, is in layer_norm.rs). The composite form's backward runs
//! through about ten element-wise nodes, and the gain's gradient is a broadcast sum over batch and
//! time, which candle does with a per-element index loop.
//!
//! With `x` viewed as `[outer, D, inner]` (D the normalized axis: `[B·L, C, 1]` for the last axis,
//! `[B, C, L]` for the channels), `x̂ = (x − μ)·r`, `r = 1/√(σ² + ε)` over D, `y = x̂·g`:
//! `dx = r·(dx̂ − mean_D(dx̂) − x̂·mean_D(dx̂·x̂))` with `dx̂ = dy·g`, and `dg = Σ dy·x̂` over
//! outer and inner.
//!
//! [`Path::CpuGrad`]: super::Path::CpuGrad

use rayon::prelude::*;

use super::cpu::sum_in_order;
use super::{simd, NORM_EPS};

/// `(dx, dg)`; per outer slice (in parallel) the statistics over D are vectors along `inner`.
pub fn backward(x: &[f32], g: &[f32], dy: &[f32], outer: usize, d: usize, inner: usize) -> (Vec<f32>, Vec<f32>) {
    if inner == 1 {
        return backward_rows(x, g, dy, d);
    }
    let slice = d * inner;
    let mut dx = vec![0f32; outer * slice];
    // one partial dg per outer slice, added in order (the same sums whatever the threads)
    let parts: Vec<Vec<f32>> = dx
        .par_chunks_mut(slice.max(1))
        .zip(x.par_chunks(slice.max(1)).zip(dy.par_chunks(slice.max(1))))
        .map(|(dxo, (xo, dyo))| {
            let mut dg = vec![0f32; d];
            let inv_d = 1.0 / d as f32;
            let (mut mean, mut var) = (vec![0f32; inner], vec![0f32; inner]);
            for row in xo.chunks(inner) {
                mean.iter_mut().zip(row).for_each(|(m, &v)| *m += v);
            }
            mean.iter_mut().for_each(|m| *m *= inv_d);
            for row in xo.chunks(inner) {
                var.iter_mut().zip(row).zip(&mean).for_each(|((s, &v), &m)| *s += (v - m) * (v - m));
            }
            let rstd: Vec<f32> = var.iter().map(|&s| 1.0 / ((s * inv_d) as f64 + NORM_EPS).sqrt() as f32).collect();
            // mean_D(dx̂) and mean_D(dx̂·x̂); dg
            let (mut m1, mut m2) = (vec![0f32; inner], vec![0f32; inner]);
            for (r, (row, dyr)) in xo.chunks(inner).zip(dyo.chunks(inner)).enumerate() {
                let mut dgr = 0f32;
                for i in 0..inner {
                    let xh = (row[i] - mean[i]) * rstd[i];
                    let dxh = dyr[i] * g[r];
                    m1[i] += dxh;
                    m2[i] += dxh * xh;
                    dgr += dyr[i] * xh;
                }
                dg[r] += dgr;
            }
            for (r, ((row, dyr), dxr)) in xo.chunks(inner).zip(dyo.chunks(inner)).zip(dxo.chunks_mut(inner)).enumerate() {
                for i in 0..inner {
                    let xh = (row[i] - mean[i]) * rstd[i];
                    dxr[i] = rstd[i] * (dyr[i] * g[r] - m1[i] * inv_d - xh * m2[i] * inv_d);
                }
            }
            dg
        })
        .collect();
    (dx, sum_in_order(parts, d))
}

/// [`backward`] over contiguous rows of `d` (the last axis): the reductions in SIMD lanes, the
/// rest element-wise (vectorized), no per-row vectors.
fn backward_rows(x: &[f32], g: &[f32], dy: &[f32], d: usize) -> (Vec<f32>, Vec<f32>) {
    let mut dx = vec![0f32; x.len()];
    // one partial dg per block of PART_ROWS rows, added in order (the same sums whatever the
    // threads)
    let part = d.max(1) * PART_ROWS;
    let parts: Vec<Vec<f32>> = dx
        .par_chunks_mut(part)
        .zip(x.par_chunks(part).zip(dy.par_chunks(part)))
        .map(|(dxp, (xp, dyp))| {
            let mut dg = vec![0f32; d];
            for (dxr, (xr, dyr)) in dxp.chunks_mut(d.max(1)).zip(xp.chunks(d.max(1)).zip(dyp.chunks(d.max(1)))) {
                let mean = (simd::sum(xr) / d as f64) as f32;
                let rstd = 1.0 / (simd::centered_sq_sum(xr, mean) / d as f64 + NORM_EPS).sqrt() as f32;
                // dx̂ = dy·g into dx first; Σ dx̂ and Σ dx̂·x̂ = r·(Σ dx̂·x − μ·Σ dx̂)
                dxr.iter_mut().zip(dyr).zip(g).for_each(|((o, &dy), &g)| *o = dy * g);
                let s1 = simd::sum(dxr) as f32;
                let s2 = rstd * (simd::dot(dxr, xr) - mean * s1);
                let (m1, m2) = (s1 / d as f32, s2 / d as f32);
                for (((o, &xv), &dyv), dgv) in dxr.iter_mut().zip(xr).zip(dyr).zip(dg.iter_mut()) {
                    let xh = (xv - mean) * rstd;
                    *dgv += dyv * xh;
                    *o = rstd * (*o - m1 - xh * m2);
                }
            }
            dg
        })
        .collect();
    (dx, sum_in_order(parts, d))
}

/// Rows per partial sum of the gain's gradient: enough work per task, few partials.
const PART_ROWS: usize = 32;

#[cfg(test)]
mod tests {
    use candle_core::{Var, D};

    use crate::ops::tests::{rand, rel_diff};
    use crate::ops::{layer_norm_no_bias, layer_norm_no_bias_composite};

    /// Values and gradients (input, gain) equal the composite form's, over the channels and over
    /// the last axis, batch 3, odd lengths.
    #[test]
    fn layer_norm_matches_composite_with_gradients() {
        for (dims, dim, g_shape, seed) in [([3, 12, 37], D::Minus2, vec![1, 12, 1], 1), ([3, 5, 24], D::Minus1, vec![24], 2), ([2, 33, 7], D::Minus1, vec![7], 3), ([2, 1, 5], D::Minus2, vec![1, 1, 1], 4)] {
            let x = Var::from_tensor(&rand(&dims, seed).affine(2.0, 0.5).unwrap()).unwrap();
            let g = Var::from_tensor(&rand(&g_shape, seed + 10)).unwrap();
            let ours = layer_norm_no_bias(&x, &g, dim).unwrap();
            let oracle = layer_norm_no_bias_composite(&x, &g, dim).unwrap();
            assert!(rel_diff(&ours, &oracle) < 1e-5, "{dims:?}: values differ by {}", rel_diff(&ours, &oracle));
            let probe = rand(&dims, seed + 20);
            let ga = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&oracle * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for v in [&x, &g] {
                let (a, b) = (ga.get(v).expect("our gradient"), gb.get(v).unwrap());
                assert_eq!(a.dims(), b.dims());
                assert!(rel_diff(a, b) < 1e-4, "{dims:?}: gradient differs by {}", rel_diff(a, b));
            }
        }
    }
}
