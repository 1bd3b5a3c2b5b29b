//! The [`Path::CpuGrad`] forms of the convolutions ([`super::Conv1d`], [`super::ConvTranspose1d`]):
//! each one custom op over (input, weight, bias) computed as gemms per weight tap over runs of
//! (output, input) positions, reading the shifted input in place (the inference kernels' method):
//! - forward: `W[tap] · x` added into the output positions of the run;
//! - input gradient: `Wⱼᵀ · g` added straight into the shifted input positions (no columns
//!   buffer, no col2im);
//! - weight gradient: `g · xⱼᵀ` per tap and batch item, accumulated in one buffer per item (no
//!   `[B, ·, ·]` weight gradient summed over the batch afterwards);
//! - bias gradient: row sums.
//!
//! The backward of stride-1 convolutions with a handful of channels, where gemms are all
//! overhead, is in conv_small.rs.
//!
//! Batch items run in parallel, each product on one thread (`gemm_acc_serial`): with batch 4 on
//! 2 threads the work splits evenly with no fork/join inside the gemms, and gemm's serial
//! packing of one operand no longer holds up the other thread.
//!
//! The gemm form these replace in training (columns → batched matmul → bias, three graph nodes)
//! kept a `C_in·k`-times-larger columns tensor alive for the backward and gave candle three
//! gradients to allocate and add; here one node saves nothing but its inputs. An input that tracks
//! no gradient (the network's input) gets none computed. The gemm form stays the oracle
//! ([`super::Conv1d::forward_composite`]); tests below compare values and every gradient.
//!
//! [`Path::CpuGrad`]: super::Path::CpuGrad

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{filled_rows, gemm_acc_serial, storage_f32, sum_in_order, transpose, with_f32};
use super::conv_small::{self, Tap};
use super::{profile, simd};

/// Which convolution the op computes; the shapes come from the inputs.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Conv1d, weight `[C_out, C_in, k]`.
    Conv { stride: usize, padding: usize },
    /// The `Upsample1d` transposed convolution, weight `[C_in, C_out, 2f]`.
    Transpose { factor: usize },
}

/// One training convolution: `Op(kind)` applied to (x, w) or (x, w, bias).
#[derive(Clone, Copy, Debug)]
struct Op(Kind);

/// `y = conv(x, w) + bias` with a hand-written backward (`bias` `None`: no bias).
pub fn conv1d_grad(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, stride: usize, padding: usize) -> Result<Tensor> {
    apply(Op(Kind::Conv { stride, padding }), x, w, bias)
}

/// The `Upsample1d` transposed convolution (factor f) with a hand-written backward.
pub fn conv_transpose1d_grad(x: &Tensor, w: &Tensor, bias: &Tensor, factor: usize) -> Result<Tensor> {
    apply(Op(Kind::Transpose { factor }), x, w, Some(bias))
}

fn apply(op: Op, x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&w, &b.contiguous()?, op),
        None => x.apply_op2(&w, op),
    }
}

impl Op {
    /// `(batch, C_in, L, C_out, k, L_out)` for input and weight dims, checked.
    fn dims(&self, x: &[usize], w: &[usize]) -> Result<(usize, usize, usize, usize, usize, usize)> {
        let (&[b, ci, l], &[w0, w1, k]) = (x, w) else { candle_core::bail!("conv: rank-3 input and weight expected") };
        match self.0 {
            Kind::Conv { stride, padding } => {
                if w1 != ci || stride == 0 || l + 2 * padding < k {
                    candle_core::bail!("conv1d: input {x:?} does not fit weight {w:?} (stride {stride}, padding {padding})");
                }
                Ok((b, ci, l, w0, k, (l + 2 * padding - k) / stride + 1))
            }
            Kind::Transpose { factor } => {
                if w0 != ci || factor == 0 || k != 2 * factor {
                    candle_core::bail!("upsample: input {x:?} does not fit weight {w:?} (factor {factor})");
                }
                Ok((b, ci, l, w1, k, l * factor))
            }
        }
    }

