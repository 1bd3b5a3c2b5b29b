//! Parity with the reference on a GPU: the parity fixtures (see `parity.rs`) replayed on the
//! device named by `MSDM_TEST_DEVICE` (`cuda`, `metal`, or `cpu`), with the network in f32 and in
//! f16/bf16. Without `MSDM_TEST_DEVICE` the test says so and does nothing (CI has no GPU).
//!
//! Tolerances: f32 as on the CPU (denoiser 1e-4, samplers 1e-3); half precisions: denoiser and
//! samplers `MSDM_TEST_HALF_TOL` (default 1e-2 for f16, 1e-1 for bf16: bf16 keeps 8 significant
//! bits, and an H100 measured up to 4e-2 on these fixtures; see docs/gpu.md). Every measured error
//! is printed (`--nocapture`).
//!
//! Fixtures: `tests/fixtures/parity/` as seen from the source tree at build time, and every folder
//! under `MSDM_PARITY_DIR` (use it when the test binary runs from another checkout).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
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
    let mut dirs: Vec<PathBuf> = roots
        .iter()
        .filter_map(|r| std::fs::read_dir(r).ok())
        .flat_map(|e| e.flatten().map(|e| e.path()))
        .filter(|p| p.join("cases.safetensors").exists())
        .map(|p| p.canonicalize().unwrap_or(p))
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

struct Fixture {
    name: String,
    config: msdm::config::ModelConfig,
    tensors: HashMap<String, Tensor>,
    cases: HashMap<String, Tensor>,
    params: serde_json::Value,
}

fn load(dir: &Path) -> Fixture {
    let ck = msdm::import::read_lightning_checkpoint(&dir.join("model.ckpt"))
        .unwrap_or_else(|e| panic!("{}: import failed: {e:#}", dir.display()));
    let tensors = ck
        .tensors
        .into_iter()
        .map(|(n, shape, data)| (n, Tensor::from_vec(data, shape, &Device::Cpu).unwrap()))
        .collect();
    let cases = candle_core::safetensors::load(dir.join("cases.safetensors"), &Device::Cpu).unwrap();
    let params = serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    Fixture { name: dir.file_name().unwrap().to_string_lossy().into(), config: ck.config, tensors, cases, params }
}

/// The fixture's model on `device` with its network in `dtype`.
fn model_on(fx: &Fixture, device: &Device, dtype: DType) -> Model {
    let tensors = fx.tensors.iter().map(|(n, t)| (n.clone(), t.to_device(device).unwrap())).collect();
    let meta = ModelMeta { window: Model::default_window(&fx.config), stems: fx.config.default_stems(), info: serde_json::Value::Null };
    let model = Model::from_tensors(fx.config.clone(), meta, tensors).unwrap();
    if dtype == DType::F32 {
        model
    } else {
        model.to_dtype(dtype).unwrap()
    }
}

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
    let d = (a - b.to_device(&Device::Cpu).unwrap().to_dtype(DType::F32).unwrap()).unwrap().abs().unwrap().flatten_all().unwrap();
    let m: f32 = d.max(0).unwrap().to_scalar().unwrap();
    assert!(m.is_finite(), "non-finite output");
    m
}

fn f32_of(v: &serde_json::Value, key: &str) -> f32 {
    v.get(key).and_then(|x| x.as_f64()).unwrap_or_else(|| panic!("cases.json lacks {key}")) as f32
}

fn sampler_config(fx: &Fixture, case: &str) -> SamplerConfig {
    let sigmas: Vec<f32> = fx.cases[&format!("{case}.sigmas")].to_vec1().unwrap();
    let p = &fx.params[case];
    SamplerConfig { sigmas, churn: f32_of(p, "s_churn"), resamples: f32_of(p, "num_resamples") as usize, guidance: 0.0, guidance_interval: None, guidance_rescale: 0.0 }
}

fn noise(fx: &Fixture, case: &str) -> (RecordedNoise, [usize; 3]) {
    let t = &fx.cases[&format!("{case}.noises")];
    let dims = t.dims().to_vec();
    let shape = [dims[1], dims[2], dims[3]];
    (RecordedNoise::new(t.flatten_all().unwrap().to_vec1().unwrap(), shape.iter().product()).unwrap(), shape)
}

