//! Activations. Composite only on every path: candle's element-wise ops are one pass each already
//! (the SiLU after a GroupNorm is fused into [`super::group_norm`]).

use candle_core::{Result, Tensor};

use super::profile;

/// Exact (erf) GELU, as `nn.GELU()`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    profile::time(|| format!("gelu {:?}", x.dims()), || x.gelu_erf())
}

pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.silu()
}
