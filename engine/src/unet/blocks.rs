//! The U-Net's building blocks (audio-diffusion-pytorch 0.0.43 `modules.py`), with the reference
//! state-dict names. The arithmetic itself lives in [`crate::ops`].

use candle_core::{Result, Tensor, D};

use super::params::{Init, Scope};
use crate::ops;

/// A convolution read from `scope.{weight,bias}`.
pub fn conv(s: &Scope, c_in: usize, c_out: usize, k: usize, stride: usize, padding: usize, bias: bool) -> Result<ops::Conv1d> {
    let fan_in = c_in * k;
    Ok(ops::Conv1d {
        weight: s.get("weight", &[c_out, c_in, k], Init::FanIn(fan_in))?,
        bias: if bias { Some(s.get("bias", &[c_out], Init::FanIn(fan_in))?) } else { None },
        stride,
        padding,
    })
}

/// `Linear` read from `scope.{weight,bias}`; weight `[out, in]`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(s: &Scope, c_in: usize, c_out: usize, bias: bool) -> Result<Self> {
        Ok(Self {
            weight: s.get("weight", &[c_out, c_in], Init::FanIn(c_in))?,
            bias: if bias { Some(s.get("bias", &[c_out], Init::FanIn(c_in))?) } else { None },
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::linear(x, &self.weight, self.bias.as_ref())
    }
}

/// GroupNorm → optional scale/shift → SiLU → Conv1d(k=3, pad 1): `groupnorm.*`, `project.*`.
#[derive(Clone, Debug)]
pub struct ConvBlock {
    groups: usize,
    norm_weight: Tensor,
    norm_bias: Tensor,
    project: ops::Conv1d,
}

