//! Per-stem noise levels (issue 15): preconditioning per stem against a hand computation, the
//! zero-initialised stem embedding leaving a reference-style model unchanged, the clean-given
//! sampler keeping the given stems bit-exact (and showing them to the network clean), and the
//! per-stem training loss: fused against composite, gradients reaching the new weights.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use msdm::config::ModelConfig;
use msdm::denoiser::{edm_coefficients, Denoiser};
use msdm::model_file::Model;
use msdm::noise::SeededNoise;
use msdm::sampler::{sample, Posterior, SamplerConfig};
use msdm::schedule::karras;
use msdm::train::{denoising_loss, item_losses, item_losses_composite, LossBatch, StemNoiseDraw, StemTask, TrainableNet};
use msdm::unet::stem_embedding::stem_c_noise;

fn per_stem() -> ModelConfig {
    ModelConfig { stem_sigmas: true, ..ModelConfig::tiny() }
}

fn rand(seed: u64, shape: (usize, usize, usize), scale: f32) -> Tensor {
    let v: Vec<f32> = SeededNoise::new(seed).standard_normal(shape.0 * shape.1 * shape.2).iter().map(|x| x * scale).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// A per-stem model whose stem embedding is not zero (as after training), so the per-stem levels
/// change the output.
fn trained_like() -> Model {
    let m = Model::random(per_stem(), 5, &Device::Cpu).unwrap();
    let mut tensors: HashMap<String, Tensor> = m.tensors().iter().cloned().collect();
    let w = tensors["stem_sigmas.to_features.weight"].clone();
    tensors.insert("stem_sigmas.to_features.weight".into(), rand(9, (1, w.dim(0).unwrap(), w.dim(1).unwrap()), 0.3).squeeze(0).unwrap());
    Model::from_tensors(m.config.clone(), m.meta.clone(), tensors).unwrap()
}

#[test]
fn per_stem_preconditioning_matches_a_hand_computation() {
    let m = trained_like();
    let t = m.config.length_multiple() * 2;
    let x = rand(1, (2, 4, t), 0.4);
    let sigmas = [0.0f32, 0.05, 0.7, 3.0];
    let d = m.denoiser.denoise_stems(&x, &sigmas).unwrap();
    // by hand: c_in per stem, the network at the largest σ's c_noise and the per-stem c_noise
    let sd = m.config.diffusion_sigma_data as f32;
    let k: Vec<_> = sigmas.iter().map(|&s| edm_coefficients(s, sd)).collect();
    let xs = values(&x);
    let scaled: Vec<f32> = xs.iter().enumerate().map(|(i, v)| v * k[(i / t) % 4].2).collect();
    let c_noise = Tensor::full(edm_coefficients(3.0, sd).3, 2, &Device::Cpu).unwrap();
    let stem: Vec<f32> = (0..2).flat_map(|_| sigmas.iter().map(|&s| stem_c_noise(s))).collect();
    let stem = Tensor::from_vec(stem, (2, 4), &Device::Cpu).unwrap();
    let f = m.denoiser.net.forward_stems(&Tensor::from_vec(scaled, (2, 4, t), &Device::Cpu).unwrap(), &c_noise, Some(&stem)).unwrap();
    let fs = values(&f);
    let ds = values(&d);
    for i in 0..xs.len() {
        let c = (i / t) % 4;
        let want = (k[c].0 * xs[i] + k[c].1 * fs[i]).clamp(-1.0, 1.0);
        assert!((ds[i] - want).abs() <= 1e-6, "element {i} (stem {c}): {} vs {want}", ds[i]);
    }
    // the clean stem comes back unchanged
    assert_eq!(values(&d.narrow(1, 0, 1).unwrap()), values(&x.narrow(1, 0, 1).unwrap().clamp(-1f32, 1f32).unwrap()));
    // the per-stem levels matter: the same largest σ with other levels gives another output
    let other = m.denoiser.denoise_stems(&x, &[0.7, 0.05, 0.0, 3.0]).unwrap();
    let diff = (other.narrow(1, 3, 1).unwrap() - d.narrow(1, 3, 1).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() > 1e-4);
    // a reference model refuses unequal levels, with a clear message
    let reference = Model::random(ModelConfig::tiny(), 5, &Device::Cpu).unwrap();
    let err = reference.denoiser.denoise_stems(&x, &sigmas).unwrap_err().to_string();
    assert!(err.contains("one noise level for all stems"), "{err}");
}

#[test]
fn a_zero_stem_embedding_leaves_the_reference_network_bit_for_bit() {
    let reference = Model::random(ModelConfig::tiny(), 7, &Device::Cpu).unwrap();
    // the reference weights plus a fresh (zero-initialised) stem embedding, as `train --init` does
    let fresh = Model::random(per_stem(), 8, &Device::Cpu).unwrap();
    let mut tensors: HashMap<String, Tensor> = reference.tensors().iter().cloned().collect();
    let added: Vec<_> = fresh.tensors().iter().filter(|(n, _)| n.starts_with("stem_sigmas.")).cloned().collect();
    assert_eq!(added.len(), 3);
    assert!(added.iter().any(|(n, t)| n.ends_with("frequencies") && t.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0));
    tensors.extend(added);
    let stems = Model::from_tensors(per_stem(), reference.meta.clone(), tensors).unwrap();
    assert!(stems.denoiser.takes_stem_sigmas() && !reference.denoiser.takes_stem_sigmas());
    let x = rand(2, (2, 4, reference.config.length_multiple() * 3), 0.5);
    for sigma in [1e-3f32, 0.2, 5.0] {
        let a = values(&reference.denoiser.denoise(&x, sigma).unwrap());
        let b = values(&stems.denoiser.denoise(&x, sigma).unwrap());
        assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()), "σ {sigma}: outputs differ");
    }
    // reference configs and model ids are untouched by the new fields
    assert!(!ModelConfig::small().to_json().contains("stem_sigmas"));
    assert!(per_stem().to_json().contains("\"stem_sigmas\":true"));
}

