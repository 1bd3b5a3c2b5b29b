//! The reference `Upsample1d` transposed convolution ([`ConvTranspose1d`]), in two forms:
//! - [`Path::FastCpu`]: [`conv_transpose1d`] over slices, polyphase without zero-stuffing, each
//!   tap one gemm writing straight into the interleaved output;
//! - [`Path::CpuGrad`] (training): the same kernel as one op with a hand-written backward
//!   ([`super::conv_grad`]);
//! - CUDA and composite: the gemm form, columns of three shifted copies ([`super::columns`]) → one
//!   matmul with the phase matrix → bias ([`super::channel`]), each piece in the call's path.
//!   candle's own `conv_transpose1d` is not used: it has no backward, and its CPU forward is wrong
//!   for batch > 1.

use candle_core::{Device, Result, Tensor};

use super::conv::shared_weight_matmul;
use super::cpu::{expect_len, filled_rows, gemm_acc, with_f32};
use super::path::{path_for, Path};
use super::{channel, columns, conv_grad, profile};

/// The reference `Upsample1d` transposed convolution (kernel 2f, stride f, padding f/2 + f%2,
/// output padding f%2; weight `[C_in, C_out, 2f]`), computed in polyphase form: output phase r
/// of each input step is a two-tap convolution, so all f phases are one matrix product over
/// three shifted copies of the input. Exact, with gradients, no zero-stuffing.
#[derive(Clone, Debug)]
pub struct ConvTranspose1d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub factor: usize,
    /// The phase matrix of inference weights (they never change), built once: about a dozen
    /// small kernels per call on a GPU otherwise.
    phases: std::sync::OnceLock<Tensor>,
}

impl ConvTranspose1d {
    /// Weight `[C_in, C_out, 2f]`, bias `[C_out]`, upsampling factor f.
    pub fn new(weight: Tensor, bias: Tensor, factor: usize) -> Self {
        Self { weight, bias, factor, phases: std::sync::OnceLock::new() }
    }

    /// The phase matrix: built at every call for weights that track gradients (training), once
    /// otherwise.
    fn phases(&self) -> Result<Tensor> {
        if self.weight.track_op() {
            return self.phase_matrix();
        }
        if let Some(p) = self.phases.get() {
            return Ok(p.clone());
        }
        let p = self.phase_matrix()?;
        Ok(self.phases.get_or_init(|| p).clone())
    }

    /// The `[C_out·f, C_in·3]` matrix mapping the three shifted inputs to the f output phases.
    fn phase_matrix(&self) -> Result<Tensor> {
        let (c_in, c_out, k) = self.weight.dims3()?;
        let f = self.factor;
        if k != 2 * f {
            candle_core::bail!("upsample kernel {k} does not match factor {f}");
        }
        let p = f / 2 + f % 2;
        // w_t[j] : [C_out, C_in]
        let wt = self.weight.permute((2, 1, 0))?; // [k, C_out, C_in]
        let zero = Tensor::zeros((c_out, c_in), self.weight.dtype(), self.weight.device())?;
        let mut rows = Vec::with_capacity(f);
        for r in 0..f {
            let j0 = (r + p) % f;
            let c = (r + p) / f;
            // offsets into the 1-padded input: tap a ∈ {0,1} uses weight j0 + a·f at offset c + 1 − a
            let mut blocks = vec![zero.clone(), zero.clone(), zero.clone()];
            for a in 0..2 {
                let off = c + 1 - a;
                blocks[off] = wt.get(j0 + a * f)?;
            }
            // [C_out, 3, C_in] → columns ordered (c_in, offset)
            let m = Tensor::stack(&blocks, 2)?; // [C_out, C_in, 3]
            rows.push(m.reshape((c_out, c_in * 3))?);
        }
        // rows ordered (c_out, phase)
        Tensor::stack(&rows, 1)?.reshape((c_out * f, c_in * 3))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let name = || format!("conv_transpose f{} {:?} L{}", self.factor, self.weight.dims(), x.dim(2).unwrap_or(0));
        profile::time(name, || match path_for(&[x, &self.weight, &self.bias]) {
            Path::FastCpu => self.forward_fast(x),
            Path::CpuGrad => conv_grad::conv_transpose1d_grad(x, &self.weight, &self.bias, self.factor),
            path @ (Path::Cuda | Path::Composite) => self.forward_gemm(x, path),
        })
    }