    fn forward(&self, x: (&CpuStorage, &Layout), w: (&CpuStorage, &Layout), bias: Option<(&CpuStorage, &Layout)>) -> Result<(CpuStorage, Shape)> {
        let xs = storage_f32(x.0, x.1, "conv")?;
        let ws = storage_f32(w.0, w.1, "conv")?;
        let (batch, c_in, len, c_out, k, l_out) = self.dims(x.1.dims(), w.1.dims())?;
        let bs = bias.map(|(s, l)| storage_f32(s, l, "conv")).transpose()?;
        if bs.is_some_and(|b| b.len() != c_out) {
            candle_core::bail!("conv: bias does not have {c_out} values");
        }
        let taps = self.taps(len, k, l_out);
        let (w_ci, w_co) = self.weight_strides(c_in, c_out, k);
        let mut y = filled_rows(batch * c_out, l_out, |r| bs.map_or(0.0, |b| b[r % c_out]));
        y.par_chunks_mut(c_out * l_out).zip(xs.par_chunks(c_in * len)).for_each(|(yb, xb)| {
            for t in &taps {
                // y[co, o0 + n·ostep] += Σ_ci W[tap](co, ci) · x[ci, i0 + n·istep]
                // SAFETY: `taps` keeps every run inside 0..len and 0..l_out; the weight offsets
                // follow `weight_strides`; `yb`, `xb` hold one batch item each.
                unsafe {
                    gemm_acc_serial(c_out, t.n, c_in, yb.as_mut_ptr().add(t.o0), l_out as isize, t.ostep as isize, ws.as_ptr().add(t.j), w_co, w_ci, xb.as_ptr().add(t.i0), len as isize, t.istep as isize);
                }
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((batch, c_out, l_out))))
    }

    /// Gradients of x (if it tracks one), w and the bias (if any) from the output gradient `g`.
    fn backward(&self, x: &Tensor, w: &Tensor, has_bias: bool, g: &Tensor) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        profile::time(|| format!("{:?} backward {:?} L{}", self.0, w.dims(), x.dim(2).unwrap_or(0)), || self.backward_timed(x, w, has_bias, g))
    }

