//! Parity with the reference PyTorch implementation (audio-diffusion-pytorch 0.0.43 + the
//! authors' samplers), on fixtures made by `tools/parity/make_fixtures.py`.
//!
//! Runs on every directory under `tests/fixtures/parity/` and, when `MSDM_PARITY_DIR` is set, on
//! every directory under it. Each fixture's `model.ckpt` is imported with our Lightning importer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use msdm::denoiser::Denoiser;
use msdm::model_file::{Model, ModelMeta};
use msdm::noise::RecordedNoise;
use msdm::sampler::{sample, Posterior, SamplerConfig};
use msdm::separator::{separate, Likelihood};

fn fixture_dirs() -> Vec<PathBuf> {
    let mut roots = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parity")];
    if let Some(extra) = std::env::var_os("MSDM_PARITY_DIR") {
        roots.extend(std::env::split_paths(&extra));
    }
    let mut dirs = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else { continue };
        for e in entries.flatten() {
            if e.path().join("cases.safetensors").exists() {
                dirs.push(e.path());
            }
        }
    }
    dirs.sort();
    dirs
}

struct Fixture {
    name: String,
    model: Model,
    cases: HashMap<String, Tensor>,
    params: serde_json::Value,
}

fn load(dir: &Path) -> Fixture {
    let ck = msdm::import::read_lightning_checkpoint(&dir.join("model.ckpt"))
        .unwrap_or_else(|e| panic!("{}: import failed: {e:#}", dir.display()));
    let cfg_json = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let cfg = msdm::config::ModelConfig::from_json(&cfg_json).unwrap();
    assert_eq!(ck.config, { let mut c = cfg.clone(); c.kernel_sizes_init = ck.config.kernel_sizes_init.clone(); c.learning_rate = ck.config.learning_rate; c.beta1 = ck.config.beta1; c.beta2 = ck.config.beta2; c }, "{}: imported config differs from config.json", dir.display());
    let tensors = ck
        .tensors
        .into_iter()
        .map(|(n, shape, data)| (n, Tensor::from_vec(data, shape, &Device::Cpu).unwrap()))
        .collect();
    let meta = ModelMeta { window: Model::default_window(&cfg), stems: cfg.default_stems(), info: serde_json::Value::Null };
    let model = Model::from_tensors(ck.config, meta, tensors).unwrap();
    let cases = candle_core::safetensors::load(dir.join("cases.safetensors"), &Device::Cpu).unwrap();
    let params = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    Fixture { name: dir.file_name().unwrap().to_string_lossy().into(), model, cases, params }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
}

fn f32_of(v: &serde_json::Value, key: &str) -> f32 {
    v.get(key).and_then(|x| x.as_f64()).unwrap_or_else(|| panic!("cases.json lacks {key}")) as f32
}

fn sampler_config(fx: &Fixture, case: &str) -> SamplerConfig {
    let sigmas: Vec<f32> = fx.cases[&format!("{case}.sigmas")].to_vec1().unwrap();
    let p = &fx.params[case];
    // Our Karras schedule must reproduce the reference's.
    let n = sigmas.len() - 1;
    let rho = p.get("rho").and_then(|r| r.as_f64()).unwrap_or(7.0) as f32;
    let ours = msdm::schedule::karras(n, sigmas[n - 1], sigmas[0], rho);
    for (a, b) in ours.iter().zip(&sigmas) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "{} {case}: schedule {a} vs reference {b}", fx.name);
    }
    SamplerConfig { sigmas, churn: f32_of(p, "s_churn"), resamples: f32_of(p, "num_resamples") as usize, guidance: 0.0, guidance_interval: None, guidance_rescale: 0.0 }
}

fn noise(fx: &Fixture, case: &str) -> (RecordedNoise, [usize; 3]) {
    let t = &fx.cases[&format!("{case}.noises")];
    let dims = t.dims().to_vec();
    let shape = [dims[1], dims[2], dims[3]];
    let n = shape.iter().product();
    (RecordedNoise::new(t.flatten_all().unwrap().to_vec1().unwrap(), n).unwrap(), shape)
}

#[test]
fn parity_fixtures_exist() {
    assert!(fixture_dirs().len() >= 2, "expected at least two parity fixtures under tests/fixtures/parity");
}

#[test]
fn denoiser_matches_reference() {
    for dir in fixture_dirs() {
        let fx = load(&dir);
        let x = &fx.cases["denoise.x"];
        let sigmas: Vec<f32> = fx.cases["denoise.sigmas"].to_vec1().unwrap();
        let out = &fx.cases["denoise.out"];
        for (k, &s) in sigmas.iter().enumerate() {
            let ours = fx.model.denoiser.denoise(x, s).unwrap();
            let err = max_abs(&ours, &out.get(k).unwrap());
            assert!(err <= 1e-4, "{}: D(x, σ={s}) max abs error {err}", fx.name);
        }
    }
}

