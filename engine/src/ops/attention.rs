//! The multi-head attention core ([`attention`]). On the CPU ([`Path::CpuGrad`], and its forward
//! alone on [`Path::FastCpu`]) one op with a hand-written backward (attention_grad.rs); otherwise
//! candle ops, in two precisions:
//! on [`Path::Cuda`] the softmax is candle's fused kernel in the tensors' own dtype (it
//! accumulates in f32); on every other path the scores are cast to f32 for the softmax and back.

use candle_core::{DType, Result, Tensor, D};

use super::attention_grad::AttentionOp;
use super::path::{path_for, Path};
use super::profile;

/// Multi-head attention core on `[B, T, H·D]` queries/keys/values, heads split as `(h d)` with the
/// head index major; `q` is scaled by `D^-½` before `q·kᵀ`, softmax in f32 over keys.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    profile::time(
        || format!("attention {:?}", q.dims()),
        || match path_for(&[q, k, v]) {
            Path::CpuGrad => q.apply_op3(k, v, AttentionOp { heads }),
            // the same op's forward: per head two gemms and a softmax in place, where the
            // composite form copies each head split and casts the scores twice
            Path::FastCpu => q.apply_op3_no_bwd(k, v, &AttentionOp { heads }),
            path @ (Path::Cuda | Path::Composite) => attention_in(q, k, v, heads, path),
        },
    )
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

#[cfg(test)]
mod tests {
    use candle_core::{Tensor, Var};

    use super::{attention, attention_composite};
    use crate::ops::tests::{rand, rel_diff};

    /// The CpuGrad op's values and the gradients of q, k and v equal the composite form's: batch
    /// 3, 1 to 4 heads, odd token counts, keys from a narrowed (non-contiguous) k/v tensor, and
    /// more keys than queries.
    #[test]
    fn attention_op_matches_the_composite_values_and_gradients() {
        for (b, tq, tk, heads, d) in [(3, 37, 37, 4, 8), (2, 5, 29, 1, 16), (1, 64, 64, 2, 32), (3, 1, 3, 3, 5)] {
            let hd = heads * d;
            let q = Var::from_tensor(&rand(&[b, tq, hd], 1)).unwrap();
            let kv = Var::from_tensor(&rand(&[b, tk, 2 * hd], 2).affine(2.0, 0.0).unwrap()).unwrap();
            let probe = rand(&[b, tq, hd], 3);
            let run = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor| {
                let (k, v) = (kv.narrow(2, 0, hd).unwrap(), kv.narrow(2, hd, hd).unwrap());
                let y = f(q.as_tensor(), &k, &v);
                let g = (&y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                (y, g.get(q.as_tensor()).unwrap().clone(), g.get(kv.as_tensor()).unwrap().clone())
            };
            let ours = run(&|q, k, v| attention(q, k, v, heads).unwrap());
            // inference (no gradient tracked): the op's forward alone
            let (k, v) = (kv.narrow(2, 0, hd).unwrap().detach(), kv.narrow(2, hd, hd).unwrap().detach());
            let (fast, plain) = (attention(&q.as_tensor().detach(), &k, &v, heads).unwrap(), attention_composite(&q.as_tensor().detach(), &k, &v, heads).unwrap());
            assert!(rel_diff(&fast, &plain) < 1e-5, "inference: values differ by {}", rel_diff(&fast, &plain));
            let oracle = run(&|q, k, v| attention_composite(q, k, v, heads).unwrap());
            let what = format!("b {b}, tq {tq}, tk {tk}, heads {heads}, d {d}");
            assert!(rel_diff(&ours.0, &oracle.0) < 1e-5, "{what}: values differ by {}", rel_diff(&ours.0, &oracle.0));
            assert!(rel_diff(&ours.1, &oracle.1) < 1e-5, "{what}: dq differs by {}", rel_diff(&ours.1, &oracle.1));
            assert!(rel_diff(&ours.2, &oracle.2) < 1e-5, "{what}: dk, dv differ by {}", rel_diff(&ours.2, &oracle.2));
        }
    }
}