    fn backward_timed(&self, x: &Tensor, w: &Tensor, has_bias: bool, g: &Tensor) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let (batch, c_in, len, c_out, kernel, l_out) = self.dims(x.dims(), w.dims())?;
        let g = g.contiguous()?;
        let want_x = x.track_op();
        let (gx, gw, gb) = with_f32(x, |xs| {
            with_f32(w, |ws| {
                with_f32(&g, |gs| {
                    let gb = has_bias.then(|| channel_sums(gs, batch, c_out, l_out));
                    if let Some(d) = self.small(batch, c_in, len, c_out, kernel, l_out) {
                        let taps = self.taps(len, kernel, l_out);
                        let gx = want_x.then(|| conv_small::input_grad(ws, gs, d, &taps));
                        return Ok((gx, conv_small::weight_grad(xs, gs, d, &taps), gb));
                    }
                    let gx = want_x.then(|| self.input_grad(ws, gs, batch, c_in, len, c_out, kernel, l_out));
                    let gw = self.weight_grad(xs, gs, batch, c_in, len, c_out, kernel, l_out);
                    Ok((gx, gw, gb))
                })
            })
        })?;
        let gx = gx.map(|v| Tensor::from_vec(v, (batch, c_in, len), &Device::Cpu)).transpose()?;
        let gb = gb.map(|v| Tensor::from_vec(v, c_out, &Device::Cpu)).transpose()?;
        Ok((gx, Tensor::from_vec(gw, w.dims(), &Device::Cpu)?, gb))
    }

    /// The input gradient: per batch item (in parallel) and tap run, one gemm adding
    /// `W[tap]ᵀ · g` into the input positions that run read.
    #[allow(clippy::too_many_arguments)]
    fn input_grad(&self, w: &[f32], g: &[f32], batch: usize, c_in: usize, len: usize, c_out: usize, k: usize, l_out: usize) -> Vec<f32> {
        let taps = self.taps(len, k, l_out);
        let (w_ci, w_co) = self.weight_strides(c_in, c_out, k);
        let mut gx = vec![0f32; batch * c_in * len];
        gx.par_chunks_mut(c_in * len).zip(g.par_chunks(c_out * l_out)).for_each(|(xb, gb)| {
            for t in &taps {
                // gx[ci, i0 + n·istep] += Σ_co W[tap](co, ci) · g[co, o0 + n·ostep]
                // SAFETY: as in `forward`.
                unsafe {
                    gemm_acc_serial(c_in, t.n, c_out, xb.as_mut_ptr().add(t.i0), len as isize, t.istep as isize, w.as_ptr().add(t.j), w_ci, w_co, gb.as_ptr().add(t.o0), l_out as isize, t.ostep as isize);
                }
            }
        });
        gx
    }

    /// The weight gradient in the weight's own layout: each batch item's products in a buffer of
    /// its own, added in item order ([`sum_in_order`]) and rearranged at the end.
    #[allow(clippy::too_many_arguments)]
    fn weight_grad(&self, x: &[f32], g: &[f32], batch: usize, c_in: usize, len: usize, c_out: usize, k: usize, l_out: usize) -> Vec<f32> {
        let taps = self.taps(len, k, l_out);
        let block = c_out * c_in;
        // Per item an accumulator (per tap a column-major [C_out, C_in] block), and per worker a
        // buffer for one item's g transposed to [L_out, C_out]. gemm works column-major: with a
        // column-major destination and a left operand of unit row stride it reads g in place,
        // where otherwise it copies the whole long operand into its packed layout, serially, for
        // every tap (measured: a tenth of a training step).
        let parts: Vec<Vec<f32>> = (0..batch)
            .into_par_iter()
            .map_init(
                || vec![0f32; l_out * c_out],
                |gt, b| {
                    let mut acc = vec![0f32; k * block];
                    let xb = &x[b * c_in * len..];
                    transpose(&g[b * c_out * l_out..(b + 1) * c_out * l_out], c_out, l_out, gt);
                    for t in &taps {
                        // dW[tap](co, ci) += Σ_n g[co, o0 + n·ostep] · x[ci, i0 + n·istep]
                        // SAFETY: as in `forward`; the block of tap j lies inside `acc` (element
                        // (co, ci) at ci·C_out + co), and gt[o, co] is at o·C_out + co.
                        unsafe {
                            gemm_acc_serial(c_out, c_in, t.n, acc.as_mut_ptr().add(t.j * block), 1, c_out as isize, gt.as_ptr().add(t.o0 * c_out), 1, (t.ostep * c_out) as isize, xb.as_ptr().add(t.i0), t.istep as isize, len as isize);
                        }
                    }
                    acc
                },
            )
            .collect();
        let per_tap = sum_in_order(parts, k * block);
        let mut gw = vec![0f32; block * k];
        let (w_ci, w_co) = self.weight_strides(c_in, c_out, k);
        for j in 0..k {
            for co in 0..c_out {
                for ci in 0..c_in {
                    gw[j + co * w_co as usize + ci * w_ci as usize] = per_tap[j * block + ci * c_out + co];
                }
            }
        }
        gw
    }

    /// The shape for [`conv_small`], if it takes this convolution.
    fn small(&self, batch: usize, c_in: usize, len: usize, c_out: usize, k: usize, l_out: usize) -> Option<conv_small::Dims> {
        let stride_one = matches!(self.0, Kind::Conv { stride: 1, .. });
        conv_small::takes(c_in, c_out, stride_one).then_some(conv_small::Dims { batch, c_in, len, c_out, k, l_out })
    }

    /// Strides of the weight's (C_in, C_out) axes for one tap.
    fn weight_strides(&self, c_in: usize, c_out: usize, k: usize) -> (isize, isize) {
        match self.0 {
            Kind::Conv { .. } => (k as isize, (c_in * k) as isize),
            Kind::Transpose { .. } => ((c_out * k) as isize, k as isize),
        }
    }

    /// The runs of (output, input) index pairs each weight tap connects, within bounds.
    fn taps(&self, len: usize, k: usize, l_out: usize) -> Vec<Tap> {
        let mut taps = Vec::with_capacity(k);
        match self.0 {
            Kind::Conv { stride: s, padding: p } => {
                for j in 0..k {
                    // output o reads input o·s + j − p
                    let o0 = p.saturating_sub(j).div_ceil(s);
                    let o1 = if len + p > j { ((len + p - j - 1) / s + 1).min(l_out) } else { 0 };
                    if o1 > o0 {
                        taps.push(Tap { j, o0, ostep: 1, i0: o0 * s + j - p, istep: s, n: o1 - o0 });
                    }
                }
            }
            Kind::Transpose { factor: f } => {
                // output l·f + r reads input l + c − a through tap j0 + a·f, r + p = c·f + j0
                let p = f / 2 + f % 2;
                for r in 0..f {
                    let (c, j0) = ((r + p) / f, (r + p) % f);
                    for a in 0..2 {
                        let d = c as isize - a as isize;
                        let l0 = (-d).max(0) as usize;
                        let l1 = (len as isize - d).min(len as isize).max(0) as usize;
                        if l1 > l0 {
                            taps.push(Tap { j: j0 + a * f, o0: l0 * f + r, ostep: f, i0: (l0 as isize + d) as usize, istep: 1, n: l1 - l0 });
                        }
                    }
                }
            }
        }
        taps
    }
}

