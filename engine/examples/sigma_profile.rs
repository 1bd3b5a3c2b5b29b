//! How well a model denoises at each noise level: for validation windows x and fixed σ, the mean
//! squared error of D(x + σ·ε, σ) against x, per stem, as a share of the error of the trivial
//! answer D = 0 (the stem's power). 0 is perfect, 1 is no better than silence. Generation and
//! imputation start at σ_max (20 by default), separation at 1; training draws σ around e^−3.
//!
//! The last column asks whether the network uses the other stems at all, which imputation needs:
//! the bass error again, with the same noisy bass but drums, guitar and piano taken from another
//! window. Equal to the bass column means the bass is denoised without looking at the song.
//!
//! For a per-stem σ model a second table asks the same with the other stems clean (σ = 0, as its
//! imputation sees them), for σ from 0.01 to 2: the bass error with the song's own clean stems,
//! with another song's, and the gap between them (how much the song's stems help).
//!
//! `cargo run --release -p msdm --example sigma_profile -- MODEL DATA_ROOT [ITEMS]`
//! (DATA_ROOT holds `validation/`, as made by `msdm data synth`).

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use msdm::data::MultiSourceDataset;
use msdm::denoiser::Denoiser;
use msdm::model_file::Model;
use msdm::noise::SeededNoise;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (model, root) = match (args.get(1), args.get(2)) {
        (Some(m), Some(r)) => (m, r),
        _ => anyhow::bail!("usage: sigma_profile MODEL DATA_ROOT [ITEMS]"),
    };
    let items: usize = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(24);
    let model = Model::load(Path::new(model), &Device::Cpu)?;
    let window = model.window();
    let data = MultiSourceDataset::open(Path::new(root), "validation", window, 0.0, f64::INFINITY)
        .with_context(|| format!("no validation split under {root}"))?;
    anyhow::ensure!(!data.is_empty(), "the validation split is empty");
    let picks: Vec<usize> = (0..items).map(|i| i * data.len() / items).collect();
    let mut x = Vec::with_capacity(items * 4 * window);
    for &k in &picks {
        for stem in data.item_unshifted(k)? {
            x.extend(stem);
        }
    }
    let x = Tensor::from_vec(x, (items, 4, window), &Device::Cpu)?;
    let power = x.sqr()?.mean_keepdim(2)?.mean_keepdim(0)?.flatten_all()?.to_vec1::<f32>()?;
    let shown: Vec<String> = power.iter().map(|p| format!("{p:.2e}")).collect();
    println!("{items} validation windows of {window} samples; stem power (the MSE of D = 0): {}", shown.join(", "));
    println!("| σ | bass | drums | guitar | piano | all | bass, another song's stems |");
    println!("|---|---|---|---|---|---|---|");
    for (i, sigma) in [0.01f32, 0.05, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0].into_iter().enumerate() {
        let eps = SeededNoise::new(1000 + i as u64).standard_normal(x.elem_count());
        let noisy = (&x + (Tensor::from_vec(eps, x.dims(), &Device::Cpu)? * sigma as f64)?)?;
        let mut per_stem = vec![0f32; 4];
        let mut bass_wrong_context = 0f32;
        for b in 0..items {
            // one window at a time keeps memory small
            let item = noisy.narrow(0, b, 1)?;
            let target = x.narrow(0, b, 1)?;
            let d = model.denoiser.denoise(&item, sigma)?;
            let err = (d - &target)?.sqr()?.mean_keepdim(2)?.flatten_all()?.to_vec1::<f32>()?;
            per_stem.iter_mut().zip(err).for_each(|(a, e)| *a += e / items as f32);
            let others = noisy.narrow(0, (b + 1) % items, 1)?.narrow(1, 1, 3)?;
            let swapped = Tensor::cat(&[&item.narrow(1, 0, 1)?, &others], 1)?;
            let d = model.denoiser.denoise(&swapped, sigma)?.narrow(1, 0, 1)?;
            let err = (d - target.narrow(1, 0, 1)?)?.sqr()?.mean_all()?.to_scalar::<f32>()?;
            bass_wrong_context += err / items as f32;
        }
        let rel: Vec<f32> = per_stem.iter().zip(&power).map(|(e, p)| e / p.max(1e-12)).collect();
        let all = per_stem.iter().sum::<f32>() / power.iter().sum::<f32>().max(1e-12);
        let wrong = bass_wrong_context / power[0].max(1e-12);
        println!("| {sigma} | {:.3} | {:.3} | {:.3} | {:.3} | {all:.3} | {wrong:.3} |", rel[0], rel[1], rel[2], rel[3]);
    }
    if model.denoiser.takes_stem_sigmas() {
        clean_context(&model, &x, power[0])?;
    }
    Ok(())
}

/// The bass denoised with the other stems clean: the song's own against another song's.
fn clean_context(model: &Model, x: &Tensor, bass_power: f32) -> Result<()> {
    let items = x.dim(0)?;
    println!();
    println!("Other stems clean (σ = 0): bass error as a share of its power, and the context gap");
    println!("| σ | bass, the song's stems | bass, another song's stems | gap |");
    println!("|---|---|---|---|");
    for (i, sigma) in [0.01f32, 0.05, 0.2, 0.5, 1.0, 2.0].into_iter().enumerate() {
        let eps = SeededNoise::new(2000 + i as u64).standard_normal(items * x.dim(2)?);
        let eps = Tensor::from_vec(eps, (items, 1, x.dim(2)?), &Device::Cpu)?;
        let bass = (x.narrow(1, 0, 1)? + (eps * sigma as f64)?)?;
        let (mut own, mut other) = (0f32, 0f32);
        for b in 0..items {
            let target = x.narrow(0, b, 1)?.narrow(1, 0, 1)?;
            for (context, acc) in [(b, &mut own), ((b + 1) % items, &mut other)] {
                let input = Tensor::cat(&[&bass.narrow(0, b, 1)?, &x.narrow(0, context, 1)?.narrow(1, 1, 3)?], 1)?;
                let d = model.denoiser.denoise_stems(&input, &[sigma, 0.0, 0.0, 0.0])?.narrow(1, 0, 1)?;
                *acc += (d - &target)?.sqr()?.mean_all()?.to_scalar::<f32>()? / items as f32;
            }
        }
        let (own, other) = (own / bass_power.max(1e-12), other / bass_power.max(1e-12));
        println!("| {sigma} | {own:.3} | {other:.3} | {:+.1} % |", 100.0 * (other - own) / other.max(1e-12));
    }
    Ok(())
}
