//! The multi-head attention core ([`attention`]). One form, candle ops, in two precisions: on
//! [`Path::Cuda`] the softmax is candle's fused kernel in the tensors' own dtype (it accumulates in
//! f32); on every other path the scores are cast to f32 for the softmax and back.

use candle_core::{DType, Result, Tensor, D};

use super::path::{path_for, Path};
use super::profile;

/// Multi-head attention core on `[B, T, H·D]` queries/keys/values, heads split as `(h d)` with the
/// head index major; `q` is scaled by `D^-½` before `q·kᵀ`, softmax in f32 over keys.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    profile::time(|| format!("attention {:?}", q.dims()), || attention_in(q, k, v, heads, path_for(&[q, k])))
}

/// The composite form of [`attention`]: candle ops only, softmax in f32, differentiable on any
/// device and dtype.
pub fn attention_composite(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    attention_in(q, k, v, heads, Path::Composite)
}

/// The attention with the softmax of `path` (the path of `q` and `k`, the softmax's inputs).
fn attention_in(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, path: Path) -> Result<Tensor> {
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
    let attn = match path {
        // one kernel, f32 accumulation, output in the tensor's dtype
        Path::Cuda => candle_nn::ops::softmax_last_dim(&sim)?,
        Path::FastCpu | Path::CpuGrad | Path::Composite => {
            candle_nn::ops::softmax(&sim.to_dtype(DType::F32)?, D::Minus1)?.to_dtype(dtype)?
        }
    };
    let out = attn.matmul(&v)?; // [B, H, T, D]
    out.transpose(1, 2)?.reshape((b, t, hd))
}
