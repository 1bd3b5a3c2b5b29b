//! The score network's primitive ops. This is the only module that decides *how* a convolution, a
//! norm or an attention is computed; the network code ([`crate::unet`]) only says *what* is computed.
//! Swapping a kernel (a faster CPU conv, a fused norm, a GPU path) happens here.
//!
//! Every op is built from candle operations that have correct gradients, so the same code serves
//! inference and training (candle's own CPU `conv1d` has a wrong weight gradient for batch > 1 and
//! `conv_transpose1d` has no backward; see `candle-notes.md`).
//!
//! Tensors are `[batch, channels, time]` unless stated otherwise.

use candle_core::{DType, Module, Result, Tensor, D};

/// Group-norm epsilon and layer-norm epsilon of the reference (PyTorch defaults).
pub const NORM_EPS: f64 = 1e-5;

/// `y = x · Wᵀ + b` over the last dimension; `w` is `[out, in]` (PyTorch layout).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = match x.rank() {
        2 => x.matmul(&w.t()?)?,
        _ => x.broadcast_matmul(&w.t()?)?,
    };
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// Columns for a stride-1 convolution with kernel `k` and symmetric padding `pad`:
/// `[B, C, L]` → `[B, C·k, L_out]`, row `c·k + j` holding `x_pad[c, j + t]`.
fn im2col(x: &Tensor, k: usize, pad: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    if k == 1 && pad == 0 {
        return Ok(x.clone());
    }
    let xp = if pad > 0 { x.pad_with_zeros(2, pad, pad)? } else { x.clone() };
    let l_out = l + 2 * pad + 1 - k;
    let taps = (0..k).map(|j| xp.narrow(2, j, l_out)).collect::<Result<Vec<_>>>()?;
    Tensor::stack(&taps, 2)?.reshape((b, c * k, l_out))
}

/// Columns for a strided convolution with kernel `k`, stride `s` and padding `pad`, for input
/// lengths where `(L + 2·pad)` is a multiple of `s`.
fn im2col_strided(x: &Tensor, k: usize, s: usize, pad: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    let lp = l + 2 * pad;
    if lp % s != 0 || lp < k {
        candle_core::bail!("strided conv: padded length {lp} is not a multiple of the stride {s}");
    }
    let l_out = (lp - k) / s + 1;
    // x_pad[o·s + j] = xr[o + j / s, j % s]
    let xr = x.pad_with_zeros(2, pad, pad)?.reshape((b, c, lp / s, s))?;
    let taps = (0..k)
        .map(|j| xr.narrow(2, j / s, l_out)?.narrow(3, j % s, 1)?.squeeze(3))
        .collect::<Result<Vec<_>>>()?;
    Tensor::stack(&taps, 2)?.reshape((b, c * k, l_out))
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
        let (c_out, c_in, k) = self.weight.dims3()?;
        let cols = if self.stride == 1 {
            im2col(x, k, self.padding)?
        } else {
            im2col_strided(x, k, self.stride, self.padding)?
        };
        let w = self.weight.reshape((c_out, c_in * k))?;
        let y = w.broadcast_matmul(&cols)?;
        match &self.bias {
            Some(b) => y.broadcast_add(&b.reshape((c_out, 1))?),
            None => Ok(y),
        }
    }
}

/// The reference `Upsample1d` transposed convolution (kernel 2f, stride f, padding f/2 + f%2,
/// output padding f%2; weight `[C_in, C_out, 2f]`), computed in polyphase form: output phase r
/// of each input step is a two-tap convolution, so all f phases are one matrix product over
/// three shifted copies of the input. Exact, with gradients, no zero-stuffing.
#[derive(Clone, Debug)]
pub struct ConvTranspose1d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub factor: usize,
}

impl ConvTranspose1d {
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
        let (b, _c_in, l) = x.dims3()?;
        let f = self.factor;
        let c_out = self.weight.dim(1)?;
        let cols = im2col(x, 3, 1)?; // [B, C_in·3, L]
        let y = self.phase_matrix()?.broadcast_matmul(&cols)?; // [B, C_out·f, L]
        let y = y.reshape((b, c_out, f, l))?.transpose(2, 3)?.reshape((b, c_out, l * f))?;
        y.broadcast_add(&self.bias.reshape((c_out, 1))?)
    }
}

/// Nearest-neighbour upsampling by `f` along time.
pub fn upsample_nearest(x: &Tensor, f: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    x.unsqueeze(3)?.broadcast_as((b, c, l, f))?.reshape((b, c, l * f))
}

