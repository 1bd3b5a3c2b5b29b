//! 1-D convolution ([`Conv1d`], weight `[C_out, C_in, k]`, PyTorch layout), in two forms:
//! - [`Path::FastCpu`]: [`conv1d`] over slices, sums of large multithreaded gemm calls over
//!   shifted views of the input (no im2col for stride 1);
//! - [`Path::CpuGrad`] (training): the same kernel as one op with a hand-written backward, gemms
//!   per tap too ([`super::conv_grad`]);
//! - CUDA and composite: the gemm form, columns ([`super::columns`]) → one matmul
//!   ([`shared_weight_matmul`]) → bias ([`super::channel`]), each piece in the call's path (CUDA:
//!   one kernel each; composite: candle ops, which is [`Conv1d::forward_composite`]). candle's own
//!   CPU `conv1d` is not used: its weight gradient is wrong for batch > 1.

use std::sync::OnceLock;

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::cpu::{expect_len, filled_rows, gemm_acc, with_f32};
use super::path::{path_for, Path};
use super::{channel, columns, conv_grad, profile};

/// `w · cols[b]` for every batch item: `w` `[M, K]`, `cols` `[B, K, N]` → `[B, M, N]`.
///
/// A batched matmul broadcasts `w`, and candle's backward then sums the `[B, M, K]` weight
/// gradient over the batch with a slow per-element loop. Where that sum is larger than the
/// columns and the output together (deep levels: many channels, short time), the batch is folded
/// into the time axis instead, `w · [cols[0] | cols[1] | …]`, one plain matmul whose weight
/// gradient is one gemm, at the price of two transposing copies. On a GPU the same fold pays at
/// inference too: cuBLAS runs B small products (N of 32 to 512) several times slower than one
/// product B times as wide (the paper network at batch 4 took 5.4 times its batch-1 time).
pub(super) fn shared_weight_matmul(w: &Tensor, cols: &Tensor) -> Result<Tensor> {
    let (bsz, k, n) = cols.dims3()?;
    let m = w.dim(0)?;
    if bsz > 1 && (w.track_op() || !cols.device().is_cpu()) && m * k > (k + m) * n {
        let folded = cols.transpose(0, 1)?.contiguous()?.reshape((k, bsz * n))?;
        return w.matmul(&folded)?.reshape((m, bsz, n))?.transpose(0, 1)?.contiguous();
    }
    w.broadcast_matmul(cols)
}

/// A 1-D convolution with bias, weight `[C_out, C_in, k]` (PyTorch layout).
#[derive(Clone, Debug)]
pub struct Conv1d {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub stride: usize,
    pub padding: usize,
}

impl Conv1d {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let name = || {
            let (co, ci, k) = self.weight.dims3().unwrap_or_default();
            format!("conv1d k{k} s{} {ci}->{co} L{}", self.stride, x.dim(2).unwrap_or(0))
        };
        profile::time(name, || {
            let mut inputs = vec![x, &self.weight];
            inputs.extend(&self.bias);
            match path_for(&inputs) {
                Path::FastCpu => self.forward_fast(x),
                Path::CpuGrad => conv_grad::conv1d_grad(x, &self.weight, self.bias.as_ref(), self.stride, self.padding),
                path @ (Path::Cuda | Path::Composite) => self.forward_gemm(x, path),
            }
        })
    }

    fn shape(&self, x: &Tensor) -> Result<ConvShape> {
        let (batch, c_in, len) = x.dims3()?;
        let (c_out, wc_in, kernel) = self.weight.dims3()?;
        if wc_in != c_in {
            candle_core::bail!("conv1d: input has {c_in} channels, the weight expects {wc_in}");
        }
        if self.stride == 0 || len + 2 * self.padding < kernel {
            candle_core::bail!("conv1d: input length {len} is too short for kernel {kernel} (padding {})", self.padding);
        }
        Ok(ConvShape { batch, c_in, len, c_out, kernel, stride: self.stride, padding: self.padding })
    }

    /// The [`Path::FastCpu`] form.
    pub(super) fn forward_fast(&self, x: &Tensor) -> Result<Tensor> {
        let s = self.shape(x)?;
        let y = with_f32(x, |xs| {
            with_f32(&self.weight, |w| match &self.bias {
                Some(b) => with_f32(b, |b| Ok(conv1d(xs, w, Some(b), s))),
                None => Ok(conv1d(xs, w, None, s)),
            })
        })?;
        Tensor::from_vec(y, (s.batch, s.c_out, s.len_out()), &Device::Cpu)
    }

    /// The gemm form, its pieces in `path`'s form (with [`Path::CpuGrad`]: columns and bias as
    /// custom ops, the training form before [`super::conv_grad`]; kept for benchmarks).
    pub fn forward_gemm(&self, x: &Tensor, path: Path) -> Result<Tensor> {
        let (c_out, c_in, k) = self.weight.dims3()?;
        let cols = if self.stride == 1 {
            columns::im2col(x, k, self.padding, path)?
        } else {
            columns::im2col_strided(x, k, self.stride, self.padding, path)?
        };
        let w = self.weight.reshape((c_out, c_in * k))?;
        let y = shared_weight_matmul(&w, &cols)?;
        match &self.bias {
            Some(b) => channel::add_channel(&y, b, path),
            None => Ok(y),
        }
    }

    /// The composite form: candle ops only, differentiable on any device and dtype.
    pub fn forward_composite(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_gemm(x, Path::Composite)
    }
}

