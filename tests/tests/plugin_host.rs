//! The plugin in a real CLAP host (clack-host), built with allocation checks in `process()`.
//! Each scenario runs in its own process so an abort (an allocation on the audio thread, a
//! panic across the plugin boundary) fails the test.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

struct Fixture {
    lib: PathBuf,
    model: PathBuf,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let lib = msdm_tests::build_alloc_check_plugin().expect("building the plugin");
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("tiny.safetensors");
        msdm_tests::write_tiny_model(&model, 7).expect("writing the tiny model");
        Fixture { lib, model, _dir: dir }
    })
}

fn scenario(name: &str, steps: usize) {
    let f = fixture();
    let cache = tempfile::tempdir().expect("tempdir");
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_plugin-scenario"))
        .arg(name)
        .env("MSDM_PLUGIN_LIB", &f.lib)
        .env("MSDM_MODEL", &f.model)
        .env("MSDM_CACHE_DIR", cache.path().join("cache"))
        .env("MSDM_PLUGIN_STEPS", steps.to_string())
        .env("MSDM_DEVICE", "cpu")
        .output()
        .expect("running the scenario");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}\n[{name}: {:?}]", started.elapsed());
    assert!(out.status.success(), "scenario {name} failed ({}):\n{stdout}\n{stderr}", out.status);
}

#[test]
fn plugin_ports_names_latency() {
    scenario("ports", 2);
}

#[test]
fn plugin_separate_capture_with_loop() {
    scenario("separate", 2);
}

#[test]
fn plugin_impute_given_stems_unchanged() {
    scenario("impute", 2);
}

#[test]
fn plugin_state_reload_and_cache() {
    scenario("state", 2);
}

#[test]
fn plugin_sample_rate_change() {
    scenario("rate_change", 2);
}

#[test]
fn plugin_cancel_mid_processing() {
    scenario("cancel", 2000);
}

#[test]
fn plugin_activate_deactivate_cycles() {
    scenario("cycles", 2);
}

#[test]
fn plugin_offline_bounce_capture_is_complete() {
    scenario("offline", 2);
}

/// 20 cycles of load, render, destroy, unload in one process (the plugin owns and joins every
/// thread it starts).
#[test]
fn plugin_load_render_unload_cycles() {
    scenario("lifecycle", 2);
}
