//! `msdm import` and `msdm info`.

use std::path::Path;

use anyhow::{bail, Result};
use msdm::model_file::{Model, ModelMeta, StoreDType};

pub fn import(checkpoint: &Path, output: &Path, f16: bool, window: Option<usize>, force: bool) -> Result<()> {
    if output.exists() && !force {
        bail!("'{}' exists; pass --force to replace it", output.display());
    }
    let ck = msdm::import::read_lightning_checkpoint(checkpoint)?;
    let window = window.unwrap_or_else(|| Model::default_window(&ck.config));
    if window % ck.config.length_multiple() != 0 {
        bail!("--window {window} is not a multiple of the model's length multiple {}", ck.config.length_multiple());
    }
    let meta = ModelMeta { window, stems: ck.config.default_stems(), info: ck.info.clone() };
    let tensors = ck
        .tensors
        .into_iter()
        .map(|(name, shape, data)| Ok((name, candle_core::Tensor::from_vec(data, shape, &candle_core::Device::Cpu)?)))
        .collect::<Result<_>>()?;
    let model = Model::from_tensors(ck.config, meta, tensors)?;
    model.save(output, if f16 { StoreDType::F16 } else { StoreDType::F32 })?;
    println!(
        "imported {} ({} parameters, {} tensors) into {} as {}",
        checkpoint.display(),
        model.parameter_count(),
        model.tensors().len(),
        output.display(),
        if f16 { "f16" } else { "f32" }
    );
    Ok(())
}

pub fn info(path: Option<&Path>, json: bool) -> Result<()> {
    let model = crate::jobs::load_model(path, "cpu")?;
    let v = serde_json::json!({
        "id": model.id(),
        "parameters": model.parameter_count(),
        "window": model.window(),
        "window_seconds": model.window() as f64 / msdm::MODEL_RATE as f64,
        "stems": model.meta.stems,
        "config": model.config,
        "info": model.meta.info,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("model id     {}", model.id());
        println!("parameters   {}", model.parameter_count());
        println!("stems        {}", model.meta.stems.join(", "));
        println!("window       {} samples ({:.2} s at 22,050 Hz)", model.window(), model.window() as f64 / 22_050.0);
        let noise = if model.config.stem_sigmas {
            "one per stem (imputation sees the given stems clean)"
        } else {
            "one for all stems (the reference's; imputation re-noises the given stems)"
        };
        println!("noise levels {noise}");
        println!("config       {}", model.config.to_json());
        println!("info         {}", model.meta.info);
    }
    Ok(())
}

/// `msdm export`: rewrite a model file (e.g. a training checkpoint) for shipping: f16 storage,
/// default sampler settings per job, extra provenance.
pub fn export(model: &Path, output: &Path, f16: bool, defaults: Option<&Path>, card: Option<&Path>, force: bool) -> Result<()> {
    if output.exists() && !force {
        bail!("'{}' exists; pass --force to replace it", output.display());
    }
    let mut m = Model::load(model, &candle_core::Device::Cpu)?;
    let mut info = match m.meta.info.clone() {
        serde_json::Value::Object(o) => o,
        serde_json::Value::Null => serde_json::Map::new(),
        other => serde_json::Map::from_iter([("previous".to_string(), other)]),
    };
    if let Some(path) = defaults {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read '{}': {e}", path.display()))?;
        let v: serde_json::Value = serde_json::from_str(&text)?;
        for key in ["separate", "generate", "impute"] {
            if let Some(s) = v.get(key) {
                msdm::args::parse_settings(s)
                    .map_err(|e| anyhow::anyhow!("defaults.{key} in '{}' is not a valid settings object: {e:#}", path.display()))?;
            }
        }
        info.insert("defaults".to_string(), v);
    }
    if let Some(path) = card {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
        info.insert("card".to_string(), v);
    }
    m.meta.info = serde_json::Value::Object(info);
    m.save(output, if f16 { StoreDType::F16 } else { StoreDType::F32 })?;
    println!("wrote {} ({} parameters, {})", output.display(), m.parameter_count(), if f16 { "f16" } else { "f32" });
    Ok(())
}
