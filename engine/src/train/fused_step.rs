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

use super::adam::AdamConfig;
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
    pub fn new(c: &AdamConfig, t: i32) -> Self {
        let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        Self {
            beta1: c.beta1 as f32,
            one_minus_beta1: (1.0 - c.beta1) as f32,
            beta2: c.beta2 as f32,
            one_minus_beta2: (1.0 - c.beta2) as f32,
            inv_bias2: (1.0 / bias2_sqrt) as f32,
            eps: c.eps as f32,
            step_size: (c.lr / (1.0 - c.beta1.powi(t))) as f32,
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
                for (a, w) in avg.iter_mut().zip(p.iter()) {
                    *a = *a * d + w * (1.0 - d);
                }
            }
        };
        match avg {
            Some(avg) => chunks.zip(avg.par_chunks_mut(CHUNK)).for_each(|(c, a)| update(c, Some(a))),
            None => chunks.for_each(|c| update(c, None)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Adam, TrainableNet, WeightAverage};
    use super::*;
    use crate::config::ModelConfig;
    use crate::model_file::ModelMeta;

    /// The fused step against the composed candle ops: same weights, moments and average, value
    /// for value, over several steps of a real network's parameters (sizes from 1 to above a chunk).
    #[test]
    fn fused_step_gives_the_composed_numbers() {
        let cfg = ModelConfig { channels: 48, ..ModelConfig::tiny() };
        let nets = [1, 2].map(|_| TrainableNet::random(&cfg, 7, DType::F32, &Device::Cpu).unwrap());
        let sizes: Vec<usize> = nets[0].vars.iter().map(|(_, v)| v.elem_count()).collect();
        assert!(sizes.iter().any(|&n| n > 2 * CHUNK) && sizes.iter().any(|&n| n % CHUNK != 0 && n < 100), "{sizes:?}");
        let config = AdamConfig { lr: 3e-3, ..AdamConfig::default() };
        let mut fused = Adam::new(nets[0].vars.clone(), config).unwrap();
        let mut composed = Adam::composed(nets[1].vars.clone(), config).unwrap();
        let mut avg_fused = WeightAverage::start(&nets[0], 0.9, 0).unwrap();
        let mut avg_composed = WeightAverage::start_composed(&nets[1], 0.9, 0).unwrap();
        assert!(fused.is_fused() && !composed.is_fused());
        for t in 1..=4 {
            // gradients of all signs and scales, some exactly zero
            let grads: Vec<Tensor> = nets[0]
                .vars
                .iter()
                .map(|(_, v)| {
                    let n = v.elem_count();
                    let x = Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap();
                    let g = ((x * (0.37 * t as f64)).unwrap().sin().unwrap() * (10f64).powi(t - 3)).unwrap();
                    let g = g.broadcast_mul(&Tensor::arange(0f32, n as f32, &Device::Cpu).unwrap().affine(1.0, 0.0).unwrap().clamp(0f32, 1f32).unwrap()).unwrap();
                    g.reshape(v.dims()).unwrap()
                })
                .collect();
            fused.apply(&grads, Some(&mut avg_fused)).unwrap();
            composed.apply(&grads, Some(&mut avg_composed)).unwrap();
        }
        let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for (i, ((name, a), (_, b))) in nets[0].vars.iter().zip(&nets[1].vars).enumerate() {
            assert_eq!(values(a.as_tensor()), values(b.as_tensor()), "weights of {name}");
            let (ma, va) = fused.moments(i).unwrap();
            let (mb, vb) = composed.moments(i).unwrap();
            assert_eq!((values(&ma), values(&va)), (values(&mb), values(&vb)), "moments of {name}");
        }
        let meta = || ModelMeta { window: cfg.length_multiple(), stems: cfg.default_stems(), info: serde_json::json!({}) };
        let (ea, eb) = (avg_fused.to_model(&nets[0], meta()).unwrap(), avg_composed.to_model(&nets[1], meta()).unwrap());
        let eb: std::collections::HashMap<_, _> = eb.tensors().iter().cloned().collect();
        for (name, t) in ea.tensors() {
            assert_eq!(values(t), values(&eb[name]), "average of {name}");
        }
        assert_eq!(fused.step_count(), 4);
    }
}