/// Max abs error of every case of one fixture on `device` in `dtype`: (case, error, tolerance).
fn errors(fx: &Fixture, device: &Device, dtype: DType, half_tol: f32) -> Vec<(String, f32, f32)> {
    let model = model_on(fx, device, dtype);
    let d = &model.denoiser;
    let (tol_d, tol_s) = if dtype == DType::F32 { (1e-4, 1e-3) } else { (half_tol, half_tol) };
    let mut out = Vec::new();
    let x = fx.cases["denoise.x"].to_device(device).unwrap();
    let sigmas: Vec<f32> = fx.cases["denoise.sigmas"].to_vec1().unwrap();
    for (k, &s) in sigmas.iter().enumerate() {
        let ours = d.denoise(&x, s).unwrap();
        out.push((format!("denoise σ={s}"), max_abs(&ours, &fx.cases["denoise.out"].get(k).unwrap()), tol_d));
    }
    let mut run = |case: &str, f: &dyn Fn(&SamplerConfig, &mut RecordedNoise, [usize; 3]) -> Tensor| {
        if !fx.cases.contains_key(&format!("{case}.out")) {
            return;
        }
        let cfg = sampler_config(fx, case);
        let (mut rec, shape) = noise(fx, case);
        let ours = f(&cfg, &mut rec, shape);
        assert_eq!(rec.consumed(), rec.len(), "{} {case}: used {} of {} recorded draws", fx.name, rec.consumed(), rec.len());
        out.push((case.to_string(), max_abs(&ours, &fx.cases[&format!("{case}.out")]), tol_s));
    };
    let on = |name: &str| fx.cases[name].to_device(device).unwrap();
    run("separate_dirac", &|cfg, rec, _| {
        let c = f32_of(&fx.params["separate_dirac"], "source_id") as usize;
        separate(d, &on("separate_dirac.mixture"), Likelihood::Dirac { constrained: c }, cfg, rec, &mut |_, _| true).unwrap()
    });
    run("separate_gaussian", &|cfg, rec, _| {
        let g = f32_of(&fx.params["separate_gaussian"], "gamma_coeff");
        separate(d, &on("separate_gaussian.mixture"), Likelihood::Gaussian { gamma_coeff: g }, cfg, rec, &mut |_, _| true).unwrap()
    });
    run("impute", &|cfg, rec, shape| {
        let mask = on("impute.mask").reshape((1, shape[1], 1)).unwrap();
        let source = on("impute.source");
        sample(d, shape, device, cfg, &Posterior::Impute { source: &source, mask: &mask }, rec, &mut |_, _| true).unwrap()
    });
    run("generate", &|cfg, rec, shape| sample(d, shape, device, cfg, &Posterior::Prior, rec, &mut |_, _| true).unwrap());
    out
}

/// The GPU tests take turns: a CUDA graph capture in one test thread must not see another
/// thread's module loads or allocations (one process runs one inference thread in the product).
static GPU: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The CUDA-only tests' common start: waits for this test's turn on the GPU and opens the CUDA
/// device, or says the test is skipped (`what`) and gives `None` when `MSDM_TEST_DEVICE` is not `cuda`.
fn cuda_turn(what: &str) -> Option<(std::sync::MutexGuard<'static, ()>, Device)> {
    let turn = GPU.lock().unwrap_or_else(|e| e.into_inner());
    if std::env::var("MSDM_TEST_DEVICE").as_deref() != Ok("cuda") {
        eprintln!("gpu_parity: MSDM_TEST_DEVICE is not cuda; {what} test skipped");
        return None;
    }
    Some((turn, msdm::device::select("cuda").unwrap()))
}

