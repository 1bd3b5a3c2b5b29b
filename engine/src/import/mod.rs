//! Import of the authors' released checkpoints: PyTorch-Lightning 1.7 `.ckpt` files, read directly
//! (no Python).
//!
//! A checkpoint is a zip written by `torch.save` ([`archive`]) holding a pickled dict ([`pickle`]):
//! `epoch`, `global_step`, `pytorch-lightning_version`, `state_dict`, `hyper_parameters`, ...
//! * `hyper_parameters` (a Lightning `AttributeDict`) holds the model kwargs, among them a pickled
//!   `audio_diffusion_pytorch.LogNormalDistribution`; they become a [`ModelConfig`]. Kwargs absent
//!   from the checkpoint take audio-diffusion-pytorch 0.0.43's `AudioDiffusionModel` defaults, since
//!   that is what the network was built with.
//! * `state_dict` holds every tensor twice (`model.unet.*` and `model.diffusion.net.*`, one storage);
//!   only `model.unet.*` is kept, renamed to the `UNet1d` names (`to_time.0.0.weights`, ...).

mod archive;
pub mod pickle;

use crate::config::ModelConfig;
use anyhow::{anyhow, bail, Context, Result};
use pickle::Value;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

/// A checkpoint read into memory: the network's configuration and its tensors (f32, row-major).
#[derive(Clone, Debug)]
pub struct ImportedCheckpoint {
    pub config: ModelConfig,
    /// (`UNet1d` state-dict name, shape, values), in checkpoint order.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// `epoch`, `global_step`, `lightning_version`, `hparams_name`, `source_file`, `tensor_prefix`,
    /// `num_tensors`, `num_parameters`, `dropped_duplicates`, `defaults_applied`, `storage_dtypes`.
    pub info: serde_json::Value,
}

/// Largest `data.pkl` read (64 MiB). The pickle only describes the checkpoint (the weights are
/// separate entries): the paper model's is well under 1 MiB even with its optimizer state, so a
/// bigger one is not a checkpoint, and is refused before it is inflated into memory.
pub const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Largest single tensor storage read (4 GiB). torch saves one storage per tensor; the paper's
/// 405M-parameter model is 1.6 GB in f32 in total, so even the whole model in one storage fits.
pub const MAX_STORAGE_BYTES: u64 = 4 << 30;

/// Most values (parameters) imported in total (2^31: 8 GiB as f32, 5x the paper model). Storages
/// are read one at a time, so this bounds what the import holds at the end.
pub const MAX_CHECKPOINT_VALUES: usize = 1 << 31;

/// The caps applied while importing; [`Default`] gives the documented constants. Tests (and a
/// caller on a small machine) can lower them.
#[derive(Clone, Debug)]
pub struct ImportLimits {
    /// See [`MAX_PICKLE_BYTES`].
    pub max_pickle_bytes: u64,
    /// See [`MAX_STORAGE_BYTES`].
    pub max_storage_bytes: u64,
    /// See [`MAX_CHECKPOINT_VALUES`].
    pub max_values: usize,
}

impl Default for ImportLimits {
    fn default() -> Self {
        Self { max_pickle_bytes: MAX_PICKLE_BYTES, max_storage_bytes: MAX_STORAGE_BYTES, max_values: MAX_CHECKPOINT_VALUES }
    }
}

/// The prefixes under which the U-Net's tensors may be stored, most specific first.
const PREFIXES: [&str; 4] = ["model.unet.", "unet.", "model.diffusion.net.", "diffusion.net."];

/// Reads a PyTorch-Lightning `.ckpt` of an audio-diffusion-pytorch 0.0.43 `AudioDiffusionModel`.
pub fn read_lightning_checkpoint(path: &Path) -> Result<ImportedCheckpoint> {
    read_lightning_checkpoint_with(path, &ImportLimits::default())
}

/// [`read_lightning_checkpoint`] under other limits.
pub fn read_lightning_checkpoint_with(path: &Path, limits: &ImportLimits) -> Result<ImportedCheckpoint> {
    let source = path.display().to_string();
    let file = File::open(path).with_context(|| format!("cannot open checkpoint '{source}'"))?;
    read_checkpoint_from(BufReader::new(file), &source, limits)
}

