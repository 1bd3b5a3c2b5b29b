//! The loss of a tiny model falls clearly on one fixed batch (fixed σ and ε) within seconds:
//! the loss, its gradients and Adam work together.

use candle_core::{DType, Device};
use msdm::config::ModelConfig;
use msdm::noise::SeededNoise;
use msdm::train::{denoising_loss, Adam, AdamConfig, LossBatch, NoiseDraw, TrainableNet};

#[test]
fn train_loss_falls_on_a_fixed_batch() {
    let cfg = ModelConfig::tiny();
    let (b, c, t) = (2, cfg.in_channels, 4 * cfg.length_multiple());
    // Four "stems": sines at different pitches and levels.
    let x: Vec<f32> = (0..b * c * t)
        .map(|i| {
            let (item, stem, n) = (i / (c * t), (i / t) % c, i % t);
            let f = 0.01 + 0.013 * stem as f32 + 0.004 * item as f32;
            (0.3 - 0.05 * stem as f32) * (std::f32::consts::TAU * f * n as f32).sin()
        })
        .collect();
    let draw = NoiseDraw { sigmas: vec![0.05, 0.2], noise: SeededNoise::new(4).standard_normal(b * c * t) };
    let batch = LossBatch::new(x, c, draw, DType::F32, &Device::Cpu).unwrap();

    let net = TrainableNet::random(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
    let mut adam = Adam::new(net.vars.clone(), AdamConfig { lr: 1e-3, ..AdamConfig::default() }).unwrap();
    let mut losses = Vec::new();
    for _ in 0..100 {
        let loss = denoising_loss(&net.denoiser, &batch).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        adam.step(&loss.backward().unwrap()).unwrap();
    }
    let last = denoising_loss(&net.denoiser, &batch).unwrap().to_scalar::<f32>().unwrap();
    eprintln!("loss {} -> {last}", losses[0]);
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(last < 0.5 * losses[0], "loss fell only from {} to {last}", losses[0]);
}