#[test]
fn parity_fixtures_on_the_test_device() {
    let _turn = GPU.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(spec) = std::env::var("MSDM_TEST_DEVICE") else {
        eprintln!("gpu_parity: MSDM_TEST_DEVICE is not set (cuda|metal|cpu); skipped");
        return;
    };
    let device = msdm::device::select(&spec).unwrap_or_else(|e| panic!("MSDM_TEST_DEVICE={spec}: {e:#}"));
    let dirs = fixture_dirs();
    assert!(!dirs.is_empty(), "no parity fixtures found (set MSDM_PARITY_DIR to tests/fixtures/parity)");
    let half_tol = |dt: DType| -> f32 {
        std::env::var("MSDM_TEST_HALF_TOL").ok().and_then(|v| v.parse().ok()).unwrap_or(if dt == DType::BF16 { 1e-1 } else { 1e-2 })
    };
    let mut failures = Vec::new();
    for dir in &dirs {
        let fx = load(dir);
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            for (case, err, tol) in errors(&fx, &device, dtype, half_tol(dtype)) {
                let ok = err <= tol;
                eprintln!("gpu_parity {spec} {:?} {} {case}: max abs error {err:.2e} (tolerance {tol:.0e}){}", dtype, fx.name, if ok { "" } else { "  FAIL" });
                if !ok {
                    failures.push(format!("{:?} {} {case}: {err:.2e} > {tol:.0e}", dtype, fx.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "errors above tolerance on {spec}:\n{}", failures.join("\n"));
}

/// On CUDA the network's calls are replayed from captured graphs (engine/src/graph.rs): replays
/// with new inputs, at several σ and two batch shapes, must give what eager calls give.
#[test]
fn cuda_graph_replays_match_eager_calls() {
    let Some((_turn, device)) = cuda_turn("graph") else { return };
    let fx = load(&fixture_dirs()[0]);
    for dtype in [DType::F32, DType::BF16] {
        let graphed = model_on(&fx, &device, dtype);
        let eager = model_on(&fx, &device, dtype);
        eager.denoiser.graphs.disable();
        let x = fx.cases["denoise.x"].to_device(&device).unwrap();
        let x2 = Tensor::cat(&[&x, &(&x * -0.5).unwrap()], 0).unwrap();
        let mut worst = 0f32;
        for (input, sigma) in [(&x, 0.3f32), (&x, 2.0), (&x2, 0.05), (&x, 0.3), (&x2, 7.0), (&x, 0.01)] {
            let a = graphed.denoiser.denoise(input, sigma).unwrap();
            let b = eager.denoiser.denoise(input, sigma).unwrap();
            worst = worst.max(max_abs(&a, &b));
        }
        eprintln!("gpu_parity cuda {dtype:?}: graphs held {}, max abs difference graph vs eager {worst:.2e}", graphed.denoiser.graphs.held());
        assert_eq!(graphed.denoiser.graphs.held(), 2, "one graph per batch shape");
        assert_eq!(eager.denoiser.graphs.held(), 0);
        assert!(worst <= 1e-6, "{dtype:?}: graph replays differ from eager calls by {worst:.2e}");
    }
}

/// The fused CUDA kernels (engine/src/ops/cuda.rs) against the CPU ops: GroupNorm with and
/// without scale/shift (one and several partial sums per group), and convolutions whose columns
/// come from the im2col kernel (stride 1 and strided, with padding).
#[test]
fn cuda_fused_ops_match_the_cpu() {
    let Some((_turn, device)) = cuda_turn("fused-op") else { return };
    use msdm::ops;
    let rand = |shape: &[usize], seed: u64| -> Tensor {
        let n = shape.iter().product();
        Tensor::from_vec(msdm::noise::SeededNoise::new(seed).standard_normal(n), shape, &Device::Cpu).unwrap()
    };
    let mut failures = Vec::new();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        // half types: 2% of the largest output (inputs rounded to 8 or 11 bits)
        let tol_of = |reference: &Tensor| -> f32 {
            let top: f32 = reference.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap();
            if dtype == DType::F32 { 1e-4 * top.max(1.0) } else { 2e-2 * top }
        };
        let on = |t: &Tensor| t.to_device(&device).unwrap().to_dtype(dtype).unwrap();
        // shapes: [B, C, L], groups; n = C/G·L from 60 (one partial) to 65,536 (eight)
        for (b, c, l, g) in [(2, 8, 15, 2), (1, 32, 16384, 8), (3, 16, 1000, 4)] {
            let x = rand(&[b, c, l], 1).affine(3.0, 0.5).unwrap();
            let (w, bias) = (rand(&[c], 2), rand(&[c], 3));
            let (scale, shift) = (rand(&[b, c, 1], 4), rand(&[b, c, 1], 5));
            for ss in [None, Some((&scale, &shift))] {
                let cpu = ops::group_norm_scale_shift_silu(&x, g, &w, &bias, ss).unwrap();
                let (sc, sh) = (on(&scale), on(&shift));
                let gpu = ops::group_norm_scale_shift_silu(&on(&x), g, &on(&w), &on(&bias), ss.map(|_| (&sc, &sh))).unwrap();
                let (err, tol) = (max_abs(&gpu, &cpu), tol_of(&cpu));
                eprintln!("gpu_parity cuda {dtype:?} group norm {b}x{c}x{l} g{g} scale/shift {}: {err:.2e} (tolerance {tol:.1e})", ss.is_some());
                if err > tol {
                    failures.push(format!("{dtype:?} group norm {b}x{c}x{l}: {err:.2e}"));
                }
            }
        }
        for (b, c, l) in [(2, 64, 50), (1, 32, 1024), (1, 1024, 33)] {
            let x = rand(&[b, c, l], 9).affine(2.0, -1.0).unwrap();
            for (dim, gains) in [(candle_core::D::Minus2, rand(&[1, c, 1], 10)), (candle_core::D::Minus1, rand(&[l], 11))] {
                let cpu = ops::layer_norm_no_bias(&x, &gains, dim).unwrap();
                let gpu = ops::layer_norm_no_bias(&on(&x), &on(&gains), dim).unwrap();
                let (err, tol) = (max_abs(&gpu, &cpu), tol_of(&cpu));
                eprintln!("gpu_parity cuda {dtype:?} layer norm {b}x{c}x{l} over {dim:?}: {err:.2e} (tolerance {tol:.1e})");
                if err > tol {
                    failures.push(format!("{dtype:?} layer norm {b}x{c}x{l} {dim:?}: {err:.2e}"));
                }
            }
        }
        {
            let (x, skip) = (rand(&[2, 6, 300], 15), rand(&[2, 4, 300], 16));
            let cpu = ops::cat_scaled(&x, &skip, std::f64::consts::FRAC_1_SQRT_2).unwrap();
            let gpu = ops::cat_scaled(&on(&x), &on(&skip), std::f64::consts::FRAC_1_SQRT_2).unwrap();
            let (err, tol) = (max_abs(&gpu, &cpu), tol_of(&cpu));
            eprintln!("gpu_parity cuda {dtype:?} scaled skip concatenation: {err:.2e} (tolerance {tol:.1e})");
            if err > tol {
                failures.push(format!("{dtype:?} cat_scaled: {err:.2e}"));
            }
        }
        {
            let (q, k, v) = (rand(&[1, 40, 64], 12), rand(&[1, 40, 64], 13), rand(&[1, 40, 64], 14));
            let cpu = ops::attention(&q, &k, &v, 4).unwrap();
            let gpu = ops::attention(&on(&q), &on(&k), &on(&v), 4).unwrap();
            let (err, tol) = (max_abs(&gpu, &cpu), tol_of(&cpu));
            eprintln!("gpu_parity cuda {dtype:?} attention: {err:.2e} (tolerance {tol:.1e})");
            if err > tol {
                failures.push(format!("{dtype:?} attention: {err:.2e}"));
            }
        }
        for (k, s, p, l) in [(3, 1, 1, 100), (1, 1, 0, 64), (9, 4, 4, 256), (5, 2, 2, 38)] {
            let x = rand(&[2, 6, l], 6);
            let (w, bias) = ((rand(&[5, 6, k], 7) * 0.3).unwrap(), rand(&[5], 8));
            let cpu = ops::Conv1d { weight: w.clone(), bias: Some(bias.clone()), stride: s, padding: p }.forward(&x).unwrap();
            let gpu = ops::Conv1d { weight: on(&w), bias: Some(on(&bias)), stride: s, padding: p }.forward(&on(&x)).unwrap();
            let (err, tol) = (max_abs(&gpu, &cpu), tol_of(&cpu));
            eprintln!("gpu_parity cuda {dtype:?} conv k{k} s{s} p{p} L{l}: {err:.2e} (tolerance {tol:.1e})");
            if err > tol {
                failures.push(format!("{dtype:?} conv k{k} s{s} p{p}: {err:.2e}"));
            }
        }
    }
    assert!(failures.is_empty(), "fused CUDA ops differ from the CPU:\n{}", failures.join("\n"));
}

/// Noise drawn on the GPU (`DeviceNoise`): items with equal seeds get equal draws (the channels of
/// a stereo generation share their noise, as on the CPU), other items differ, and the same seeds
/// give the same draws again.
#[test]
fn cuda_device_noise_follows_item_seeds() {
    let Some((_turn, device)) = cuda_turn("device-noise") else { return };
    let draw = || -> Vec<Vec<Vec<f32>>> {
        let mut noise = msdm::noise::DeviceNoise::for_items(&device, &[5, 5, 7]).unwrap();
        noise.draw_tensor(&[3, 2, 1001], &device).unwrap().to_device(&Device::Cpu).unwrap().to_vec3().unwrap()
    };
    let (a, b) = (draw(), draw());
    assert_eq!(a, b, "the same seeds must give the same draws");
    assert_eq!(a[0], a[1], "items with equal seeds must get equal noise");
    assert_ne!(a[0], a[2], "items with other seeds must get other noise");
    let all: Vec<f32> = a.iter().flatten().flatten().copied().collect();
    let mean = all.iter().sum::<f32>() / all.len() as f32;
    let var = all.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / all.len() as f32;
    eprintln!("gpu_parity cuda device noise: mean {mean:.3}, variance {var:.3}");
    assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.15, "not standard normal: mean {mean}, variance {var}");
}
