//! An exponential moving average (EMA) of the weights, the usual second output of a diffusion
//! training run: ema ← d·ema + (1 − d)·w after every optimizer step, with the warm-up
//! d_n = min(d, (1 + n) / (10 + n)) over the n steps since the average started.
//!
//! The reference trains without one (spec §10); the average does not touch the training weights,
//! the optimizer or the random draws, so a run with it follows the same trajectory as the
//! reference. It is saved as `ema.safetensors` (our model format) at every checkpoint and can be
//! exported or evaluated like `model.safetensors`.

use anyhow::{bail, Result};
use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::fused_step::Buffer;
use super::net::TrainableNet;
use crate::model_file::{Model, ModelMeta};
use crate::ops::cpu::storage_f32;

/// What `trainer.json` records of the average.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EmaState {
    /// The decay d (e.g. 0.999: an average over about the last 1,000 steps).
    pub decay: f64,
    /// The step at which the average started from the weights of that step.
    pub since_step: u64,
}

impl EmaState {
    pub fn check_decay(decay: f64) -> Result<()> {
        if !(decay > 0.0 && decay < 1.0) {
            bail!("the EMA decay must lie strictly between 0 and 1 (e.g. 0.999), got {decay}");
        }
        Ok(())
    }

    /// The decay applied by the update that brings the run to `step`.
    pub fn decay_at(&self, step: u64) -> f64 {
        let n = step.saturating_sub(self.since_step + 1) as f64;
        self.decay.min((1.0 + n) / (10.0 + n))
    }
}

/// The averaged weights, in the order of the network's variables (host buffers for CPU f32
/// weights, which Adam's fused step updates in its pass).
pub struct WeightAverage {
    pub state: EmaState,
    tensors: Vec<Buffer>,
}

impl WeightAverage {
    /// Starts the average from the network's current weights at `step`.
    pub fn start(net: &TrainableNet, decay: f64, step: u64) -> Result<Self> {
        Self::start_with(net, decay, step, Buffer::host_for)
    }

    /// [`Self::start`] kept as tensors on every device (with [`super::Adam::composed`]: the fused
    /// step's test oracle).
    pub fn start_composed(net: &TrainableNet, decay: f64, step: u64) -> Result<Self> {
        Self::start_with(net, decay, step, |_| false)
    }

    fn start_with(net: &TrainableNet, decay: f64, step: u64, host: fn(&Tensor) -> bool) -> Result<Self> {
        EmaState::check_decay(decay)?;
        let tensors = net
            .vars
            .iter()
            .map(|(_, v)| Buffer::new(v.as_tensor().detach().copy()?, host(v.as_tensor())))
            .collect::<Result<_>>()?;
        Ok(Self { state: EmaState { decay, since_step: step }, tensors })
    }

    /// The average saved in `model` (an `ema.safetensors`), for the network's variables.
    pub fn from_model(model: &Model, net: &TrainableNet, state: EmaState) -> Result<Self> {
        EmaState::check_decay(state.decay)?;
        let saved: std::collections::HashMap<&str, &Tensor> = model.tensors().iter().map(|(n, t)| (n.as_str(), t)).collect();
        if saved.len() != net.vars.len() {
            bail!("the saved weight average holds {} tensors, the network {}", saved.len(), net.vars.len());
        }
        let mut tensors = Vec::with_capacity(net.vars.len());
        for (name, var) in &net.vars {
            let Some(t) = saved.get(name.as_str()) else {
                bail!("the saved weight average has no '{name}'");
            };
            if t.dims() != var.dims() {
                bail!("the saved weight average's '{name}' has shape {:?}, the network's {:?}", t.dims(), var.dims());
            }
            tensors.push(Buffer::new(t.to_dtype(var.dtype())?.to_device(var.device())?.copy()?, Buffer::host_for(var.as_tensor()))?);
        }
        Ok(Self { state, tensors })
    }

    /// Folds in the weights after the optimizer step that brought the run to `step` (training
    /// folds them in within Adam's step instead: [`super::Adam::step_and_average`]).
    pub fn update(&mut self, net: &TrainableNet, step: u64) -> Result<()> {
        let d = self.state.decay_at(step);
        for (avg, (_, var)) in self.tensors.iter_mut().zip(&net.vars) {
            Self::fold_in(avg, var.as_tensor(), d)?;
        }
        Ok(())
    }

    /// Number of averaged tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub(super) fn buffer_mut(&mut self, i: usize) -> &mut Buffer {
        &mut self.tensors[i]
    }

    /// `avg ← avg·d + w·(1 − d)`.
    pub(super) fn fold_in(avg: &mut Buffer, w: &Tensor, d: f64) -> Result<()> {
        match avg {
            Buffer::Device(t) => *t = moving_average(t, &w.detach(), d)?,
            Buffer::Host(a) => {
                let w = w.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                super::fused_step::fold_in(a, &w, d as f32);
            }
        }
        Ok(())
    }

    /// The averaged weights as a model (f32, CPU).
    pub fn to_model(&self, net: &TrainableNet, meta: ModelMeta) -> Result<Model> {
        let mut map = std::collections::HashMap::with_capacity(self.tensors.len());
        for ((name, var), t) in net.vars.iter().zip(&self.tensors) {
            let t = t.to_tensor(var.as_tensor())?;
            map.insert(name.clone(), t.to_dtype(candle_core::DType::F32)?.to_device(&candle_core::Device::Cpu)?);
        }
        Model::from_tensors(net.config.clone(), meta, map)
    }
}