    /// The [`Path::FastCpu`] form.
    pub(super) fn forward_fast(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c_in, l) = x.dims3()?;
        let (wc_in, c_out, k) = self.weight.dims3()?;
        let f = self.factor;
        if wc_in != c_in || k != 2 * f || f == 0 {
            candle_core::bail!("upsample: weight {:?} does not fit {c_in} input channels and factor {f}", self.weight.dims());
        }
        let y = with_f32(x, |xs| {
            with_f32(&self.weight, |w| {
                with_f32(&self.bias, |bias| Ok(conv_transpose1d(xs, w, bias, b, c_in, l, c_out, f)))
            })
        })?;
        Tensor::from_vec(y, (b, c_out, l * f), &Device::Cpu)
    }

    /// The gemm form, its pieces in `path`'s form (with [`Path::CpuGrad`]: the training form
    /// before [`super::conv_grad`]; kept for benchmarks).
    pub fn forward_gemm(&self, x: &Tensor, path: Path) -> Result<Tensor> {
        let (b, _c_in, l) = x.dims3()?;
        let f = self.factor;
        let c_out = self.weight.dim(1)?;
        let cols = columns::im2col(x, 3, 1, path)?; // [B, C_in·3, L]
        let y = shared_weight_matmul(&self.phases()?, &cols)?; // [B, C_out·f, L]
        let y = y.reshape((b, c_out, f, l))?.transpose(2, 3)?.reshape((b, c_out, l * f))?;
        channel::add_channel(&y, &self.bias, path)
    }

    /// The composite form: candle ops only, differentiable on any device and dtype.
    pub fn forward_composite(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_gemm(x, Path::Composite)
    }
}

/// The reference `Upsample1d` ConvTranspose1d (kernel 2f, stride f, padding f/2 + f%2, output
/// padding f%2): `x` `[B, C_in, L]`, `w` `[C_in, C_out, 2f]`, `bias` `[C_out]` → `[B, C_out, L·f]`.
///
/// Polyphase: output `l·f + r` is `Σ_a W[:, :, j0 + a·f]ᵀ · x[:, l + c − a]` for the two taps
/// a ∈ {0, 1}, with `r + p = c·f + j0`; each tap is one gemm writing straight into the
/// interleaved output (column stride f), reading the shifted input and the weight in place.
pub fn conv_transpose1d(x: &[f32], w: &[f32], bias: &[f32], batch: usize, c_in: usize, len: usize, c_out: usize, f: usize) -> Vec<f32> {
    let k = 2 * f;
    let p = f / 2 + f % 2;
    let l_out = len * f;
    assert!(f > 0, "conv_transpose1d: factor 0");
    expect_len("conv_transpose1d input", x, batch * c_in * len);
    expect_len("conv_transpose1d weight", w, c_in * c_out * k);
    expect_len("conv_transpose1d bias", bias, c_out);
    let mut out = filled_rows(batch * c_out, l_out, |r| bias[r % c_out]);
    for b in 0..batch {
        let xb = &x[b * c_in * len..(b + 1) * c_in * len];
        let ob = out[b * c_out * l_out..].as_mut_ptr();
        for r in 0..f {
            let (c, j0) = ((r + p) / f, (r + p) % f);
            for a in 0..2 {
                let j = j0 + a * f;
                let d = c as isize - a as isize; // output step l reads input l + d
                let l0 = (-d).max(0) as usize;
                let l1 = (len as isize - d).min(len as isize).max(0) as usize;
                if l1 <= l0 {
                    continue;
                }
                // SAFETY: output element (co, l) of this phase is at co·L·f + l·f + r; weight
                // (co, ci) of tap j at ci·C_out·k + co·k + j; input (ci, l) at ci·L + l + d.
                unsafe {
                    gemm_acc(
                        c_out,
                        l1 - l0,
                        c_in,
                        ob.add(l0 * f + r),
                        l_out as isize,
                        f as isize,
                        w.as_ptr().add(j),
                        k as isize,
                        (c_out * k) as isize,
                        xb.as_ptr().offset(l0 as isize + d),
                        len as isize,
                        1,
                    );
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{max_diff, plain, rand, rel_diff};

    #[test]
    fn conv_transpose_matches_candle() {
        // Compared item by item: candle's own conv_transpose1d is checked on batch 1 only.
        for f in [2usize, 4, 3] {
            let x = rand(&[2, 6, 16], 4);
            let w = rand(&[6, 5, 2 * f], 5);
            let b = rand(&[5], 6);
            let p = f / 2 + f % 2;
            let ours = ConvTranspose1d::new(w.clone(), b.clone(), f).forward(&x).unwrap();
            assert_eq!(ours.dims(), &[2, 5, 16 * f]);
            for i in 0..2 {
                let xi = x.narrow(0, i, 1).unwrap();
                let full = xi.conv_transpose1d(&w, 0, 0, f, 1, 1).unwrap();
                let reference = full.narrow(2, p, 16 * f).unwrap().broadcast_add(&b.reshape((5, 1)).unwrap()).unwrap();
                assert!(max_diff(&ours.narrow(0, i, 1).unwrap(), &reference) < 1e-4, "f={f} item {i}");
            }
        }
    }

    #[test]
    fn fast_conv_transpose_matches_composite() {
        for (f, l) in [(2usize, 16usize), (4, 16), (2, 17), (4, 5), (3, 9), (2, 1)] {
            let x = rand(&[2, 6, l], 40 + f as u64);
            let w = rand(&[6, 5, 2 * f], 41 + l as u64);
            let b = rand(&[5], 42);
            let up = ConvTranspose1d::new(plain(&w), b.clone(), f);
            let fast = up.forward_fast(&x).unwrap();
            let comp = up.forward_composite(&x).unwrap();
            assert_eq!(fast.dims(), &[2, 5, l * f]);
            assert!(rel_diff(&fast, &comp) < 1e-5, "f={f} l={l}: {}", rel_diff(&fast, &comp));
        }
    }
}
