//! The training convolution's backward ([`super::conv_grad`]) for stride 1 and a handful of
//! channels (the network's full-resolution blocks before patching: 4 → 4 channels over 65,536
//! samples). There a gemm per tap has 4 rows and 4 inner products, all overhead: measured 6 ms per
//! backward of batch 4, 25 MFLOP, against 3 ms here (the forward stays on the gemms: these loops
//! were slower for it, 2.0 against 1.4 ms). Here every (output channel, input channel, tap) is one vectorized
//! multiply-add or dot product over a run of samples, in tiles that stay in cache, the
//! (batch item, tile) pairs in parallel.

use rayon::prelude::*;

use super::cpu::{sum_in_order, SendPtr};
use super::simd;

/// (Shared with [`super::conv_grad`], which builds the runs.) A run of `n` (output, input) pairs of weight tap `j`: output `o0 + t·ostep` with input
/// `i0 + t·istep`.
pub(super) struct Tap {
    pub j: usize,
    pub o0: usize,
    pub ostep: usize,
    pub i0: usize,
    pub istep: usize,
    pub n: usize,
}

/// Samples per tile.
const TILE: usize = 4096;

/// Whether the direct loops beat the per-tap gemms (for the backward).
pub fn takes(c_in: usize, c_out: usize, stride_one: bool) -> bool {
    stride_one && c_in * c_out <= 64
}

/// Shape of a stride-1 convolution, weight `[C_out, C_in, k]`.
#[derive(Clone, Copy)]
pub struct Dims {
    pub batch: usize,
    pub c_in: usize,
    pub len: usize,
    pub c_out: usize,
    pub k: usize,
    pub l_out: usize,
}

/// The part of `taps`' run inside `lo..hi` of the axis `at` picks (output or input):
/// `(first output, first input, count)`.
fn clip(t: &Tap, lo: usize, hi: usize, on_output: bool) -> Option<(usize, usize, usize)> {
    let start = if on_output { t.o0 } else { t.i0 };
    let (a, b) = (lo.max(start), hi.min(start + t.n));
    (a < b).then(|| if on_output { (a, t.i0 + (a - t.o0), b - a) } else { (t.o0 + (a - t.i0), a, b - a) })
}

/// The input gradient `Σ_tap W[tap]ᵀ · g` (shifted).
pub fn input_grad(w: &[f32], g: &[f32], d: Dims, taps: &[Tap]) -> Vec<f32> {
    let Dims { batch, c_in, len, c_out, k, l_out } = d;
    let mut gx = vec![0f32; batch * c_in * len];
    let tiles = len.div_ceil(TILE);
    let gp = SendPtr(gx.as_mut_ptr());
    (0..batch * tiles).into_par_iter().for_each(|task| {
        let gp = gp;
        let (b, lo) = (task / tiles, (task % tiles) * TILE);
        for t in taps {
            let Some((o, i, n)) = clip(t, lo, (lo + TILE).min(len), false) else { continue };
            for ci in 0..c_in {
                // SAFETY: task (b, tile) alone writes gx[b, ·, tile]; i..i + n lies in the tile.
                let xr = unsafe { std::slice::from_raw_parts_mut(gp.0.add((b * c_in + ci) * len + i), n) };
                for co in 0..c_out {
                    let wv = w[(co * c_in + ci) * k + t.j];
                    let gr = &g[(b * c_out + co) * l_out + o..][..n];
                    xr.iter_mut().zip(gr).for_each(|(x, &g)| *x += wv * g);
                }
            }
        }
    });
    gx
}

/// The weight gradient `[C_out, C_in, k]`: dot products of output-gradient and input runs.
pub fn weight_grad(x: &[f32], g: &[f32], d: Dims, taps: &[Tap]) -> Vec<f32> {
    let Dims { batch, c_in, len, c_out, k, l_out } = d;
    let tiles = l_out.div_ceil(TILE);
    // one partial per (item, tile), added in order: the same sums whatever the threads
    let parts: Vec<Vec<f32>> = (0..batch * tiles)
        .into_par_iter()
        .map(|task| {
            let mut gw = vec![0f32; c_out * c_in * k];
            let (b, lo) = (task / tiles, (task % tiles) * TILE);
            for t in taps {
                let Some((o, i, n)) = clip(t, lo, (lo + TILE).min(l_out), true) else { continue };
                for co in 0..c_out {
                    let gr = &g[(b * c_out + co) * l_out + o..][..n];
                    for ci in 0..c_in {
                        gw[(co * c_in + ci) * k + t.j] += simd::dot(gr, &x[(b * c_in + ci) * len + i..][..n]);
                    }
                }
            }
            gw
        })
        .collect();
    sum_in_order(parts, c_out * c_in * k)
}