/// `avg · decay + w · (1 − decay)` (same shapes), in one parallel pass on the CPU (f32): candle's
/// composition makes three passes and two temporaries on one thread, about 5% of a CPU training
/// step for the bundled model's 9.5M weights. Other devices and dtypes compose candle ops.
fn moving_average(avg: &Tensor, w: &Tensor, decay: f64) -> candle_core::Result<Tensor> {
    if matches!(avg.device(), Device::Cpu) && avg.dtype() == DType::F32 && w.dtype() == DType::F32 && avg.dims() == w.dims() {
        return avg.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &MovingAverage(decay as f32));
    }
    avg.affine(decay, 0.0)? + w.affine(1.0 - decay, 0.0)?
}

struct MovingAverage(f32);

impl CustomOp2 for MovingAverage {
    fn name(&self) -> &'static str {
        "moving-average"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (a, w) = (storage_f32(s1, l1, self.name())?, storage_f32(s2, l2, self.name())?);
        let d = self.0;
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(1 << 16).zip(a.par_chunks(1 << 16).zip(w.par_chunks(1 << 16))).for_each(|(o, (a, w))| {
            for ((o, a), w) in o.iter_mut().zip(a).zip(w) {
                *o = a * d + w * (1.0 - d);
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use candle_core::{DType, Device};

    #[test]
    fn decay_warms_up_from_the_start_step() {
        let s = EmaState { decay: 0.999, since_step: 100 };
        assert_eq!(s.decay_at(101), 0.1); // the first update mostly takes the new weights
        assert!((s.decay_at(102) - 2.0 / 11.0).abs() < 1e-12);
        assert_eq!(s.decay_at(100_000), 0.999);
        assert!(EmaState::check_decay(1.0).is_err() && EmaState::check_decay(0.0).is_err() && EmaState::check_decay(f64::NAN).is_err());
    }

    #[test]
    fn update_is_the_weighted_mean_and_survives_a_model_round_trip() {
        let cfg = ModelConfig::tiny();
        let net = TrainableNet::random(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
        let mut avg = WeightAverage::start(&net, 0.5, 0).unwrap();
        let values = |a: &WeightAverage| -> Vec<Vec<f32>> {
            a.tensors.iter().zip(&net.vars).map(|(t, (_, v))| t.to_tensor(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()).collect()
        };
        let before = values(&avg);
        // move the weights: w ← 3·w + 1
        for (_, v) in &net.vars {
            v.set(&v.as_tensor().affine(3.0, 1.0).unwrap()).unwrap();
        }
        avg.update(&net, 1).unwrap(); // decay_at(1) = min(0.5, 0.1) = 0.1
        for (got, b) in values(&avg).iter().zip(&before) {
            for (g, w) in got.iter().zip(b) {
                let want = 0.1 * w + 0.9 * (3.0 * w + 1.0);
                assert!((g - want).abs() <= 1e-6 * want.abs().max(1.0), "{g} vs {want}");
            }
        }
        let meta = ModelMeta { window: cfg.length_multiple(), stems: cfg.default_stems(), info: serde_json::json!({}) };
        let m = avg.to_model(&net, meta).unwrap();
        let back = WeightAverage::from_model(&m, &net, avg.state).unwrap();
        assert_eq!(values(&avg), values(&back));
        // an average of another config is refused
        let other = Model::random(ModelConfig { channels: 32, ..cfg.clone() }, 1, &Device::Cpu).unwrap();
        assert!(WeightAverage::from_model(&other, &net, avg.state).is_err());
    }

    #[test]
    fn moving_average_matches_candle_ops() {
        let a = Tensor::arange(0f32, 200_000f32, &Device::Cpu).unwrap().reshape((400, 500)).unwrap();
        let w = (a.sin().unwrap() * 3.0).unwrap();
        let ours = moving_average(&a, &w, 0.999).unwrap();
        let plain = (a.affine(0.999, 0.0).unwrap() + w.affine(0.001, 0.0).unwrap()).unwrap();
        let err = (&ours - &plain).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err <= 2e-2, "{err}"); // values up to 2e5: f32 rounding of the two orders
        assert_eq!(ours.dims(), a.dims());
        let rel = ((&ours - &plain).unwrap().abs().unwrap() / (plain.abs().unwrap() + 1.0).unwrap()).unwrap();
        assert!(rel.max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-6);
    }
}