/// Whether to gather the columns and run one gemm with the weight read in its own (contiguous)
/// layout instead of one gemm per tap over the strided weight. Set, `MSDM_CONV_COLS` decides
/// instead (`1`: columns, anything else: per tap); it is read once per process.
fn use_cols(s: ConvShape) -> bool {
    static FORCED: OnceLock<Option<bool>> = OnceLock::new();
    if let Some(forced) = *FORCED.get_or_init(|| std::env::var("MSDM_CONV_COLS").ok().map(|v| v == "1")) {
        return forced;
    }
    // Measured: per-tap gemms win while the weight stays in cache; with weights of 4 MB and more
    // (the paper config's 1024-channel levels) on short inputs, one gemm over the contiguous weight
    // wins (up to 1.8x at 2048→1024, L = 32).
    s.kernel > 1 && s.c_out * s.c_in * s.kernel >= (1 << 20) && s.len_out() <= s.c_in * s.kernel
}

/// Shape of a 1-D convolution.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub len: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    pub fn len_out(&self) -> usize {
        (self.len + 2 * self.padding - self.kernel) / self.stride + 1
    }
}

/// Conv1d: `x` `[B, C_in, L]`, `w` `[C_out, C_in, k]`, `bias` `[C_out]` → `[B, C_out, L_out]`.
///
/// Stride 1: one gemm per kernel tap, `W[:, :, j] · x[:, o + j − pad]`, reading the shifted input
/// in place (the out-of-range columns are simply not part of that tap's product); measured 1.1 to
/// 1.5x faster than gathering the columns and running one gemm with K = C_in·k, except for large
/// weights on short inputs (see `use_cols`). Strided, or `use_cols`: the columns `[C_in·k, L_out]`
/// are gathered once (in parallel) and multiplied in one gemm.
pub fn conv1d(x: &[f32], w: &[f32], bias: Option<&[f32]>, s: ConvShape) -> Vec<f32> {
    let ConvShape { batch, c_in, len, c_out, kernel: k, stride, padding: pad } = s;
    assert!(stride > 0 && len + 2 * pad >= k, "conv1d: bad shape {s:?}");
    let l_out = s.len_out();
    expect_len("conv1d input", x, batch * c_in * len);
    expect_len("conv1d weight", w, c_out * c_in * k);
    if let Some(b) = bias {
        expect_len("conv1d bias", b, c_out);
    }
    let mut out = filled_rows(batch * c_out, l_out, |r| bias.map_or(0.0, |b| b[r % c_out]));
    let mut cols = Vec::new();
    for b in 0..batch {
        let xb = &x[b * c_in * len..(b + 1) * c_in * len];
        let ob = out[b * c_out * l_out..].as_mut_ptr();
        if stride == 1 && !use_cols(s) {
            for j in 0..k {
                let d = j as isize - pad as isize; // output o reads input o + d
                let o0 = (-d).max(0) as usize;
                let o1 = (len as isize - d).min(l_out as isize).max(0) as usize;
                if o1 <= o0 {
                    continue;
                }
                // SAFETY: rows of `ob` are l_out long and o0..o1 lies inside; the input columns
                // o0 + d .. o1 + d lie inside 0..len; w[co, ci, j] is at co·C_in·k + ci·k + j.
                unsafe {
                    gemm_acc(
                        c_out,
                        o1 - o0,
                        c_in,
                        ob.add(o0),
                        l_out as isize,
                        1,
                        w.as_ptr().add(j),
                        (c_in * k) as isize,
                        k as isize,
                        xb.as_ptr().offset(o0 as isize + d),
                        len as isize,
                        1,
                    );
                }
            }
        } else {
            cols.resize(c_in * k * l_out, 0.0);
            cols.par_chunks_mut(l_out).enumerate().for_each(|(row, col)| {
                let (c, j) = (row / k, row % k);
                let xr = &xb[c * len..(c + 1) * len];
                for (o, v) in col.iter_mut().enumerate() {
                    let i = (o * stride + j) as isize - pad as isize;
                    *v = if i >= 0 && (i as usize) < len { xr[i as usize] } else { 0.0 };
                }
            });
            // SAFETY: w is [C_out, C_in·k] row-major, cols [C_in·k, L_out], ob [C_out, L_out].
            unsafe {
                gemm_acc(
                    c_out,
                    l_out,
                    c_in * k,
                    ob,
                    l_out as isize,
                    1,
                    w.as_ptr(),
                    (c_in * k) as isize,
                    1,
                    cols.as_ptr(),
                    l_out as isize,
                    1,
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{max_diff, plain, rand, rel_diff, var};

    #[test]
    fn conv1d_matches_candle() {
        for (k, s, p) in [(3, 1, 1), (1, 1, 0), (9, 4, 4), (5, 2, 2)] {
            let x = rand(&[2, 6, 64], 1);
            let w = rand(&[5, 6, k], 2);
            let b = rand(&[5], 3);
            let ours = Conv1d { weight: w.clone(), bias: Some(b.clone()), stride: s, padding: p }.forward(&x).unwrap();
            let reference =
                x.conv1d(&w, p, s, 1, 1).unwrap().broadcast_add(&b.reshape((5, 1)).unwrap()).unwrap();
            assert_eq!(ours.dims(), reference.dims());
            assert!(max_diff(&ours, &reference) < 1e-4, "k={k} s={s}");
        }
    }

    #[test]
    fn conv_weight_gradient_is_per_sample_sum() {
        // The trap in candle's own conv1d: batch > 1 weight gradients. Ours must equal the sum of
        // per-sample gradients.
        // Long inputs take the batched matmul, short ones with many channels fold the batch into
        // time (see `shared_weight_matmul`); both must be right.
        for (c, l) in [(4, 32), (24, 4)] {
            let x = rand(&[3, c, l], 7);
            let w = candle_core::Var::from_tensor(&rand(&[c + 1, c, 3], 8)).unwrap();
            let conv = |x: &Tensor| Conv1d { weight: w.as_tensor().clone(), bias: None, stride: 1, padding: 1 }.forward(x);
            let g_batch = conv(&x).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
            let g_batch = g_batch.get(&w).unwrap().clone();
            let mut g_sum = Tensor::zeros_like(&g_batch).unwrap();
            for i in 0..3 {
                let xi = x.narrow(0, i, 1).unwrap();
                let g = conv(&xi).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
                g_sum = (g_sum + g.get(&w).unwrap()).unwrap();
            }
            assert!(max_diff(&g_batch, &g_sum) < 1e-3 * max_diff(&g_sum, &g_sum.zeros_like().unwrap()).max(1.0), "C {c}, L {l}");
        }
    }

    #[test]
    fn fast_conv1d_matches_composite() {
        // (c_in, c_out, k, stride, padding, len): 1×1, k=3, the downsampling 2f+1 with f = 2, 4,
        // odd lengths where the op allows them, batch 2.
        let cases = [
            (6, 5, 1, 1, 0, 37),
            (6, 5, 3, 1, 1, 37),
            (16, 24, 3, 1, 1, 64),
            (3, 4, 3, 1, 1, 1),
            (512, 8, 3, 1, 1, 700), // large weight, short input: gathered columns, one gemm
            (6, 5, 5, 2, 2, 64),
            (6, 10, 9, 4, 4, 128),
            (5, 7, 9, 4, 4, 36),
        ];
        for (i, &(ci, co, k, s, p, l)) in cases.iter().enumerate() {
            let x = rand(&[2, ci, l], 10 + i as u64);
            let w = rand(&[co, ci, k], 20 + i as u64);
            let b = rand(&[co], 30 + i as u64);
            for bias in [Some(b.clone()), None] {
                let conv = Conv1d { weight: plain(&w), bias: bias.clone(), stride: s, padding: p };
                assert_eq!(path_for(&[&x, &conv.weight, &b]), Path::FastCpu);
                let fast = conv.forward_fast(&x).unwrap();
                let comp = conv.forward_composite(&x).unwrap();
                assert_eq!(fast.dims(), comp.dims());
                assert!(rel_diff(&fast, &comp) < 1e-5, "case {i}: {}", rel_diff(&fast, &comp));
                // forward() on a Var weight takes the gemm form (Path::CpuGrad) and tracks the gradient
                let tracked = Conv1d { weight: var(&w), bias, stride: s, padding: p }.forward(&x).unwrap();
                assert!(tracked.track_op());
                assert!(rel_diff(&fast, &tracked) < 1e-5);
            }
        }
    }
}
