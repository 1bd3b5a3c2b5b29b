//! Host-level tests of the MSDM Stems plugin: a small CLAP host ([`host`]) loads the plugin
//! library built with nice-plug's `assert_process_allocs` (any allocation in `process()` aborts),
//! and [`scenarios`] drive it like a DAW would. Each scenario runs in its own process
//! (`plugin-scenario <name>`), so an abort fails the test instead of killing the runner.
//!
//! The plugin library: `MSDM_PLUGIN_LIB` if set, else the tests build it themselves with
//! `cargo build -p msdm-plugin --features assert_process_allocs` (debug profile, shared target
//! dir) and copy it to `target/debug/msdm-plugin-alloc-check.so`, so later builds of the plain
//! plugin do not replace it mid-run.

pub mod drive;
pub mod host;
pub mod lifecycle;
pub mod scenarios;
pub mod signal;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

fn lib_file_name() -> &'static str {
    if cfg!(target_os = "windows") {
        "msdm_plugin.dll"
    } else if cfg!(target_os = "macos") {
        "libmsdm_plugin.dylib"
    } else {
        "libmsdm_plugin.so"
    }
}

/// Builds the allocation-checking debug plugin and returns the path of a private copy.
pub fn build_alloc_check_plugin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MSDM_PLUGIN_LIB") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("MSDM_PLUGIN_LIB={} does not exist", p.display());
        }
        return Ok(p);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "-p", "msdm-plugin", "--features", "assert_process_allocs"])
        .status()
        .context("cannot run cargo to build the plugin")?;
    if !status.success() {
        bail!("building the plugin failed ({status})");
    }
    let built = target_dir().join("debug").join(lib_file_name());
    let copy = target_dir().join("debug").join("msdm-plugin-alloc-check.so");
    std::fs::copy(&built, &copy).with_context(|| format!("cannot copy {}", built.display()))?;
    Ok(copy)
}

/// Writes a tiny random model (the engine's `ModelConfig::tiny()`) for tests.
pub fn write_tiny_model(path: &Path, seed: u64) -> Result<()> {
    use msdm::model_file::{Model, StoreDType};
    let model = Model::random(msdm::config::ModelConfig::tiny(), seed, &candle_core::Device::Cpu)?;
    model.save(path, StoreDType::F32)
}
