//! `y = x · Wᵀ + b` over the last dimension ([`linear`]; `w` `[out, in]`, PyTorch layout), in two
//! forms: [`Path::FastCpu`] reads the weight in place (few rows: one pass over each weight row;
//! more: one gemm); every other path is candle's matmul (one gemm already; no CUDA or gradient
//! form of our own).

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::cpu::{expect_len, filled_rows, gemm_acc, with_f32};
use super::path::{path_for, Path};
use super::{profile, simd};

/// `y = x · Wᵀ + b` over the last dimension; `w` is `[out, in]` (PyTorch layout).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    profile::time(|| format!("linear {:?}x{:?}", x.dims(), w.dims()), || {
        let mut inputs = vec![x, w];
        inputs.extend(b);
        match path_for(&inputs) {
            Path::FastCpu => match linear_fast(x, w, b)? {
                Some(y) => Ok(y),
                None => linear_composite(x, w, b),
            },
            Path::CpuGrad | Path::Cuda | Path::Composite => linear_composite(x, w, b),
        }
    })
}

/// The [`Path::FastCpu`] form, or `None` for shapes it does not take.
fn linear_fast(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Option<Tensor>> {
    if w.rank() != 2 || x.rank() < 2 {
        return Ok(None);
    }
    let (d_out, d_in) = w.dims2()?;
    let dims = x.dims().to_vec();
    if dims[dims.len() - 1] != d_in || b.is_some_and(|b| b.dims() != [d_out]) {
        return Ok(None);
    }
    let rows = x.elem_count() / d_in.max(1);
    let y = with_f32(x, |xs| {
        with_f32(w, |ws| match b {
            Some(b) => with_f32(b, |bs| Ok(linear_f32(xs, rows, d_in, ws, d_out, Some(bs)))),
            None => Ok(linear_f32(xs, rows, d_in, ws, d_out, None)),
        })
    })?;
    let mut shape = dims;
    *shape.last_mut().expect("rank >= 2") = d_out;
    Ok(Some(Tensor::from_vec(y, shape, &Device::Cpu)?))
}

/// The composite form of [`linear`]: candle ops only, differentiable on any device and dtype.
pub fn linear_composite(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = match x.rank() {
        2 => x.matmul(&w.t()?)?,
        _ => x.broadcast_matmul(&w.t()?)?,
    };
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// `y [rows, out] = x [rows, in] · wᵀ (+ bias)`, `w` `[out, in]` read in place.
fn linear_f32(x: &[f32], rows: usize, d_in: usize, w: &[f32], d_out: usize, bias: Option<&[f32]>) -> Vec<f32> {
    expect_len("linear input", x, rows * d_in);
    expect_len("linear weight", w, d_out * d_in);
    if let Some(b) = bias {
        expect_len("linear bias", b, d_out);
    }
    if rows <= 64 {
        // Few rows (the attention levels' 8 to 64 time steps): weight-bandwidth bound; every
        // weight row is read once, contiguously, and dotted with all input rows.
        let mut out_t = vec![0f32; d_out * rows]; // [out, rows]
        out_t.par_chunks_mut(rows.max(1) * 16).enumerate().for_each(|(blk, chunk)| {
            for (i, col) in chunk.chunks_mut(rows.max(1)).enumerate() {
                let o = blk * 16 + i;
                let wr = &w[o * d_in..(o + 1) * d_in];
                let b0 = bias.map_or(0.0, |b| b[o]);
                for (r, v) in col.iter_mut().enumerate() {
                    *v = simd::dot(&x[r * d_in..(r + 1) * d_in], wr) + b0;
                }
            }
        });
        let mut out = vec![0f32; rows * d_out];
        for (o, col) in out_t.chunks(rows.max(1)).enumerate() {
            for (r, &v) in col.iter().enumerate() {
                out[r * d_out + o] = v;
            }
        }
        return out;
    }
    let mut out = filled_rows(rows, d_out, |_| 0.0);
    if let Some(b) = bias {
        out.par_chunks_mut(d_out.max(1)).for_each(|r| r.copy_from_slice(b));
    }
    // yᵀ [out, rows] = w [out, in] · xᵀ [in, rows]
    // SAFETY: y (o, r) at r·out + o; w (o, i) at o·in + i; xᵀ (i, r) at r·in + i.
    unsafe {
        gemm_acc(d_out, rows, d_in, out.as_mut_ptr(), 1, d_out as isize, w.as_ptr(), d_in as isize, 1, x.as_ptr(), 1, d_in as isize);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{rand, rel_diff};

    #[test]
    fn fast_linear_matches_composite() {
        for (shape, d_out) in [(vec![2usize, 7, 24], 5usize), (vec![3, 24], 9), (vec![1, 1, 24], 24), (vec![1, 70, 40], 33)] {
            let d_in = shape[shape.len() - 1];
            let x = rand(&shape, 90);
            let w = rand(&[d_out, d_in], 91);
            let b = rand(&[d_out], 92);
            for bias in [Some(&b), None] {
                let fast = linear(&x, &w, bias).unwrap();
                assert!(!fast.track_op());
                let comp = linear_composite(&x, &w, bias).unwrap();
                assert_eq!(fast.dims(), comp.dims());
                assert!(rel_diff(&fast, &comp) < 1e-5, "{shape:?} -> {d_out}: {}", rel_diff(&fast, &comp));
            }
        }
    }
}