impl ConvBlock {
    pub fn new(s: &Scope, c_in: usize, c_out: usize, groups: usize) -> Result<Self> {
        let gn = s.pp("groupnorm");
        Ok(Self {
            groups,
            norm_weight: gn.get("weight", &[c_in], Init::Ones)?,
            norm_bias: gn.get("bias", &[c_in], Init::Zeros)?,
            project: conv(&s.pp("project"), c_in, c_out, 3, 1, 1, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor, scale_shift: Option<(&Tensor, &Tensor)>) -> Result<Tensor> {
        let h = ops::group_norm_scale_shift_silu(x, self.groups, &self.norm_weight, &self.norm_bias, scale_shift)?;
        self.project.forward(&h)
    }
}

/// ResnetBlock1d: block1 → block2 with the σ mapping's scale/shift → + to_out(x).
#[derive(Clone, Debug)]
pub struct ResnetBlock {
    block1: ConvBlock,
    block2: ConvBlock,
    to_scale_shift: Linear,
    to_out: Option<ops::Conv1d>,
}

impl ResnetBlock {
    pub fn new(s: &Scope, c_in: usize, c_out: usize, groups: usize, mapping: usize) -> Result<Self> {
        Ok(Self {
            block1: ConvBlock::new(&s.pp("block1"), c_in, c_out, groups)?,
            block2: ConvBlock::new(&s.pp("block2"), c_out, c_out, groups)?,
            to_scale_shift: Linear::new(&s.pp("to_scale_shift.to_scale_shift.1"), mapping, 2 * c_out, true)?,
            to_out: if c_in != c_out { Some(conv(&s.pp("to_out"), c_in, c_out, 1, 1, 0, true)?) } else { None },
        })
    }

    /// `mapping`: SiLU of the σ mapping, `[B, mapping_features]` (the reference's
    /// `to_scale_shift` is SiLU → Linear; the network applies the SiLU once for all blocks).
    pub fn forward(&self, x: &Tensor, mapping: &Tensor) -> Result<Tensor> {
        let h = self.block1.forward(x, None)?;
        let ss = self.to_scale_shift.forward(mapping)?.unsqueeze(2)?; // [B, 2C, 1]
        let c = ss.dim(1)? / 2;
        let (scale, shift) = (ss.narrow(1, 0, c)?, ss.narrow(1, c, c)?);
        let h = self.block2.forward(&h, Some((&scale, &shift)))?;
        match &self.to_out {
            Some(conv) => h + conv.forward(x)?,
            None => h + x,
        }
    }
}

/// Self-attention with the library's bias-free LayerNorms, on `[B, C, L]` (the reference wraps it
/// in `EinopsToAndFrom("b c l", "b l c")`, hence the `.fn.` in the names).
#[derive(Clone, Debug)]
pub struct Attention {
    norm_g: Tensor,
    to_q: Linear,
    to_kv: Linear,
    to_out: Linear,
    out_norm_g: Tensor,
    heads: usize,
}

impl Attention {
    pub fn new(s: &Scope, c: usize, heads: usize, head_features: usize) -> Result<Self> {
        let mid = heads * head_features;
        Ok(Self {
            norm_g: s.pp("norm").get("g", &[c], Init::Ones)?,
            to_q: Linear::new(&s.pp("to_q"), c, mid, false)?,
            to_kv: Linear::new(&s.pp("to_kv"), c, 2 * mid, false)?,
            to_out: Linear::new(&s.pp("attention.to_out.0"), mid, c, false)?,
            out_norm_g: s.pp("attention.to_out.1").get("g", &[c], Init::Ones)?,
            heads,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.transpose(1, 2)?.contiguous()?; // [B, L, C]
        let x = ops::layer_norm_no_bias(&x, &self.norm_g, D::Minus1)?;
        let q = self.to_q.forward(&x)?;
        let kv = self.to_kv.forward(&x)?;
        let mid = q.dim(2)?;
        let (k, v) = (kv.narrow(2, 0, mid)?, kv.narrow(2, mid, mid)?);
        let o = ops::attention(&q, &k, &v, self.heads)?;
        let o = self.to_out.forward(&o)?;
        let o = ops::layer_norm_no_bias(&o, &self.out_norm_g, D::Minus1)?;
        o.transpose(1, 2)?.contiguous()
    }
}

/// FeedForward1d: LayerNorm1d → 1×1 conv (no bias) → GELU → LayerNorm1d → 1×1 conv (no bias).
#[derive(Clone, Debug)]
pub struct FeedForward {
    g0: Tensor,
    w1: ops::Conv1d,
    g3: Tensor,
    w4: ops::Conv1d,
}

impl FeedForward {
    pub fn new(s: &Scope, c: usize, mult: usize) -> Result<Self> {
        let mid = c * mult;
        Ok(Self {
            g0: s.pp("0").get("g", &[1, c, 1], Init::Ones)?,
            w1: conv(&s.pp("1"), c, mid, 1, 1, 0, false)?,
            g3: s.pp("3").get("g", &[1, mid, 1], Init::Ones)?,
            w4: conv(&s.pp("4"), mid, c, 1, 1, 0, false)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = ops::layer_norm_no_bias(x, &self.g0, D::Minus2)?;
        let h = ops::gelu(&self.w1.forward(&h)?)?;
        let h = ops::layer_norm_no_bias(&h, &self.g3, D::Minus2)?;
        self.w4.forward(&h)
    }
}

/// TransformerBlock1d: residual attention, then residual feed-forward.
#[derive(Clone, Debug)]
pub struct Transformer {
    attention: Attention,
    feed_forward: FeedForward,
}

impl Transformer {
    pub fn new(s: &Scope, c: usize, heads: usize, head_features: usize, mult: usize) -> Result<Self> {
        Ok(Self {
            attention: Attention::new(&s.pp("attention.fn"), c, heads, head_features)?,
            feed_forward: FeedForward::new(&s.pp("feed_forward"), c, mult)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (self.attention.forward(x)? + x)?;
        self.feed_forward.forward(&x)? + x
    }
}
