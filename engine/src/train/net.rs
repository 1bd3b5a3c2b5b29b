//! The score network as trainable variables: every reference-named weight is a candle [`Var`],
//! and the [`EdmDenoiser`] is built on those variables, so optimizer updates (in place) are seen by
//! the next forward pass. Any float dtype works (f32 for training, f64 for gradient checks).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};

use crate::config::ModelConfig;
use crate::denoiser::EdmDenoiser;
use crate::model_file::{Model, ModelMeta};
use crate::unet::params::{Init, Params};
use crate::unet::UNet1d;

/// The network's parameters as variables, in name order, and the denoiser built on them.
pub struct TrainableNet {
    pub config: ModelConfig,
    pub vars: Vec<(String, Var)>,
    pub denoiser: EdmDenoiser,
}

/// Hands the network its variables by name and records which were asked for.
struct VarLookup<'a> {
    vars: &'a HashMap<String, Var>,
    used: RefCell<HashSet<String>>,
}

impl Params for VarLookup<'_> {
    fn get(&self, name: &str, shape: &[usize], _init: Init) -> candle_core::Result<Tensor> {
        let v = self
            .vars
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no weight '{name}' (shape {shape:?}) for this config")))?;
        if v.dims() != shape {
            candle_core::bail!("weight '{name}' has shape {:?} but the config requires {shape:?}", v.dims());
        }
        self.used.borrow_mut().insert(name.to_string());
        Ok(v.as_tensor().clone())
    }
}

impl TrainableNet {
    /// Variables initialized from `tensors` (copied, converted to `dtype`, moved to `device`).
    pub fn from_tensors(config: &ModelConfig, tensors: &[(String, Tensor)], dtype: DType, device: &Device) -> Result<Self> {
        if !dtype.is_float() {
            bail!("training needs a float dtype, got {dtype:?}");
        }
        let mut map = HashMap::with_capacity(tensors.len());
        for (name, t) in tensors {
            // `copy` so the variables never share storage with the caller's tensors.
            let v = Var::from_tensor(&t.to_dtype(dtype)?.to_device(device)?.copy()?)?;
            if map.insert(name.clone(), v).is_some() {
                bail!("weight '{name}' appears twice");
            }
        }
        let lookup = VarLookup { vars: &map, used: RefCell::new(HashSet::new()) };
        let net = UNet1d::new(config, &lookup).context("the weights do not fit the config")?;
        let used = lookup.used.into_inner();
        if let Some(extra) = map.keys().find(|k| !used.contains(*k)) {
            bail!("weight '{extra}' is not part of this config's network");
        }
        let mut vars: Vec<(String, Var)> = map.into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self { config: config.clone(), vars, denoiser: EdmDenoiser::new(net) })
    }

    /// A freshly initialized network (PyTorch's default init from our seeded RNG, as [`Model::random`]).
    pub fn random(config: &ModelConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let m = Model::random(config.clone(), seed, &Device::Cpu)?;
        Self::from_tensors(config, m.tensors(), dtype, device)
    }

    /// The variables of a loaded model.
    pub fn from_model(model: &Model, dtype: DType, device: &Device) -> Result<Self> {
        Self::from_tensors(&model.config, model.tensors(), dtype, device)
    }

    pub fn dtype(&self) -> DType {
        self.vars.first().map(|(_, v)| v.dtype()).unwrap_or(DType::F32)
    }

    pub fn device(&self) -> Device {
        self.vars.first().map(|(_, v)| v.device().clone()).unwrap_or(Device::Cpu)
    }

    pub fn parameter_count(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// The current weights as f32 CPU tensors, by name.
    pub fn weights(&self) -> Result<Vec<(String, Tensor)>> {
        self.vars
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().to_dtype(DType::F32)?.to_device(&Device::Cpu)?.copy()?)))
            .collect()
    }

    /// A [`Model`] holding a snapshot of the current weights (f32, CPU), e.g. to save it.
    pub fn to_model(&self, meta: ModelMeta) -> Result<Model> {
        Model::from_tensors(self.config.clone(), meta, self.weights()?.into_iter().collect())
    }
}