/// `Σ_b Σ_t g[b, c, t]` per channel (rows summed in SIMD lanes: a plain f32 `sum` is not
/// vectorized, and was 2% of a training step).
fn channel_sums(g: &[f32], batch: usize, c: usize, l: usize) -> Vec<f32> {
    let rows: Vec<f64> = g.par_chunks(l.max(1)).map(simd::sum).collect();
    (0..c).map(|ch| (0..batch).map(|b| rows[b * c + ch]).sum::<f64>() as f32).collect()
}

impl CustomOp2 for Op {
    fn name(&self) -> &'static str {
        "conv-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, _) = self.backward(x, w, false, g)?;
        Ok((gx, w.track_op().then_some(gw)))
    }
}

impl CustomOp3 for Op {
    fn name(&self) -> &'static str {
        "conv-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _y: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (gx, gw, gb) = self.backward(x, w, true, g)?;
        Ok((gx, w.track_op().then_some(gw), gb.filter(|_| b.track_op())))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Tensor, Var};

    use crate::ops::tests::{rand, rel_diff};
    use crate::ops::{Conv1d, ConvTranspose1d};

    /// `Σ y·probe` and its gradients for the input and every parameter.
    fn grads(y: &Tensor, probe: &Tensor, vars: &[&Var]) -> Vec<Option<Tensor>> {
        let g = (y * probe).unwrap().sum_all().unwrap().backward().unwrap();
        vars.iter().map(|v| g.get(v.as_tensor()).cloned()).collect()
    }

    fn assert_same(ours: &Tensor, oracle: &Tensor, go: &[Option<Tensor>], gc: &[Option<Tensor>], what: &str) {
        assert_eq!(ours.dims(), oracle.dims(), "{what}");
        assert!(rel_diff(ours, oracle) < 1e-5, "{what}: values differ by {}", rel_diff(ours, oracle));
        for (i, (a, b)) in go.iter().zip(gc).enumerate() {
            let (a, b) = (a.as_ref().expect("our gradient"), b.as_ref().expect("oracle gradient"));
            assert!(rel_diff(a, b) < 1e-5, "{what}: gradient {i} differs by {}", rel_diff(a, b));
        }
    }

    /// Values and gradients (input, weight, bias) equal the composite gemm form's, for 1×1,
    /// k = 3, strided downsampling and unpadded kernels, odd lengths, batch 3, with and without
    /// a bias; few channels (direct loops, lengths across their tiles) and more (gemms).
    #[test]
    fn conv_matches_composite_with_gradients() {
        // (c_in, c_out, k, stride, padding, len); strided lengths with (L + 2p) % s == 0, as the
        // composite form requires
        let cases = [(6, 5, 1, 1, 0, 37), (6, 5, 3, 1, 1, 37), (16, 24, 3, 1, 1, 64), (3, 4, 3, 1, 1, 1), (4, 3, 3, 1, 0, 11), (6, 5, 5, 2, 2, 64), (6, 10, 9, 4, 4, 128), (5, 7, 9, 4, 4, 36), (5, 7, 7, 3, 3, 15), (4, 4, 3, 1, 1, 4099), (3, 5, 5, 1, 2, 8195)];
        for (i, &(ci, co, k, s, p, l)) in cases.iter().enumerate() {
            for with_bias in [true, false] {
                let x = Var::from_tensor(&rand(&[3, ci, l], 10 + i as u64)).unwrap();
                let w = Var::from_tensor(&rand(&[co, ci, k], 20 + i as u64)).unwrap();
                let b = Var::from_tensor(&rand(&[co], 30 + i as u64)).unwrap();
                let conv = Conv1d { weight: w.as_tensor().clone(), bias: with_bias.then(|| b.as_tensor().clone()), stride: s, padding: p };
                let ours = conv.forward(&x).unwrap();
                let oracle = conv.forward_composite(&x).unwrap();
                let probe = rand(oracle.dims(), 40 + i as u64);
                let vars: Vec<&Var> = if with_bias { vec![&x, &w, &b] } else { vec![&x, &w] };
                assert_same(&ours, &oracle, &grads(&ours, &probe, &vars), &grads(&oracle, &probe, &vars), &format!("case {i}, bias {with_bias}"));
            }
        }
    }

    /// The transposed convolution likewise, factors 2, 3 and 4, odd lengths, batch 3.
    #[test]
    fn conv_transpose_matches_composite_with_gradients() {
        for (i, &(ci, co, f, l)) in [(6, 5, 2, 16), (6, 5, 4, 17), (4, 7, 3, 9), (3, 2, 2, 1), (8, 8, 4, 5)].iter().enumerate() {
            let x = Var::from_tensor(&rand(&[3, ci, l], 50 + i as u64)).unwrap();
            let w = Var::from_tensor(&rand(&[ci, co, 2 * f], 60 + i as u64)).unwrap();
            let b = Var::from_tensor(&rand(&[co], 70 + i as u64)).unwrap();
            let up = ConvTranspose1d::new(w.as_tensor().clone(), b.as_tensor().clone(), f);
            let ours = up.forward(&x).unwrap();
            let oracle = up.forward_composite(&x).unwrap();
            let probe = rand(oracle.dims(), 80 + i as u64);
            let vars = [&x, &w, &b];
            assert_same(&ours, &oracle, &grads(&ours, &probe, &vars), &grads(&oracle, &probe, &vars), &format!("f {f}, L {l}"));
        }
    }

    /// An input that tracks no gradient gets none, and the parameters' gradients are unchanged.
    #[test]
    fn untracked_input_gets_no_gradient() {
        let x = rand(&[2, 4, 33], 90);
        let w = Var::from_tensor(&rand(&[6, 4, 3], 91)).unwrap();
        let b = Var::from_tensor(&rand(&[6], 92)).unwrap();
        let conv = Conv1d { weight: w.as_tensor().clone(), bias: Some(b.as_tensor().clone()), stride: 1, padding: 1 };
        let (ours, oracle) = (conv.forward(&x).unwrap(), conv.forward_composite(&x).unwrap());
        let probe = rand(oracle.dims(), 93);
        let g = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(g.get(&x).is_none());
        assert_same(&ours, &oracle, &grads(&ours, &probe, &[&w, &b]), &grads(&oracle, &probe, &[&w, &b]), "untracked input");
    }
}
