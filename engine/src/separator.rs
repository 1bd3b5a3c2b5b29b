//! Source separation as posterior sampling (the paper's §3.3): the Dirac likelihood (one
//! "constrained source" is the mixture minus the others, so the stems sum to the mixture) and the
//! Gaussian likelihood (a soft consistency term with γ(σ) = gamma_coeff·σ).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use crate::denoiser::Denoiser;
use crate::noise::{window_seed, DeviceNoise, NoiseSource};
use crate::sampler::{sample, Posterior, Progress, SamplerConfig};
use crate::wiener::WienerFilter;

/// Which likelihood links the stems to the mixture.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Likelihood {
    /// γ → 0: the constrained source is y − Σ of the others (release default: source 0, bass).
    Dirac { constrained: usize },
    /// Gaussian with γ = gamma_coeff·σ (release default 0.75).
    Gaussian { gamma_coeff: f32 },
}

impl Likelihood {
    /// The stem that is the mixture minus the others (Dirac), which also takes the rounding when
    /// a post-filter shares the mixture out again; none for the Gaussian.
    pub fn constrained(self) -> Option<usize> {
        match self {
            Likelihood::Dirac { constrained } => Some(constrained),
            Likelihood::Gaussian { .. } => None,
        }
    }
}

/// Separates `mixture` `[B, 1, T]` into `[B, C, T]` stems.
pub fn separate(
    denoiser: &dyn Denoiser,
    mixture: &Tensor,
    likelihood: Likelihood,
    config: &SamplerConfig,
    noise: &mut dyn NoiseSource,
    progress: Progress,
) -> Result<Tensor> {
    let (b, one, t) = mixture.dims3()?;
    if one != 1 {
        bail!("the mixture must have one channel per batch item, got {one}");
    }
    let c = denoiser.channels();
    let posterior = match likelihood {
        Likelihood::Dirac { constrained } => {
            if constrained >= c {
                bail!("constrained source {constrained} does not exist: the model has {c} stems (0..{})", c - 1);
            }
            Posterior::Dirac { mixture, constrained }
        }
        Likelihood::Gaussian { gamma_coeff } => {
            if !(gamma_coeff > 0.0) {
                bail!("the Gaussian likelihood needs gamma_coeff > 0");
            }
            Posterior::Gaussian { mixture, gamma_coeff }
        }
    };
    sample(denoiser, [b, c, t], mixture.device(), config, &posterior, noise, progress)
}

/// Most posterior samples averaged per item accepted (each costs a full separation).
pub const MAX_AVERAGE: usize = 16;

/// [`separate`] as the mean of `average` posterior samples per item: item b's sample k draws its
/// noise from [`sample_seed`]`(seeds[b], k)`, and all `average × B` samples run as one batch.
/// Why: each sample is a guess at the stems, right where the mix tells and wrong in its own way
/// where it does not; their mean keeps what they agree on (the posterior mean, the estimate
/// with the least squared error). The mean's sum is as close to the mixture as its samples'
/// (the average of their sums). `average` 1 is [`separate`] with noise from `seeds`, bit for bit.
/// `wiener`: the post-filter applied to each item's (mean) stems ([`WienerFilter`]).
#[allow(clippy::too_many_arguments)]
pub fn separate_mean(
    denoiser: &dyn Denoiser,
    mixture: &Tensor,
    likelihood: Likelihood,
    config: &SamplerConfig,
    seeds: &[u64],
    average: usize,
    wiener: Option<&WienerFilter>,
    progress: Progress,
) -> Result<Tensor> {
    let (b, _, t) = mixture.dims3()?;
    if seeds.len() != b {
        bail!("{} seeds for a batch of {b} mixtures", seeds.len());
    }
    if average == 0 || average > MAX_AVERAGE {
        bail!("average {average}: give 1 to {MAX_AVERAGE} posterior samples per window");
    }
    let all: Vec<u64> = (0..average).flat_map(|k| seeds.iter().map(move |&s| sample_seed(s, k))).collect();
    let mut noise = DeviceNoise::for_items(mixture.device(), &all)?;
    let batch = if average == 1 { mixture.clone() } else { mixture.repeat((average, 1, 1))? };
    let mut x = separate(denoiser, &batch, likelihood, config, &mut *noise, progress)?;
    if average > 1 {
        let c = x.dim(1)?;
        x = x.reshape((average, b, c, t))?.mean(0)?;
    }
    match wiener {
        Some(w) => post_filter(w, &x, mixture, likelihood),
        None => Ok(x),
    }
}

/// [`WienerFilter::apply`] on every item of `x` `[B, C, T]` against its `mixture` `[B, 1, T]`,
/// the items in parallel; with the Dirac likelihood the constrained stem takes the rounding, so
/// the stems sum to the mixture as exactly as before.
fn post_filter(wiener: &WienerFilter, x: &Tensor, mixture: &Tensor, likelihood: Likelihood) -> Result<Tensor> {
    use rayon::prelude::*;
    let shape = x.dims3()?;
    let device = x.device().clone();
    let stems: Vec<Vec<Vec<f32>>> = x.to_device(&Device::Cpu)?.to_vec3()?;
    let mixes: Vec<Vec<f32>> = mixture.to_device(&Device::Cpu)?.squeeze(1)?.to_vec2()?;
    let residual_to = likelihood.constrained();
    let out: Vec<Vec<Vec<f32>>> =
        stems.par_iter().zip(&mixes).map(|(s, m)| wiener.apply(s, m, residual_to)).collect::<Result<_>>()?;
    let flat: Vec<f32> = out.into_iter().flatten().flatten().collect();
    Ok(Tensor::from_vec(flat, shape, &device)?)
}

/// The seed of posterior sample `k` of an item seeded with `seed`: sample 0 keeps the item's
/// seed (so one sample is a plain run), the others get their own streams.
pub fn sample_seed(seed: u64, k: usize) -> u64 {
    if k == 0 {
        seed
    } else {
        window_seed(seed ^ 0xA5A5_5A5A_0F0F_F0F0, k)
    }
}
