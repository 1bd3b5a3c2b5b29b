//! The model, loaded lazily on a worker and shared by every plugin instance in the process
//! (a cache of weak references keyed by file path, so it is freed when no instance uses it).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use msdm::model_file::Model;

static MODELS: Mutex<Vec<(PathBuf, Weak<Model>)>> = Mutex::new(Vec::new());
static DEVICE: OnceLock<std::result::Result<Device, String>> = OnceLock::new();

/// The compute device for all instances: `MSDM_DEVICE` (auto|cpu|cuda|metal), default auto.
pub fn device() -> Result<Device> {
    let d = DEVICE.get_or_init(|| {
        let spec = std::env::var("MSDM_DEVICE").unwrap_or_else(|_| "auto".into());
        msdm::device::select(&spec).map_err(|e| format!("{e:#}"))
    });
    match d {
        Ok(d) => Ok(d.clone()),
        Err(e) => bail!("cannot use the compute device: {e}"),
    }
}

/// Which model file to use: the user's choice, else `MSDM_MODEL` or the bundled default, else a
/// model installed in the plugin's data folder.
pub fn resolve(user_choice: Option<&str>) -> Result<PathBuf> {
    if let Some(p) = user_choice.filter(|p| !p.trim().is_empty()) {
        let p = PathBuf::from(p.trim());
        if !p.is_file() {
            bail!("The chosen model file {} does not exist. Pick another file or clear the field to use the default model.", p.display());
        }
        return Ok(p);
    }
    if let Some(p) = msdm::model_file::bundled_model_path() {
        return Ok(p);
    }
    if let Ok(dir) = crate::cache::data_dir() {
        let p = dir.join("models").join(msdm::model_file::BUNDLED_MODEL_FILE);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "No model found. Choose a model file (.safetensors) in the editor, set MSDM_MODEL, or copy {} into {}.",
        msdm::model_file::BUNDLED_MODEL_FILE,
        crate::cache::data_dir().map(|d| d.join("models").display().to_string()).unwrap_or_else(|_| "the data folder".into())
    )
}

/// The shared model for `path`, loading it if no instance holds it; a load stops (error
/// "cancelled") once `going` returns false.
pub fn shared(path: &Path, going: &dyn Fn() -> bool) -> Result<Arc<Model>> {
    let mut models = MODELS.lock().unwrap_or_else(|e| e.into_inner());
    models.retain(|(_, w)| w.strong_count() > 0);
    if let Some(m) = models.iter().find(|(p, _)| p == path).and_then(|(_, w)| w.upgrade()) {
        return Ok(m);
    }
    let device = device()?;
    let model = Arc::new(
        Model::load_unless(path, &device, going).with_context(|| format!("cannot load the model {}", path.display()))?,
    );
    models.push((path.to_path_buf(), Arc::downgrade(&model)));
    Ok(model)
}
