//! Gradient correctness of the training loss on a tiny model (issue 3, "Training"): every
//! parameter's gradient against (a) the sum of per-sample gradients and (b) central finite
//! differences, in f64; every variable must receive a gradient. The clamp inside D is exercised
//! (some outputs are clamped) so a clamp that leaked gradient would fail (b).

use candle_core::{DType, Device, Tensor, Var};
use msdm::config::ModelConfig;
use msdm::noise::SeededNoise;
use msdm::train::{denoising_loss, LossBatch, NoiseDraw, TrainableNet};
use rand::{Rng, SeedableRng};

const B: usize = 2;

fn batch(cfg: &ModelConfig, dtype: DType) -> LossBatch {
    let t = 2 * cfg.length_multiple();
    let n = B * cfg.in_channels * t;
    // Amplitude 0.6: a few percent of D's outputs exceed ±1 and are clamped.
    let x: Vec<f32> = SeededNoise::new(11).standard_normal(n).iter().map(|v| 0.6 * v).collect();
    let noise = SeededNoise::new(12).standard_normal(n);
    let draw = NoiseDraw { sigmas: vec![0.04, 0.6], noise };
    LossBatch::new(x, cfg.in_channels, draw, dtype, &Device::Cpu).unwrap()
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

fn loss_value(net: &TrainableNet, b: &LossBatch) -> f64 {
    denoising_loss(&net.denoiser, b).unwrap().to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}

/// Gradient of the loss for every variable (panics, naming it, when one is missing).
fn grads(net: &TrainableNet, b: &LossBatch) -> Vec<Vec<f64>> {
    let g = denoising_loss(&net.denoiser, b).unwrap().backward().unwrap();
    net.vars
        .iter()
        .map(|(name, v)| flat(g.get(v.as_tensor()).unwrap_or_else(|| panic!("'{name}' received no gradient"))))
        .collect()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn set_coord(v: &Var, i: usize, value: f64) {
    let mut data = flat(v.as_tensor());
    data[i] = value;
    let t = Tensor::from_vec(data, v.dims(), &Device::Cpu).unwrap().to_dtype(v.dtype()).unwrap();
    v.set(&t).unwrap();
}

#[test]
fn train_gradients_every_parameter_matches_per_sample_sum() {
    let cfg = ModelConfig::tiny();
    for (dtype, tol) in [(DType::F64, 1e-6), (DType::F32, 2e-3)] {
        let net = TrainableNet::random(&cfg, 5, dtype, &Device::Cpu).unwrap();
        let b = batch(&cfg, dtype);
        let full = grads(&net, &b);
        let singles: Vec<Vec<Vec<f64>>> = (0..B).map(|i| grads(&net, &b.narrow(i, 1).unwrap())).collect();
        let global = full.iter().map(|g| max_abs(g)).fold(0.0, f64::max);
        for (k, (name, _)) in net.vars.iter().enumerate() {
            // Some gradients are zero up to rounding by construction (a conv bias right before a
            // GroupNorm with one channel per group), so the scale has a floor.
            let floor = if dtype == DType::F64 { 1e-8 } else { 1e-4 };
            let scale = max_abs(&full[k]).max(floor * global);
            for j in 0..full[k].len() {
                // loss = mean over items, so the batch gradient is the mean of per-item gradients
                let mean = singles.iter().map(|s| s[k][j]).sum::<f64>() / B as f64;
                let d = (full[k][j] - mean).abs();
                assert!(d <= tol * scale, "{dtype:?}: '{name}'[{j}] batch {} vs per-sample mean {mean} (scale {scale})", full[k][j]);
            }
        }
    }
}

#[test]
fn train_gradients_every_parameter_matches_finite_differences() {
    let cfg = ModelConfig::tiny();
    let net = TrainableNet::random(&cfg, 6, DType::F64, &Device::Cpu).unwrap();
    let b = batch(&cfg, DType::F64);

    // The clamp must be active somewhere, or this test would not cover it.
    let s = b.sigmas.reshape((B, 1, 1)).unwrap();
    let noisy = (&b.x + b.noise.broadcast_mul(&s).unwrap()).unwrap();
    let d = net.denoiser.denoise_sigmas(&noisy, &b.sigmas).unwrap();
    let clamped = flat(&d).iter().filter(|v| v.abs() >= 1.0).count();
    assert!(clamped > 0, "no clamped outputs: the test data does not exercise the clamp");

    let g = grads(&net, &b);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let (mut checked, mut strong, mut worst) = (0usize, 0usize, 0.0f64);
    for (k, (name, var)) in net.vars.iter().enumerate() {
        let n = g[k].len();
        let argmax = (0..n).max_by(|&a, &c| g[k][a].abs().total_cmp(&g[k][c].abs())).unwrap();
        let mut coords = vec![argmax];
        coords.extend((0..2).map(|_| rng.random_range(0..n)));
        let theta = flat(var.as_tensor());
        for &i in &coords {
            let h = 1e-3 * theta[i].abs().max(1.0);
            set_coord(var, i, theta[i] + h);
            let up = loss_value(&net, &b);
            set_coord(var, i, theta[i] - h);
            let down = loss_value(&net, &b);
            set_coord(var, i, theta[i]);
            let fd = (up - down) / (2.0 * h);
            let an = g[k][i];
            // f64 everywhere except the attention softmax (ops::attention computes it in f32): its
            // rounding puts up to ~1e-7 of noise on the loss, ~1e-7/h on the difference quotient.
            let err = (fd - an).abs();
            let allowed = 1e-3 * an.abs().max(fd.abs()) + 1e-7 / h;
            assert!(err <= allowed, "'{name}'[{i}]: backward {an:e}, finite difference {fd:e}");
            if an.abs() > 1e-2 {
                worst = worst.max(err / an.abs());
                strong += 1;
            }
            checked += 1;
        }
    }
    eprintln!(
        "checked {checked} coordinates in {} tensors, {strong} with |g| > 1e-2 (worst relative error {worst:e})",
        net.vars.len()
    );
    assert!(checked >= 3 * net.vars.len());
    // Most checks must be far above the absolute slack, or the test would prove little.
    assert!(strong * 2 >= net.vars.len(), "only {strong} coordinates with a sizeable gradient");
}

#[test]
fn train_gradients_f32_agree_with_f64() {
    // The trainer runs in f32: its gradients must be the f64 ones up to rounding.
    let cfg = ModelConfig::tiny();
    let n64 = TrainableNet::random(&cfg, 7, DType::F64, &Device::Cpu).unwrap();
    let n32 = TrainableNet::random(&cfg, 7, DType::F32, &Device::Cpu).unwrap();
    let (g64, g32) = (grads(&n64, &batch(&cfg, DType::F64)), grads(&n32, &batch(&cfg, DType::F32)));
    let global = g64.iter().map(|g| max_abs(g)).fold(0.0, f64::max);
    for (k, (name, _)) in n64.vars.iter().enumerate() {
        let scale = max_abs(&g64[k]).max(1e-4 * global);
        let d = g64[k].iter().zip(&g32[k]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(d <= 1e-2 * scale, "'{name}': f32 gradient differs by {d:e} (scale {scale:e})");
    }
}

#[test]
fn train_gradients_do_not_depend_on_the_thread_count() {
    // Parallel reductions add fixed parts in a fixed order, so a step's gradients, and a whole
    // run, are the same bits on 1, 2 or 3 threads and from run to run (resume bit for bit).
    let cfg = ModelConfig { channels: 16, ..ModelConfig::tiny() };
    let net = TrainableNet::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    let t = 4 * cfg.length_multiple();
    let n = 3 * cfg.in_channels * t;
    let x: Vec<f32> = SeededNoise::new(21).standard_normal(n).iter().map(|v| 0.5 * v).collect();
    let draw = NoiseDraw { sigmas: vec![0.1, 0.5, 2.0], noise: SeededNoise::new(22).standard_normal(n) };
    let b = LossBatch::new(x, cfg.in_channels, draw, DType::F32, &Device::Cpu).unwrap();
    let bits = |threads: usize| -> Vec<Vec<u32>> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let g = denoising_loss(&net.denoiser, &b).unwrap().backward().unwrap();
            net.vars.iter().map(|(_, v)| g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()).collect()
        })
    };
    let one = bits(1);
    for threads in [2, 3, 3] {
        let other = bits(threads);
        for (k, (name, _)) in net.vars.iter().enumerate() {
            assert!(one[k] == other[k], "'{name}': the gradient on {threads} threads differs from the one on 1 thread");
        }
    }
}
