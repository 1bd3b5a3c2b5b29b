//! What every CPU kernel shares: the f32 data of a tensor or of a custom op's storage, the length
//! check before raw-pointer writes, parallel fills and a strided gemm. The kernels themselves live
//! with their op family ([`super::conv`], [`super::group_norm`], ...).
//!
//! Loops are parallel on rayon's pool, the same one gemm uses, so the two never fight over the
//! cores.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};
use rayon::prelude::*;

/// A read lock on a tensor's contiguous CPU f32 data.
pub struct F32Data<'a> {
    guard: candle_core::StorageRef<'a>,
    start: usize,
    len: usize,
}

impl F32Data<'_> {
    pub fn slice(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.start + self.len],
            _ => unreachable!("checked in f32_data"),
        }
    }
}

/// The data of a contiguous CPU f32 tensor, or `None` for anything else.
pub fn f32_data(t: &Tensor) -> Option<F32Data<'_>> {
    let (guard, layout): (_, &Layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    match &*guard {
        Storage::Cpu(CpuStorage::F32(_)) => Some(F32Data { guard, start, len: end - start }),
        _ => None,
    }
}

/// The data of a CPU f32 tensor made contiguous first if needed.
pub fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    if let Some(d) = f32_data(t) {
        return f(d.slice());
    }
    let t = t.contiguous()?;
    let d = f32_data(&t).ok_or_else(|| candle_core::Error::Msg("fast CPU kernel on a non-CPU-f32 tensor".into()))?;
    f(d.slice())
}

/// The f32 data of a custom op's contiguous CPU input (`op` names the op in the error).
pub fn storage_f32<'a>(s: &'a candle_core::CpuStorage, l: &candle_core::Layout, op: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("{op}: inputs must be contiguous"),
    }
}

/// Panics unless `data` holds exactly `need` values. The kernels write through raw pointers
/// with offsets computed from the shape arguments, so a shape that disagrees with the buffers
/// would write past a heap block (silently, in a release build) instead of failing here; the
/// check is O(1) per call, so it stays on in release builds too.
#[track_caller]
pub fn expect_len(what: &str, data: &[f32], need: usize) {
    assert!(data.len() == need, "fast kernel: {what} holds {} values, its shape needs {need}", data.len());
}

/// A raw pointer that may cross into rayon tasks; every task writes a disjoint part.
#[derive(Clone, Copy)]
pub struct SendPtr(pub *mut f32);
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// Adds partial sums in the order of their parts. Parallel reductions collect one partial per
/// fixed part of the work (a batch item, a block of rows), never per worker: rayon's `fold`
/// splits the work by scheduling, so its sums, and with them the gradients, would change from
/// run to run and with the thread count, and training would not repeat bit for bit.
pub fn sum_in_order(parts: Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let mut parts = parts.into_iter();
    let mut out = parts.next().unwrap_or_else(|| vec![0f32; len]);
    for p in parts {
        out.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    out
}

/// A vector of `rows · len` floats, row `r` filled with `value(r)` (in parallel).
pub fn filled_rows(rows: usize, len: usize, value: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(rows * len);
    v.spare_capacity_mut().par_chunks_mut(len.max(1)).enumerate().for_each(|(r, row)| {
        let x = value(r);
        for e in row {
            e.write(x);
        }
    });
    // SAFETY: every element was written above.
    unsafe { v.set_len(rows * len) };
    v
}

/// `dst[c, r] = src[r, c]` for `src` `[rows, cols]` (serial: callers run it per matrix from a
/// parallel loop). Wide matrices go in 16-column strips, each read row by row; tall ones column by
/// column, so the writes stay contiguous: a strip of a tall matrix would write 16 streams a whole
/// power-of-two column apart (4,096 floats for the patch of a window), all in one cache set.
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    const STRIP: usize = 16;
    expect_len("transpose input", src, rows * cols);
    expect_len("transpose output", dst, rows * cols);
    if cols > rows {
        for c0 in (0..cols).step_by(STRIP) {
            let c1 = (c0 + STRIP).min(cols);
            for r in 0..rows {
                for (c, &v) in (c0..c1).zip(&src[r * cols + c0..r * cols + c1]) {
                    dst[c * rows + r] = v;
                }
            }
        }
    } else {
        for (c, column) in dst.chunks_exact_mut(rows.max(1)).enumerate() {
            for (r, d) in column.iter_mut().enumerate() {
                *d = src[r * cols + c];
            }
        }
    }
}

fn parallelism() -> gemm::Parallelism {
    let n = rayon::current_num_threads();
    if n > 1 {
        gemm::Parallelism::Rayon(n)
    } else {
        gemm::Parallelism::None
    }
}

/// `dst (m×n) += lhs (m×k) · rhs (k×n)` with arbitrary strides (in elements).
///
/// # Safety
/// The pointers and strides must describe valid matrices; `dst` must not overlap the inputs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_acc(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
) {
    gemm_acc_on(parallelism(), m, n, k, dst, dst_rs, dst_cs, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, rhs_cs);
}

/// [`gemm_acc`] on the calling thread alone, for callers that run several independent products
/// in parallel themselves (one per batch item: no fork/join or serial packing inside each).
///
/// # Safety
/// As [`gemm_acc`].
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_acc_serial(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
) {
    gemm_acc_on(gemm::Parallelism::None, m, n, k, dst, dst_rs, dst_cs, lhs, lhs_rs, lhs_cs, rhs, rhs_rs, rhs_cs);
}

#[allow(clippy::too_many_arguments)]
unsafe fn gemm_acc_on(
    par: gemm::Parallelism,
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: isize,
    dst_cs: isize,
    lhs: *const f32,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const f32,
    rhs_rs: isize,
    rhs_cs: isize,
) {
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    gemm::gemm(m, n, k, dst, dst_cs, dst_rs, true, lhs, lhs_cs, lhs_rs, rhs, rhs_cs, rhs_rs, 1.0f32, 1.0f32, false, false, false, par);
}