fn check_sampler(fx: &Fixture, case: &str, run: impl FnOnce(&SamplerConfig, &mut RecordedNoise, [usize; 3]) -> Tensor) {
    if !fx.cases.contains_key(&format!("{case}.out")) {
        eprintln!("{}: no {case} case, skipped", fx.name);
        return;
    }
    let cfg = sampler_config(fx, case);
    let (mut rec, shape) = noise(fx, case);
    let ours = run(&cfg, &mut rec, shape);
    assert_eq!(rec.consumed(), rec.len(), "{} {case}: used {} of {} recorded draws", fx.name, rec.consumed(), rec.len());
    let err = max_abs(&ours, &fx.cases[&format!("{case}.out")]);
    assert!(err <= 1e-3, "{} {case}: max abs error {err}", fx.name);
    eprintln!("{} {case}: max abs error {err:.2e}", fx.name);
}

#[test]
fn samplers_match_reference() {
    let mut ran = 0;
    for dir in fixture_dirs() {
        let fx = load(&dir);
        let d = &fx.model.denoiser;
        check_sampler(&fx, "separate_dirac", |cfg, rec, _| {
            let c = f32_of(&fx.params["separate_dirac"], "source_id") as usize;
            separate(d, &fx.cases["separate_dirac.mixture"], Likelihood::Dirac { constrained: c }, cfg, rec, &mut |_, _| true).unwrap()
        });
        check_sampler(&fx, "separate_gaussian", |cfg, rec, _| {
            let g = f32_of(&fx.params["separate_gaussian"], "gamma_coeff");
            separate(d, &fx.cases["separate_gaussian.mixture"], Likelihood::Gaussian { gamma_coeff: g }, cfg, rec, &mut |_, _| true)
                .unwrap()
        });
        check_sampler(&fx, "impute", |cfg, rec, shape| {
            let mask = fx.cases["impute.mask"].reshape((1, shape[1], 1)).unwrap();
            let source = &fx.cases["impute.source"];
            sample(d, shape, &Device::Cpu, cfg, &Posterior::Impute { source, mask: &mask }, rec, &mut |_, _| true).unwrap()
        });
        check_sampler(&fx, "generate", |cfg, rec, shape| {
            sample(d, shape, &Device::Cpu, cfg, &Posterior::Prior, rec, &mut |_, _| true).unwrap()
        });
        ran += 1;
    }
    assert!(ran >= 2);
}

#[test]
fn import_round_trip_through_our_model_file() {
    let dir = fixture_dirs().into_iter().next().expect("a fixture");
    let fx = load(&dir);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.safetensors");
    fx.model.save(&path, msdm::model_file::StoreDType::F32).unwrap();
    let back = Model::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.id(), fx.model.id());
    let x = &fx.cases["denoise.x"];
    let a = fx.model.denoiser.denoise(x, 0.3).unwrap();
    let b = back.denoiser.denoise(x, 0.3).unwrap();
    assert_eq!(max_abs(&a, &b), 0.0);
}

#[test]
fn isdm_composes_single_stem_denoisers_in_stem_order() {
    let dir = fixture_dirs().into_iter().find(|d| d.ends_with("isdm_tiny1")).expect("the 1-stem fixture");
    let one = || load(&dir).model;
    let single = one();
    let isdm = Model::isdm(vec![one(), one(), one(), one()]).unwrap();
    assert_eq!(isdm.num_stems(), 4);
    assert_eq!(isdm.meta.stems, vec!["bass", "drums", "guitar", "piano"]);
    let x1 = &load(&dir).cases["denoise.x"]; // [B, 1, T]
    let x = Tensor::cat(&[x1, &(x1 * 0.5).unwrap(), &(x1 * -1.0).unwrap(), &(x1 * 2.0).unwrap()], 1).unwrap();
    let d = isdm.stems_denoiser().denoise(&x, 0.2).unwrap();
    for n in 0..4 {
        let want = single.denoiser.denoise(&x.narrow(1, n, 1).unwrap(), 0.2).unwrap();
        assert_eq!(max_abs(&d.narrow(1, n, 1).unwrap(), &want), 0.0, "stem {n}");
    }
    // ISDM needs one-stem models
    let four = load(&fixture_dirs().into_iter().find(|d| d.ends_with("msdm_tiny4")).unwrap()).model;
    assert!(Model::isdm(vec![four, one()]).is_err());

    // The same model named as a list of files (`--model a,b,c,d` in every shell).
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("one.safetensors");
    single.save(&path, msdm::model_file::StoreDType::F32).unwrap();
    let p = path.display().to_string();
    let listed = Model::load_spec(Path::new(&[p.as_str(); 4].join(",")), &Device::Cpu).unwrap();
    assert_eq!((listed.meta.stems.clone(), listed.id()), (isdm.meta.stems.clone(), isdm.id()));
    assert_eq!(max_abs(&listed.stems_denoiser().denoise(&x, 0.2).unwrap(), &d), 0.0);
    let err = |spec: String| format!("{:#}", Model::load_spec(Path::new(&spec), &Device::Cpu).err().expect("refused"));
    let empty = err(format!("{p},,{p},{p}"));
    assert!(empty.contains("empty entry 2"), "{empty}");
    let missing = err(format!("{p},{p},nope.safetensors,{p}"));
    assert!(missing.contains("ISDM stem model 3") && missing.contains("nope.safetensors"), "{missing}");
}
