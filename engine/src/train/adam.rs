//! Plain Adam (Kingma & Ba), as `torch.optim.Adam` with the reference's settings (spec §10):
//! lr 1e-4, betas (0.9, 0.99), eps 1e-8, no weight decay, bias-corrected. Unlike candle-nn's
//! `AdamW` there is no decoupled weight decay and the moments are public, so a run can be saved
//! and resumed bit-for-bit ([`Adam::save`], [`Adam::load`]).
//!
//! Update for a parameter p with gradient g at step t (1-based), in PyTorch's operation order:
//! m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;
//! p ← p − (lr / (1−β1^t)) · m / (√v / √(1−β2^t) + eps).
//!
//! For CPU f32 parameters the moments are plain buffers and a step, with the weight average if
//! the run keeps one, is one pass per parameter ([`super::fused_step`]); elsewhere it is composed
//! from candle ops, with the same numbers.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::ema::WeightAverage;
use super::fused_step::{self, AdamFactors, Buffer};

/// Adam's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamConfig {
    /// The reference: lr 1e-4, betas (0.9, 0.99), eps 1e-8.
    fn default() -> Self {
        Self { lr: 1e-4, beta1: 0.9, beta2: 0.99, eps: 1e-8 }
    }
}

impl AdamConfig {
    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            bail!("Adam: the learning rate must be a positive number, got {}", self.lr);
        }
        for (n, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                bail!("Adam: {n} must lie in [0, 1), got {b}");
            }
        }
        if !(self.eps > 0.0) {
            bail!("Adam: eps must be positive, got {}", self.eps);
        }
        Ok(())
    }
}

/// Adam over named variables, with its first and second moments.
pub struct Adam {
    pub config: AdamConfig,
    params: Vec<(String, Var)>,
    m: Vec<Buffer>,
    v: Vec<Buffer>,
    step: u64,
}

const STEP_KEY: &str = "msdm.adam.step";
const CONFIG_KEY: &str = "msdm.adam.config";

impl Adam {
    /// Fresh moments (zeros) for `params`; names must be unique.
    pub fn new(params: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        Self::with_buffers(params, config, Buffer::host_for)
    }

    /// [`Self::new`] that composes candle ops on every device (the fused step's test oracle).
    pub fn composed(params: Vec<(String, Var)>, config: AdamConfig) -> Result<Self> {
        Self::with_buffers(params, config, |_| false)
    }

    fn with_buffers(params: Vec<(String, Var)>, config: AdamConfig, host: fn(&Tensor) -> bool) -> Result<Self> {
        config.validate()?;
        let mut seen = std::collections::HashSet::new();
        for (n, _) in &params {
            if !seen.insert(n.as_str()) {
                bail!("Adam: parameter name '{n}' appears twice");
            }
        }
        let zeros = |p: &Var| Buffer::new(p.as_tensor().zeros_like()?, host(p.as_tensor()));
        let m = params.iter().map(|(_, p)| zeros(p)).collect::<Result<Vec<_>>>()?;
        let v = params.iter().map(|(_, p)| zeros(p)).collect::<Result<Vec<_>>>()?;
        Ok(Self { config, params, m, v, step: 0 })
    }

    /// Whether every step is the fused one-pass step (CPU f32 parameters).
    pub fn is_fused(&self) -> bool {
        self.m.iter().all(|b| matches!(b, Buffer::Host(_)))
    }

    /// Optimizer steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// The moments of parameter `i` (first, second).
    pub fn moments(&self, i: usize) -> Result<(Tensor, Tensor)> {
        let p = self.params[i].1.as_tensor();
        Ok((self.m[i].to_tensor(p)?, self.v[i].to_tensor(p)?))
    }

    /// One update from `grads`. Every parameter must have a gradient: a missing one means the
    /// graph does not reach it (a bug: a no-backward op, a detached tensor), never silently skipped.
    pub fn step(&mut self, grads: &GradStore) -> Result<()> {
        self.step_and_average(grads, None)
    }