/// Records what the sampler hands the denoiser.
struct Spy<'a> {
    inner: &'a dyn Denoiser,
    calls: RefCell<Vec<(Vec<f32>, Tensor)>>,
}

impl Denoiser for Spy<'_> {
    fn channels(&self) -> usize {
        self.inner.channels()
    }
    fn length_multiple(&self) -> usize {
        self.inner.length_multiple()
    }
    fn denoise(&self, x: &Tensor, sigma: f32) -> candle_core::Result<Tensor> {
        self.denoise_stems(x, &[sigma; 4])
    }
    fn takes_stem_sigmas(&self) -> bool {
        self.inner.takes_stem_sigmas()
    }
    fn denoise_stems(&self, x: &Tensor, sigmas: &[f32]) -> candle_core::Result<Tensor> {
        self.calls.borrow_mut().push((sigmas.to_vec(), x.clone()));
        self.inner.denoise_stems(x, sigmas)
    }
}

#[test]
fn imputation_with_a_per_stem_model_keeps_the_given_stems_clean_and_bit_exact() {
    let m = trained_like();
    let t = m.config.length_multiple() * 2;
    let source = rand(3, (1, 4, t), 0.3);
    let mask = Tensor::from_vec(vec![0f32, 1.0, 1.0, 0.0], (1, 4, 1), &Device::Cpu).unwrap();
    let spy = Spy { inner: &m.denoiser, calls: RefCell::new(vec![]) };
    let config = SamplerConfig { sigmas: karras(6, 1e-3, 5.0, 7.0), churn: 1.0, resamples: 2, guidance: 0.0, guidance_interval: None, guidance_rescale: 0.0 };
    let mut noise = msdm::noise::ItemNoise::new(&[4]);
    let out = sample(&spy, [1, 4, t], &Device::Cpu, &config, &Posterior::Impute { source: &source, mask: &mask }, &mut noise, &mut |_, _| true).unwrap();
    for c in [1, 2] {
        assert_eq!(values(&out.narrow(1, c, 1).unwrap()), values(&source.narrow(1, c, 1).unwrap()), "given stem {c} changed");
    }
    let calls = spy.calls.borrow();
    assert_eq!(calls.len(), config.calls());
    for (sigmas, x) in calls.iter() {
        assert_eq!((sigmas[1], sigmas[2]), (0.0, 0.0), "given stems must be at σ = 0: {sigmas:?}");
        assert!(sigmas[0] > 0.0 && sigmas[0] == sigmas[3]);
        for c in [1, 2] {
            assert_eq!(values(&x.narrow(1, c, 1).unwrap()), values(&source.narrow(1, c, 1).unwrap()), "the network saw a noisy given stem");
        }
    }
    // the generated stems were generated (not left at the source or at zero)
    let gen = out.narrow(1, 0, 1).unwrap().abs().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(gen > 1e-3, "{gen}");
    // a reference model keeps the reference's re-noised inpainting: its network sees noisy given stems
    let reference = Model::random(ModelConfig::tiny(), 5, &Device::Cpu).unwrap();
    let mut calls = 0;
    let mut noise = msdm::noise::ItemNoise::new(&[4]);
    let out = sample(&reference.denoiser, [1, 4, t], &Device::Cpu, &config, &Posterior::Impute { source: &source, mask: &mask }, &mut noise, &mut |_, _| {
        calls += 1;
        true
    })
    .unwrap();
    assert_eq!(calls, config.calls());
    assert_eq!(values(&out.narrow(1, 1, 1).unwrap()), values(&source.narrow(1, 1, 1).unwrap()));
}

