//! ISDM models (the paper's "weakly supervised" MSDM, one single-stem model per stem) and
//! loading a model named by a file or a comma-separated list of files, so every shell accepts
//! the same `--model` spelling.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;

use super::{Model, ModelMeta};
use crate::denoiser::{Denoiser, EdmDenoiser, IsdmDenoiser};
use crate::unet::params::TensorMap;

impl Model {
    /// A model file, or `a,b,c,d`: one single-stem model file per stem, in stem order, joined as
    /// an ISDM model ([`Model::isdm`]).
    pub fn load_spec(spec: &Path, device: &Device) -> Result<Self> {
        let Some(list) = spec.to_str().filter(|s| s.contains(',')) else {
            return Self::load(spec, device);
        };
        let models = list
            .split(',')
            .enumerate()
            .map(|(i, p)| {
                if p.trim().is_empty() {
                    bail!("the model list '{list}' has an empty entry {}: give one model file per stem, joined by commas", i + 1);
                }
                Self::load(Path::new(p), device).with_context(|| format!("ISDM stem model {} of '{list}'", i + 1))
            })
            .collect::<Result<Vec<_>>>()?;
        Self::isdm(models)
    }

    /// ISDM (the paper's "weakly supervised" MSDM): one single-stem model per stem, their
    /// denoisers concatenated in stem order. Each model's own stem name (its `meta.stems[0]`) is
    /// used when it is one of bass/drums/guitar/piano, else the position's name.
    pub fn isdm(models: Vec<Model>) -> Result<Self> {
        if models.len() < 2 {
            bail!("an ISDM model needs one single-stem model per stem (got {})", models.len());
        }
        let mut stems = Vec::with_capacity(models.len());
        let mut window = usize::MAX;
        let mut ids = Vec::new();
        for (i, m) in models.iter().enumerate() {
            if m.config.in_channels != 1 || m.isdm.is_some() {
                bail!("ISDM stem model {} has {} channels; each must be a one-stem model", i + 1, m.config.in_channels);
            }
            let name = m.meta.stems[0].clone();
            let fallback = crate::STEMS.get(i).map(|s| s.to_string()).unwrap_or(name.clone());
            stems.push(if crate::STEMS.contains(&name.as_str()) { name } else { fallback });
            window = window.min(m.window());
            ids.push(m.id());
        }
        let mut it = models.into_iter();
        let first = it.next().expect("at least two");
        let mut dens: Vec<EdmDenoiser> = it.map(|m| m.denoiser).collect();
        let Model { config, denoiser, tensors, .. } = first;
        let first_net = EdmDenoiser { net: denoiser.net, sigma_data: denoiser.sigma_data, compute_dtype: denoiser.compute_dtype, graphs: Default::default() };
        dens.insert(0, first_net);
        // `denoiser` keeps a handle on the first stem's network for code that wants one net.
        let composite = IsdmDenoiser { stems: dens };
        let window = window / composite.length_multiple() * composite.length_multiple();
        let meta = ModelMeta { window, stems, info: serde_json::json!({"isdm": ids}) };
        let id = ids.join("+");
        let denoiser = EdmDenoiser::new(crate::unet::UNet1d::new(&config, &TensorMap::new(tensors.iter().cloned().collect()))?);
        Ok(Self { config, meta, denoiser, isdm: Some(composite), tensors, id })
    }
}
