//! The optimizer step and the weight average in one pass over each parameter (CPU, f32).
//!
//! Composed from candle ops, Adam reads and writes each parameter-sized array about a dozen times
//! with a fresh temporary per op, and the average adds another pass. Here one parallel loop reads
//! the gradient, the parameter, both moments and the average once and writes them back in place.
//! The arithmetic is candle's, operation for operation (its `affine` is `x·mul + add` with the
//! factors rounded to f32), so the fused step gives the same numbers as the composed one (tested
//! in `adam.rs`).

use std::sync::Mutex;

use anyhow::{bail, Result};
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor};
use rayon::prelude::*;

use crate::ops::cpu::storage_f32;

/// A parameter-shaped buffer: plain memory for CPU f32 parameters (the fused step updates it in
/// place), else a tensor on the parameter's device (updated with candle ops).
pub enum Buffer {
    Host(Vec<f32>),
    Device(Tensor),
}

impl Buffer {
    /// Whether a parameter's buffers live on the host and take the fused step.
    pub fn host_for(p: &Tensor) -> bool {
        matches!(p.device(), Device::Cpu) && p.dtype() == DType::F32 && !crate::ops::composite_only()
    }

    /// `t` (already in the parameter's dtype and on its device) as a buffer of that kind.
    pub fn new(t: Tensor, host: bool) -> Result<Self> {
        Ok(if host { Buffer::Host(t.flatten_all()?.to_vec1::<f32>()?) } else { Buffer::Device(t) })
    }

    /// The buffer as a tensor shaped like `param`.
    pub fn to_tensor(&self, param: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Buffer::Host(v) => Tensor::from_slice(v, param.dims(), &Device::Cpu)?,
            Buffer::Device(t) => t.clone(),
        })
    }
}

/// Adam's factors for step `t` (1-based), rounded to f32 as candle's ops round them.
#[derive(Clone, Copy)]
pub struct AdamFactors {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    inv_bias2: f32,
    eps: f32,
    step_size: f32,
}

impl AdamFactors {
    /// From Adam's learning rate, betas and eps.
    pub fn new(lr: f64, beta1: f64, beta2: f64, eps: f64, t: i32) -> Self {
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        Self {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            inv_bias2: (1.0 / bias2_sqrt) as f32,
            eps: eps as f32,
            step_size: (lr / (1.0 - beta1.powi(t))) as f32,
        }
    }
}

/// One Adam step of parameter `p` (CPU f32, updated in place) from gradient `g`, with its
/// moments `m`, `v`, and then, if given, the average `avg ← avg·d + p·(1 − d)` of the new weights.
pub fn step_in_place(p: &Tensor, g: &Tensor, m: &mut [f32], v: &mut [f32], avg: Option<(&mut [f32], f32)>, f: AdamFactors) -> Result<()> {
    let n = p.elem_count();
    if g.dims() != p.dims() || m.len() != n || v.len() != n || avg.as_ref().is_some_and(|(a, _)| a.len() != n) {
        bail!("fused Adam step: the gradient, moments and average must have the parameter's {n} values");
    }
    let op = FusedStep { state: Mutex::new((m, v, avg)), f };
    p.inplace_op2(&g.contiguous()?, &op)?;
    Ok(())
}

type State<'a> = (&'a mut [f32], &'a mut [f32], Option<(&'a mut [f32], f32)>);

struct FusedStep<'a> {
    state: Mutex<State<'a>>,
    f: AdamFactors,
}

/// Values per parallel task: large enough to amortise the task, small enough to split a layer.
const CHUNK: usize = 1 << 14;

impl InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "adam-ema-step"
    }

    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, g: &CpuStorage, g_l: &Layout) -> candle_core::Result<()> {
        let g = storage_f32(g, g_l, self.name())?;
        let Some((a, b)) = dst_l.contiguous_offsets() else {
            candle_core::bail!("{}: the parameter must be contiguous", self.name());
        };
        let CpuStorage::F32(data) = dst else {
            candle_core::bail!("{}: the parameter must be f32", self.name());
        };
        let p = &mut data[a..b];
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (m, v, avg) = &mut *state;
        let f = self.f;
        let (avg, d) = match avg {
            Some((a, d)) => (Some(&mut **a), *d),
            None => (None, 0.0),
        };
        let chunks = p.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)));
        let update = |((p, g), (m, v)): ((&mut [f32], &[f32]), (&mut [f32], &mut [f32])), avg: Option<&mut [f32]>| {
            for i in 0..p.len() {
                let g = g[i];
                // candle's order: m·β1 + g·(1−β1); v·β2 + g²·(1−β2); √v/√(1−β2^t) + eps;
                // (m / denom)·lr/(1−β1^t); p − update
                m[i] = m[i] * f.beta1 + g * f.one_minus_beta1;
                v[i] = v[i] * f.beta2 + (g * g) * f.one_minus_beta2;
                let denom = v[i].sqrt() * f.inv_bias2 + f.eps;
                p[i] -= (m[i] / denom) * f.step_size;
            }
            if let Some(avg) = avg {
                fold_in(avg, p, d);
            }
        };
        match avg {
            Some(avg) => chunks.zip(avg.par_chunks_mut(CHUNK)).for_each(|(c, a)| update(c, Some(a))),
            None => chunks.for_each(|c| update(c, None)),
        }
        Ok(())
    }
}

/// `avg ← avg·d + w·(1 − d)` in place: the weight average's update (the fused step's, and
/// [`super::WeightAverage`]'s for host buffers).
pub fn fold_in(avg: &mut [f32], w: &[f32], d: f32) {
    for (a, w) in avg.iter_mut().zip(w) {
        *a = *a * d + w * (1.0 - d);
    }
}