/// A checkpoint held in memory (e.g. by a fuzzer); `source` names it in errors.
pub fn read_lightning_checkpoint_bytes(bytes: &[u8], source: &str, limits: &ImportLimits) -> Result<ImportedCheckpoint> {
    read_checkpoint_from(std::io::Cursor::new(bytes), source, limits)
}

fn read_checkpoint_from<R: Read + Seek>(reader: R, source: &str, limits: &ImportLimits) -> Result<ImportedCheckpoint> {
    let source = source.to_string();
    let mut archive = archive::TorchArchive::new(reader, &source, limits)?;
    let pkl = archive.data_pkl()?;
    let root = pickle::unpickle(&pkl).with_context(|| format!("'{source}': cannot decode the checkpoint's pickle"))?;
    if root.dict_items().is_none() {
        bail!("'{source}': the checkpoint holds a {}, expected a dict with `state_dict` and `hyper_parameters`", root.kind());
    }

    // Configuration.
    let hp = root.get("hyper_parameters").ok_or_else(|| {
        anyhow!(
            "'{source}' has no `hyper_parameters`: not a PyTorch Lightning checkpoint saved with save_hyperparameters(); \
             give the model configuration separately"
        )
    })?;
    let (config, defaults_applied) = config_from_hparams(&hp).with_context(|| format!("'{source}': reading hyper_parameters"))?;

    // Tensors.
    let sd = root.get("state_dict").ok_or_else(|| anyhow!("'{source}' has no `state_dict`"))?;
    let items = sd.dict_items().ok_or_else(|| anyhow!("'{source}': `state_dict` is a {}, expected a dict", sd.kind()))?;
    let names: Vec<&str> = items.iter().filter_map(|(k, _)| k.as_str()).collect();
    let prefix = PREFIXES
        .iter()
        .copied()
        .find(|p| names.iter().any(|n| n.starts_with(p)))
        .ok_or_else(|| {
            let mut seen: Vec<String> = names.iter().map(|n| n.split('.').take(2).collect::<Vec<_>>().join(".")).collect();
            seen.dedup();
            seen.truncate(8);
            anyhow!("'{source}': no `model.unet.*` tensors in state_dict (found prefixes: {})", seen.join(", "))
        })?;
    let mut kept = Vec::new();
    let mut dropped = 0usize;
    for (k, v) in &items {
        let Some(name) = k.as_str() else { continue };
        match (name.strip_prefix(prefix), v) {
            (Some(short), Value::Tensor(t)) => kept.push((short.to_string(), t.clone())),
            (Some(short), other) => bail!("'{source}': state_dict entry '{short}' is a {}, expected a tensor", other.kind()),
            (None, _) => dropped += 1,
        }
    }
    // Storages are read once each and dropped after their last use.
    let mut uses: HashMap<String, usize> = HashMap::new();
    for (_, t) in &kept {
        *uses.entry(t.storage_key.clone()).or_default() += 1;
    }
    let mut cache: HashMap<String, Vec<u8>> = HashMap::new();
    let mut dtypes = std::collections::BTreeSet::new();
    let mut tensors = Vec::with_capacity(kept.len());
    let mut num_parameters = 0usize;
    for (name, t) in kept {
        let key = &t.storage_key;
        // Checked before any storage is read: the sizes are the file's claims.
        let count = archive::numel(&t.size).filter(|&n| n <= limits.max_values.saturating_sub(num_parameters));
        if count.is_none() {
            bail!(
                "'{source}': tensor '{name}' (size {:?}) takes the checkpoint past {} values in total (MAX_CHECKPOINT_VALUES): \
                 not a model this program can import (a damaged or hostile file?)",
                t.size,
                limits.max_values
            );
        }
        if !cache.contains_key(key) {
            let expected = t.storage_numel.map(|n| (n as u64).saturating_mul(t.dtype.size_in_bytes() as u64));
            let bytes = archive.storage(key, expected).with_context(|| format!("reading the data of tensor '{name}'"))?;
            cache.insert(key.clone(), bytes);
        }
        let values = archive::materialize(&t, &cache[key], &name).with_context(|| format!("'{source}'"))?;
        let left = uses.get_mut(key).expect("counted");
        *left -= 1;
        if *left == 0 {
            cache.remove(key);
        }
        dtypes.insert(format!("{:?}", t.dtype).to_lowercase());
        num_parameters += values.len();
        tensors.push((name, t.size.clone(), values));
    }

    let info = serde_json::json!({
        "source_file": source,
        "epoch": root.get("epoch").as_ref().map(pickle::to_json),
        "global_step": root.get("global_step").as_ref().map(pickle::to_json),
        "lightning_version": root.get("pytorch-lightning_version").as_ref().map(pickle::to_json),
        "hparams_name": root.get("hparams_name").as_ref().map(pickle::to_json),
        "tensor_prefix": prefix,
        "num_tensors": tensors.len(),
        "num_parameters": num_parameters,
        "dropped_duplicates": dropped,
        "defaults_applied": defaults_applied,
        "storage_dtypes": dtypes.into_iter().collect::<Vec<_>>(),
    });
    Ok(ImportedCheckpoint { config, tensors, info })
}