    /// [`Self::step`], then folds the new weights into `average` (in the same pass where the
    /// parameters live on the CPU).
    pub fn step_and_average(&mut self, grads: &GradStore, average: Option<&mut WeightAverage>) -> Result<()> {
        let mut gs = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            let g = grads.get(p.as_tensor()).with_context(|| {
                format!("parameter '{name}' received no gradient: the loss does not depend on it through ops with a backward")
            })?;
            gs.push(g.clone());
        }
        self.apply(&gs, average)
    }

    /// One update from gradients given in parameter order, and the average's, if any.
    pub fn apply(&mut self, grads: &[Tensor], mut average: Option<&mut WeightAverage>) -> Result<()> {
        if grads.len() != self.params.len() {
            bail!("Adam: {} gradients for {} parameters", grads.len(), self.params.len());
        }
        if average.as_ref().is_some_and(|a| a.len() != self.params.len()) {
            bail!("Adam: the weight average does not match the parameters");
        }
        let AdamConfig { lr, beta1, beta2, eps } = self.config;
        self.step += 1;
        let t = self.step as i32;
        let decay = average.as_ref().map(|a| a.state.decay_at(self.step));
        let bc1 = 1.0 - beta1.powi(t);
        let bc2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        let step_size = lr / bc1;
        for (i, ((_, p), g)) in self.params.iter().zip(grads).enumerate() {
            let g = g.to_dtype(p.dtype())?.detach();
            let avg = average.as_deref_mut().map(|a| a.buffer_mut(i));
            match (&mut self.m[i], &mut self.v[i], avg) {
                (Buffer::Host(m), Buffer::Host(v), None) => {
                    fused_step::step_in_place(p.as_tensor(), &g, m, v, None, AdamFactors::new(lr, beta1, beta2, eps, t))?
                }
                (Buffer::Host(m), Buffer::Host(v), Some(Buffer::Host(a))) => {
                    let avg = Some((a.as_mut_slice(), decay.unwrap_or(0.0) as f32));
                    fused_step::step_in_place(p.as_tensor(), &g, m, v, avg, AdamFactors::new(lr, beta1, beta2, eps, t))?
                }
                (Buffer::Device(m_i), Buffer::Device(v_i), avg) => {
                    let m = ((&*m_i * beta1)? + (&g * (1.0 - beta1))?)?;
                    let v = ((&*v_i * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                    let denom = ((v.sqrt()? / bc2_sqrt)? + eps)?;
                    let update = ((&m / &denom)? * step_size)?;
                    p.set(&(p.as_tensor().detach() - update)?)?;
                    (*m_i, *v_i) = (m, v);
                    if let Some(a) = avg {
                        WeightAverage::fold_in(a, p.as_tensor(), decay.unwrap_or(0.0))?;
                    }
                }
                _ => bail!("Adam: parameter {i}'s moments and average are of different kinds"),
            }
        }
        Ok(())
    }

    /// Writes the moments (`m.<name>`, `v.<name>`, in the parameters' dtype) and the step count
    /// to one safetensors file, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: Vec<(String, Tensor)> = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            let (m, v) = self.moments(i)?;
            tensors.push((format!("m.{name}"), m.to_device(&Device::Cpu)?));
            tensors.push((format!("v.{name}"), v.to_device(&Device::Cpu)?));
        }
        let mut md = HashMap::new();
        md.insert(STEP_KEY.to_string(), self.step.to_string());
        md.insert(CONFIG_KEY.to_string(), serde_json::to_string(&self.config)?);
        let tmp = path.with_extension("safetensors.partial");
        safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(md), &tmp)
            .with_context(|| format!("cannot write the optimizer state '{}'", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot move the optimizer state into '{}'", path.display()))?;
        Ok(())
    }

    /// Restores moments and step count saved by [`Adam::save`] for the same parameters. The
    /// hyper-parameters come from `config` (the caller decides whether they may change).
    pub fn load(params: Vec<(String, Var)>, config: AdamConfig, path: &Path) -> Result<Self> {
        let mut adam = Self::new(params, config)?;
        let bytes = std::fs::read(path).with_context(|| format!("cannot read the optimizer state '{}'", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .with_context(|| format!("'{}' is not a safetensors file", path.display()))?;
        let md = header.metadata().clone().unwrap_or_default();
        let step: u64 = md
            .get(STEP_KEY)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("'{}' is not an optimizer state (no '{STEP_KEY}')", path.display()))?;
        let st = safetensors::SafeTensors::deserialize(&bytes).with_context(|| format!("'{}' is damaged", path.display()))?;
        let expected = 2 * adam.params.len();
        if st.len() != expected {
            bail!(
                "the optimizer state '{}' holds {} tensors but the model needs {expected}: it belongs to another model",
                path.display(),
                st.len()
            );
        }
        for (i, (name, p)) in adam.params.iter().enumerate() {
            for (which, slot) in [("m", &mut adam.m[i]), ("v", &mut adam.v[i])] {
                let key = format!("{which}.{name}");
                let view = st.tensor(&key).with_context(|| {
                    format!("the optimizer state '{}' has no '{key}': it belongs to another model", path.display())
                })?;
                let t = candle_core::safetensors::Load::load(&view, &Device::Cpu)?;
                if t.dims() != p.dims() {
                    bail!("optimizer moment '{key}' has shape {:?}, the parameter {:?}", t.dims(), p.dims());
                }
                *slot = Buffer::new(t.to_dtype(p.dtype())?.to_device(p.device())?, matches!(slot, Buffer::Host(_)))?;
            }
        }
        adam.step = step;
        Ok(adam)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModelConfig;
    use crate::model_file::ModelMeta;
    use crate::train::TrainableNet;
    use candle_core::DType;

    fn var(v: &[f32]) -> Var {
        Var::from_tensor(&Tensor::new(v, &Device::Cpu).unwrap()).unwrap()
    }

    /// Scalar Adam by hand, in f64, against the tensor implementation (f32).
    #[test]
    fn matches_hand_computed_adam() {
        let cfg = AdamConfig { lr: 0.1, ..AdamConfig::default() };
        let p = var(&[1.0, -2.0]);
        let mut adam = Adam::new(vec![("p".into(), p.clone())], cfg).unwrap();
        let (mut x, mut m, mut v) = ([1.0f64, -2.0], [0.0f64; 2], [0.0f64; 2]);
        for t in 1..=5 {
            // loss = sum(x^3): g = 3x^2
            let loss = p.as_tensor().powf(3.0).unwrap().sum_all().unwrap();
            adam.step(&loss.backward().unwrap()).unwrap();
            for i in 0..2 {
                let g = 3.0 * x[i] * x[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.99 * v[i] + 0.01 * g * g;
                let denom = v[i].sqrt() / (1.0 - 0.99f64.powi(t)).sqrt() + 1e-8;
                x[i] -= 0.1 / (1.0 - 0.9f64.powi(t)) * m[i] / denom;
            }
        }
        let got: Vec<f32> = p.as_tensor().to_vec1().unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - x[i]).abs() < 1e-5, "{got:?} vs {x:?}");
        }
        assert_eq!(adam.step_count(), 5);
    }

    #[test]
    fn missing_gradient_is_an_error() {
        let a = var(&[1.0]);
        let b = var(&[2.0]);
        let mut adam = Adam::new(vec![("a".into(), a.clone()), ("b".into(), b)], AdamConfig::default()).unwrap();
        let grads = a.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let err = adam.step(&grads).unwrap_err().to_string();
        assert!(err.contains("'b' received no gradient"), "{err}");
    }

    #[test]
    fn save_load_resumes_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let run = |p: &Var, adam: &mut Adam, n: usize| {
            for _ in 0..n {
                let loss = (p.as_tensor().sin().unwrap() * 3.0).unwrap().sum_all().unwrap();
                adam.step(&loss.backward().unwrap()).unwrap();
            }
        };
        let cfg = AdamConfig::default();
        let p1 = var(&[0.3, 0.7, -1.1]);
        let mut a1 = Adam::new(vec![("w".into(), p1.clone())], cfg).unwrap();
        run(&p1, &mut a1, 6);

        let p2 = var(&[0.3, 0.7, -1.1]);
        let mut a2 = Adam::new(vec![("w".into(), p2.clone())], cfg).unwrap();
        run(&p2, &mut a2, 3);
        let path = dir.path().join("opt.safetensors");
        a2.save(&path).unwrap();
        let p3 = Var::from_tensor(&p2.as_tensor().copy().unwrap()).unwrap();
        let mut a3 = Adam::load(vec![("w".into(), p3.clone())], cfg, &path).unwrap();
        assert_eq!(a3.step_count(), 3);
        run(&p3, &mut a3, 3);
        let (x1, x3): (Vec<f32>, Vec<f32>) = (p1.as_tensor().to_vec1().unwrap(), p3.as_tensor().to_vec1().unwrap());
        assert_eq!(x1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), x3.iter().map(|x| x.to_bits()).collect::<Vec<_>>());

        // another model's state is refused with a clear message
        let q = var(&[1.0]);
        let err = Adam::load(vec![("other".into(), q)], cfg, &path).err().unwrap().to_string();
        assert!(err.contains("another model") || err.contains("shape"), "{err}");
    }

    /// The fused step against the composed candle ops: same weights, moments and average, value
    /// for value, over several steps of a real network's parameters (sizes from 1 to above a chunk).
    #[test]
    fn fused_step_gives_the_composed_numbers() {
        let cfg = ModelConfig { channels: 48, ..ModelConfig::tiny() };
        let nets = [1, 2].map(|_| TrainableNet::random(&cfg, 7, DType::F32, &Device::Cpu).unwrap());
        let sizes: Vec<usize> = nets[0].vars.iter().map(|(_, v)| v.elem_count()).collect();
        // sizes from a few values to several of the fused step's parallel chunks (16,384 values)
        assert!(sizes.iter().any(|&n| n > 2 << 14) && sizes.iter().any(|&n| n < 100), "{sizes:?}");
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
