//! A convolution's columns (im2col) as one op with a direct backward, for training on the CPU.
//!
//! Built from candle ops, the columns are k narrowed views of the padded input stacked together;
//! candle's backward then zero-pads each tap's gradient to the full input and adds it up (k
//! full-size allocations, memsets and additions per convolution), which was about a fifth of a
//! training step. Here the backward is one pass that adds each column back where it came from
//! (col2im). Only CPU f32 runs it; see [`im2col`].

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::storage_f32;

/// `[B, C, L]` → `[B, C·k, L_out]` with `cols[b, c·k + j, o] = x_pad[b, c, o·stride + j]`,
/// `x_pad` being `x` with `pad` zeros on both sides and `L_out = (L + 2·pad − k) / stride + 1`.
/// `x` must be a CPU f32 tensor.
pub fn im2col(x: &Tensor, k: usize, stride: usize, pad: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Columns { k, stride: stride.max(1), pad })
}

#[derive(Clone, Copy)]
struct Columns {
    k: usize,
    stride: usize,
    pad: usize,
}

impl Columns {
    fn out_len(&self, len: usize) -> Result<usize> {
        let padded = len + 2 * self.pad;
        if padded < self.k {
            candle_core::bail!("im2col: input of {len} samples is shorter than the kernel ({})", self.k);
        }
        Ok((padded - self.k) / self.stride + 1)
    }

    /// The input sample feeding column `o` of tap `j`, if inside the input.
    #[inline]
    fn source(&self, o: usize, j: usize, len: usize) -> Option<usize> {
        (o * self.stride + j).checked_sub(self.pad).filter(|&t| t < len)
    }
}

impl CustomOp1 for Columns {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = storage_f32(s, l, self.name())?;
        let (b, c, len) = l.shape().dims3()?;
        let l_out = self.out_len(len)?;
        let mut cols = vec![0f32; b * c * self.k * l_out];
        // one (b, c) input row → its k column rows
        cols.par_chunks_mut(self.k * l_out).zip(x.par_chunks(len.max(1))).for_each(|(rows, xr)| {
            for (j, row) in rows.chunks_mut(l_out).enumerate() {
                for (o, v) in row.iter_mut().enumerate() {
                    if let Some(t) = self.source(o, j, len) {
                        *v = xr[t];
                    }
                }
            }
        });
        Ok((CpuStorage::F32(cols), Shape::from((b, c * self.k, l_out))))
    }

    fn bwd(&self, x: &Tensor, _cols: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let len = x.dim(2)?;
        Ok(Some(grad.contiguous()?.apply_op1(ColumnsBack { cols: *self, len })?))
    }
}

/// The adjoint of [`Columns`] (col2im): every column value added back to its input sample.
struct ColumnsBack {
    cols: Columns,
    len: usize,
}

impl CustomOp1 for ColumnsBack {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = storage_f32(s, l, self.name())?;
        let (b, ck, l_out) = l.shape().dims3()?;
        let k = self.cols.k;
        if ck % k != 0 || self.cols.out_len(self.len)? != l_out {
            candle_core::bail!("col2im: gradient shape {:?} does not fit kernel {k}", l.shape().dims());
        }
        let c = ck / k;
        let mut x = vec![0f32; b * c * self.len];
        x.par_chunks_mut(self.len.max(1)).zip(g.par_chunks(k * l_out)).for_each(|(xr, rows)| {
            for (j, row) in rows.chunks(l_out).enumerate() {
                for (o, &v) in row.iter().enumerate() {
                    if let Some(t) = self.cols.source(o, j, self.len) {
                        xr[t] += v;
                    }
                }
            }
        });
        Ok((CpuStorage::F32(x), Shape::from((b, c, self.len))))
    }
}