/// audio-diffusion-pytorch 0.0.43 `get_default_model_kwargs()` (plus `UNet1d`'s own defaults), as
/// applied by `AudioDiffusionModel` to kwargs the training config did not set.
fn library_defaults() -> serde_json::Map<String, serde_json::Value> {
    let v = serde_json::json!({
        "channels": 128, "patch_blocks": 4, "patch_factor": 2, "kernel_sizes_init": [1, 3, 7],
        "multipliers": [1, 2, 4, 4, 4, 4, 4], "factors": [4, 4, 4, 2, 2, 2], "num_blocks": [2, 2, 2, 2, 2, 2],
        "attentions": [false, false, false, true, true, true], "attention_heads": 8, "attention_features": 64,
        "attention_multiplier": 2, "use_attention_bottleneck": true, "resnet_groups": 8,
        "kernel_multiplier_downsample": 2, "use_nearest_upsample": false, "use_skip_scale": true,
        "use_context_time": true, "diffusion_sigma_distribution": {"mean": -3.0, "std": 1.0},
        "diffusion_sigma_data": 0.1,
    });
    match v {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn drop_targets(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("_target_");
            m.values_mut().for_each(drop_targets);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(drop_targets),
        _ => {}
    }
}

/// Builds the [`ModelConfig`] from the checkpoint's `hyper_parameters`; returns it with the names
/// of the kwargs that took the library's defaults.
fn config_from_hparams(hp: &Value) -> Result<(ModelConfig, Vec<String>)> {
    let mut json = pickle::to_json_checked(hp).context("cannot read hyper_parameters")?;
    let serde_json::Value::Object(top) = &json else {
        bail!("hyper_parameters is a {}, expected a dict of model kwargs", hp.kind());
    };
    // The model kwargs sit at the top level (Lightning `save_hyperparameters()` of the model's
    // kwargs) or one level down (e.g. under `model`).
    if !top.contains_key("in_channels") {
        let nested = top
            .iter()
            .find(|(_, v)| v.get("in_channels").is_some())
            .map(|(_, v)| v.clone())
            .ok_or_else(|| {
                let keys: Vec<&str> = top.keys().map(String::as_str).take(16).collect();
                anyhow!("missing hyper_parameters key `in_channels` (found keys: {})", keys.join(", "))
            })?;
        json = nested;
    }
    drop_targets(&mut json);
    let serde_json::Value::Object(mut kw) = json else { unreachable!() };
    if let Some(d) = kw.get_mut("diffusion_sigma_distribution") {
        let (mean, std) = (d.get("mean").cloned(), d.get("std").cloned());
        match (mean, std) {
            (Some(mean), Some(std)) => *d = serde_json::json!({"mean": mean, "std": std}),
            _ => bail!("hyper_parameters key `diffusion_sigma_distribution` has no mean/std (got {d})"),
        }
    }
    let mut defaults_applied = vec![];
    for (k, v) in library_defaults() {
        if !kw.contains_key(&k) || kw[&k].is_null() {
            defaults_applied.push(k.clone());
            kw.insert(k, v);
        }
    }
    let json = serde_json::Value::Object(kw);
    let config: ModelConfig = serde_json::from_value(json.clone()).map_err(|e| {
        let msg = e.to_string();
        match msg.strip_prefix("missing field `") {
            Some(rest) => anyhow!("missing hyper_parameters key {}", rest.split('`').next().unwrap_or(rest)),
            None => anyhow!("hyper_parameters do not form a model configuration: {msg}"),
        }
    })?;
    config.validate().context("the checkpoint's model configuration is not supported")?;
    Ok((config, defaults_applied))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_limits;