/// GroupNorm with affine weight and bias, optionally followed by `h·(scale+1)+shift`
/// (`scale`, `shift`: `[B, C, 1]`) and SiLU — the pre-activation half of a ConvBlock1d.
pub fn group_norm_scale_shift_silu(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    scale_shift: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    let xg = x.reshape((b, groups, (c / groups) * l))?;
    let mean = xg.mean_keepdim(2)?;
    let xc = xg.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(2)?;
    let xn = xc.broadcast_div(&(var + NORM_EPS)?.sqrt()?)?.reshape((b, c, l))?;
    let mut h = xn.broadcast_mul(&weight.reshape((1, c, 1))?)?.broadcast_add(&bias.reshape((1, c, 1))?)?;
    if let Some((scale, shift)) = scale_shift {
        h = h.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?;
    }
    h.silu()
}

/// The library's LayerNorm without bias over dimension `dim` (biased variance, eps 1e-5);
/// `g` broadcasts against `x`.
pub fn layer_norm_no_bias(x: &Tensor, g: &Tensor, dim: D) -> Result<Tensor> {
    let mean = x.mean_keepdim(dim)?;
    let xc = x.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(dim)?;
    xc.broadcast_div(&(var + NORM_EPS)?.sqrt()?)?.broadcast_mul(g)
}

/// Exact (erf) GELU, as `nn.GELU()`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    x.gelu_erf()
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}

/// Multi-head attention core on `[B, T, H·D]` queries/keys/values, heads split as `(h d)` with the
/// head index major; `q` is scaled by `D^-½` before `q·kᵀ`, softmax in f32 over keys.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, t, hd) = q.dims3()?;
    let d = hd / heads;
    let split = |x: &Tensor| -> Result<Tensor> {
        let tk = x.dim(1)?;
        x.reshape((b, tk, heads, d))?.transpose(1, 2)?.contiguous()
    };
    let (q, k, v) = (split(q)?, split(k)?, split(v)?);
    let q = (q * (d as f64).powf(-0.5))?;
    let sim = q.matmul(&k.t()?)?;
    let dtype = sim.dtype();
    let attn = candle_nn::ops::softmax(&sim.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(dtype)?;
    let out = attn.matmul(&v)?; // [B, H, T, D]
    out.transpose(1, 2)?.reshape((b, t, hd))
}

/// `[B, C, L]` → `[B, C·p, L/p]` with `out[c·p + i, l] = x[c, l·p + i]`.
pub fn patch(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    x.reshape((b, c, l / p, p))?.transpose(2, 3)?.reshape((b, c * p, l / p))
}

/// Inverse of [`patch`].
pub fn unpatch(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, cp, l) = x.dims3()?;
    x.reshape((b, cp / p, p, l))?.transpose(2, 3)?.reshape((b, cp / p, l * p))
}

/// A plain module wrapper so closures can be used where candle expects a `Module`.
pub struct Func<F: Fn(&Tensor) -> Result<Tensor>>(pub F);
impl<F: Fn(&Tensor) -> Result<Tensor>> Module for Func<F> {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        (self.0)(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let v = crate::noise::SeededNoise::new(seed).standard_normal(n);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
    }

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
    fn conv_transpose_matches_candle() {
        // Compared item by item: candle's own conv_transpose1d is checked on batch 1 only.
        for f in [2usize, 4, 3] {
            let x = rand(&[2, 6, 16], 4);
            let w = rand(&[6, 5, 2 * f], 5);
            let b = rand(&[5], 6);
            let p = f / 2 + f % 2;
            let ours = ConvTranspose1d { weight: w.clone(), bias: b.clone(), factor: f }.forward(&x).unwrap();
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
    fn conv_weight_gradient_is_per_sample_sum() {
        // The trap in candle's own conv1d: batch > 1 weight gradients. Ours must equal the sum of
        // per-sample gradients.
        let x = rand(&[3, 4, 32], 7);
        let w = candle_core::Var::from_tensor(&rand(&[5, 4, 3], 8)).unwrap();
        let conv = |x: &Tensor| Conv1d { weight: w.as_tensor().clone(), bias: None, stride: 1, padding: 1 }.forward(x);
        let g_batch = conv(&x).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g_batch = g_batch.get(&w).unwrap().clone();
        let mut g_sum = Tensor::zeros_like(&g_batch).unwrap();
        for i in 0..3 {
            let xi = x.narrow(0, i, 1).unwrap();
            let g = conv(&xi).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
            g_sum = (g_sum + g.get(&w).unwrap()).unwrap();
        }
        assert!(max_diff(&g_batch, &g_sum) < 1e-3);
    }

    #[test]
    fn patch_unpatch_fold() {
        let x = rand(&[1, 2, 8], 9);
        let p = patch(&x, 4).unwrap();
        let xv: Vec<Vec<f32>> = x.squeeze(0).unwrap().to_vec2().unwrap();
        let pv: Vec<Vec<f32>> = p.squeeze(0).unwrap().to_vec2().unwrap();
        // out[c·p + i, l] = x[c, l·p + i]
        assert_eq!(pv[1 * 4 + 3][1], xv[1][7]);
        assert_eq!(pv[2][0], xv[0][2]);
        assert!(max_diff(&unpatch(&p, 4).unwrap(), &x) == 0.0);
    }
}