fn stem_batch(cfg: &ModelConfig, dtype: DType) -> LossBatch {
    let t = 2 * cfg.length_multiple();
    let n = 3 * 4 * t;
    let x: Vec<f32> = SeededNoise::new(11).standard_normal(n).iter().map(|v| 0.5 * v).collect();
    let draw = StemNoiseDraw {
        tasks: vec![StemTask::Joint, StemTask::Conditional { given: 0b0110 }, StemTask::Independent],
        sigmas: vec![0.3, 0.3, 0.3, 0.3, 0.8, 0.0, 0.0, 0.8, 0.02, 1.5, 0.1, 0.4],
        noise: SeededNoise::new(12).standard_normal(n),
    };
    LossBatch::per_stem(x, 4, draw, dtype, &Device::Cpu).unwrap()
}

#[test]
fn the_per_stem_loss_is_fused_like_composed_and_trains_the_stem_embedding() {
    let cfg = per_stem();
    let net = TrainableNet::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    let batch = stem_batch(&cfg, DType::F32);
    let fused: Vec<f32> = item_losses(&net.denoiser, &batch).unwrap().to_vec1().unwrap();
    let plain: Vec<f32> = item_losses_composite(&net.denoiser, &batch).unwrap().to_vec1().unwrap();
    for (a, p) in fused.iter().zip(&plain) {
        assert!((a - p).abs() <= 2e-5 * p.abs().max(1e-3), "{a} vs {p}");
    }
    // gradients: the fused loss stage against candle's ops, for every weight
    let g_fused = denoising_loss(&net.denoiser, &batch).unwrap().backward().unwrap();
    let g_plain = item_losses_composite(&net.denoiser, &batch).unwrap().mean_all().unwrap().backward().unwrap();
    for (name, v) in &net.vars {
        let a = g_fused.get(v.as_tensor()).unwrap_or_else(|| panic!("'{name}' received no gradient"));
        let p = g_plain.get(v.as_tensor()).unwrap();
        let scale = p.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let err = (a - p).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(err <= 1e-3 * scale + 1e-7, "'{name}': gradient error {err} (scale {scale})");
        if name == "stem_sigmas.to_features.weight" {
            assert!(scale > 0.0, "the zero-initialised stem embedding gets no gradient");
        }
    }
    // with σ = 0 the denoiser returns its (clean) input, so a given stem's error is exactly zero
    let d = net.denoiser.denoise_sigmas(&batch.x, &batch.sigmas).unwrap();
    for c in [1, 2] {
        let e = (d.get(1).unwrap().get(c).unwrap() - batch.x.get(1).unwrap().get(c).unwrap().clamp(-1f32, 1f32).unwrap()).unwrap();
        assert_eq!(e.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }
}

/// Guidance (w > 0) changes the generated stems, keeps the given ones bit-exact, calls the network
/// twice per step; a reference model refuses it with a clear message.
#[test]
fn guidance_moves_the_generated_stems_only_and_needs_a_per_stem_model() {
    let m = trained_like();
    let t = m.config.length_multiple() * 2;
    let source = rand(3, (1, 4, t), 0.3);
    let mask = Tensor::from_vec(vec![0f32, 1.0, 1.0, 1.0], (1, 4, 1), &Device::Cpu).unwrap();
    let run_with = |w: f32, guidance_interval, guidance_rescale, d: &dyn Denoiser| {
        let config = SamplerConfig { sigmas: karras(4, 1e-3, 5.0, 7.0), churn: 0.0, resamples: 1, guidance: w, guidance_interval, guidance_rescale };
        let mut noise = msdm::noise::ItemNoise::new(&[4]);
        sample(d, [1, 4, t], &Device::Cpu, &config, &Posterior::Impute { source: &source, mask: &mask }, &mut noise, &mut |_, _| true)
    };
    let run_in = |w: f32, interval, d: &dyn Denoiser| run_with(w, interval, 0.0, d);
    let run = |w: f32, d: &dyn Denoiser| run_in(w, None, d);
    let spy = Spy { inner: &m.denoiser, calls: RefCell::new(vec![]) };
    let plain = run(0.0, &m.denoiser).unwrap();
    let guided = run(1.5, &spy).unwrap();
    assert_eq!(spy.calls.borrow().len(), 8, "two network calls per step");
    let top = karras(4, 1e-3, 5.0, 7.0)[0];
    assert!(spy.calls.borrow().iter().any(|(s, _)| s[1] == top && s[0] > 0.0), "D_u sees the given stems at σ_max");
    for c in 1..4 {
        assert_eq!(values(&guided.narrow(1, c, 1).unwrap()), values(&source.narrow(1, c, 1).unwrap()));
    }
    let moved = (guided.narrow(1, 0, 1).unwrap() - plain.narrow(1, 0, 1).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
    assert!(moved.to_scalar::<f32>().unwrap() > 1e-4);
    // a guidance interval guides only the steps whose σ lies in it: here the top two of four
    let sigmas = karras(4, 1e-3, 5.0, 7.0);
    let spy = Spy { inner: &m.denoiser, calls: RefCell::new(vec![]) };
    let high = run_in(1.5, Some((sigmas[1], 100.0)), &spy).unwrap();
    assert_eq!(spy.calls.borrow().len(), 4 + 2, "one extra call at each of the two guided steps");
    let guided_at: Vec<f32> = spy.calls.borrow().iter().filter(|(s, _)| s[1] == top).map(|(s, _)| s[0]).collect();
    assert_eq!(guided_at, sigmas[..2].to_vec(), "guided at σ {guided_at:?}");
    for other in [&plain, &guided] {
        let moved = (high.narrow(1, 0, 1).unwrap() - other.narrow(1, 0, 1).unwrap()).unwrap().abs().unwrap().max_all().unwrap();
        assert!(moved.to_scalar::<f32>().unwrap() > 1e-5, "the interval run equals a full or no-guidance run");
    }
    // the rescale moves the generated stem only
    let rescaled = run_with(1.5, None, 0.7, &m.denoiser).unwrap();
    for c in 1..4 {
        assert_eq!(values(&rescaled.narrow(1, c, 1).unwrap()), values(&source.narrow(1, c, 1).unwrap()));
    }
    assert_ne!(values(&rescaled.narrow(1, 0, 1).unwrap()), values(&guided.narrow(1, 0, 1).unwrap()));
    // with no stem given over the whole window there is nothing to guide by: the run is plain
    let half: Vec<f32> = (0..4 * t).map(|i| if i % t < t / 2 { 1.0 } else { 0.0 }).collect();
    let half = Tensor::from_vec(half, (1, 4, t), &Device::Cpu).unwrap();
    let partial = |w: f32| {
        let config = SamplerConfig { sigmas: karras(4, 1e-3, 5.0, 7.0), churn: 0.0, resamples: 1, guidance: w, guidance_interval: None, guidance_rescale: 0.0 };
        let mut noise = msdm::noise::ItemNoise::new(&[4]);
        sample(&m.denoiser, [1, 4, t], &Device::Cpu, &config, &Posterior::Impute { source: &source, mask: &half }, &mut noise, &mut |_, _| true).unwrap()
    };
    assert_eq!(values(&partial(1.5)), values(&partial(0.0)));
    let reference = Model::random(ModelConfig::tiny(), 5, &Device::Cpu).unwrap();
    let err = run(1.0, &reference.denoiser).unwrap_err().to_string();
    assert!(err.contains("one noise level per stem"), "{err}");
}

/// The guidance rescale brings each item's and stem's RMS to the unguided estimate's (φ = 1), leaves
/// the guided estimate as it is (φ = 0), and mixes the two in between.
#[test]
fn the_guidance_rescale_matches_the_unguided_level() {
    let den = rand(11, (2, 4, 64), 0.2);
    let guided = (rand(12, (2, 4, 64), 0.2) * 3.0).unwrap();
    let rms = |x: &Tensor| values(&x.sqr().unwrap().mean_keepdim(2).unwrap().sqrt().unwrap());
    let full = msdm::sampler::rescale(&den, &guided, 1.0).unwrap();
    for (a, b) in rms(&full).iter().zip(rms(&den)) {
        assert!((a - b).abs() <= 1e-5 * b, "{a} vs {b}");
    }
    assert_eq!(values(&msdm::sampler::rescale(&den, &guided, 0.0).unwrap()), values(&guided));
    let half = values(&msdm::sampler::rescale(&den, &guided, 0.5).unwrap());
    let expect: Vec<f32> = values(&full).iter().zip(values(&guided)).map(|(f, g)| 0.5 * f + 0.5 * g).collect();
    assert!(half.iter().zip(&expect).all(|(a, b)| (a - b).abs() <= 1e-6), "not the even mix");
    // a silent guided stem stays silent, not NaN
    let zero = msdm::sampler::rescale(&den, &(&guided * 0.0).unwrap(), 1.0).unwrap();
    assert!(values(&zero).iter().all(|x| *x == 0.0));
}

/// `loss_sigma_data`: the loss weight w(σ) = (σ² + s²)/(σ·s)² with the stems' RMS s instead of the
/// model's σ_d. Items with one σ scale by w_s(σ)/w_σd(σ) (more than 1 above the stems' RMS); the
/// fused and composed losses still agree; the reference-style path (one σ per item) too.
#[test]
fn the_loss_can_be_weighted_for_the_stems_rms() {
    let ratio = |s: f64, sd: f64| msdm::train::loss_weight(s, 0.05) / msdm::train::loss_weight(s, sd);
    let close = |a: f32, b: f64| ((a as f64) - b).abs() <= 2e-5 * b.abs().max(1e-3);
    let cfg = per_stem();
    let net = TrainableNet::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    let sd = net.denoiser.sigma_data;
    let plain: Vec<f32> = item_losses(&net.denoiser, &stem_batch(&cfg, DType::F32)).unwrap().to_vec1().unwrap();
    let batch = stem_batch(&cfg, DType::F32).weighted_as(Some(0.05));
    let fused: Vec<f32> = item_losses(&net.denoiser, &batch).unwrap().to_vec1().unwrap();
    let composed: Vec<f32> = item_losses_composite(&net.denoiser, &batch).unwrap().to_vec1().unwrap();
    // item 0: joint at σ 0.3; item 1: conditional, its noisy stems at σ 0.8
    for (i, s) in [(0, 0.3), (1, 0.8)] {
        assert!(ratio(s, sd) > 5.0);
        assert!(close(fused[i], plain[i] as f64 * ratio(s, sd)), "item {i}: {} vs {} × {}", fused[i], plain[i], ratio(s, sd));
    }
    assert!(fused[2] > plain[2], "the independent item (σ up to 1.5) weighs more");
    for (a, p) in fused.iter().zip(&composed) {
        assert!(close(*a, *p as f64), "{a} vs {p}");
    }

    // one σ per item (a reference-style model)
    let cfg = ModelConfig::tiny();
    let net = TrainableNet::random(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    let t = 2 * cfg.length_multiple();
    let n = 2 * cfg.in_channels * t;
    let make = || {
        let x: Vec<f32> = SeededNoise::new(21).standard_normal(n).iter().map(|v| 0.1 * v).collect();
        let draw = msdm::train::NoiseDraw { sigmas: vec![0.01, 0.6], noise: SeededNoise::new(22).standard_normal(n) };
        LossBatch::new(x, cfg.in_channels, draw, DType::F32, &Device::Cpu).unwrap()
    };
    let plain: Vec<f32> = item_losses(&net.denoiser, &make()).unwrap().to_vec1().unwrap();
    let weighted = make().weighted_as(Some(0.05));
    let fused: Vec<f32> = item_losses(&net.denoiser, &weighted).unwrap().to_vec1().unwrap();
    let composed: Vec<f32> = item_losses_composite(&net.denoiser, &weighted).unwrap().to_vec1().unwrap();
    for (i, s) in [(0, 0.01), (1, 0.6)] {
        assert!(close(fused[i], plain[i] as f64 * ratio(s, sd)), "item {i}");
        assert!(close(composed[i], fused[i] as f64), "item {i}: composed {} fused {}", composed[i], fused[i]);
    }
    assert!(ratio(0.6, sd) > 10.0 && ratio(0.01, sd) < 1.1, "the weight moves to high σ only");
}
