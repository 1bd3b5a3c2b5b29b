//! The reference sampler: Euler steps along the probability-flow ODE with S_churn stochasticity and
//! R "correction" resamples per step (re-noise from σ_{i+1} back to σ_i and repeat the step).
//!
//! One loop serves every task; what differs is the posterior (see [`Posterior`]): the plain prior
//! (total generation), channel-masked inpainting (source imputation), and the Dirac and Gaussian
//! separation likelihoods ([`crate::separator`]).
//!
//! With a per-stem σ model ([`Denoiser::takes_stem_sigmas`]) imputation keeps every stem that is
//! given over the whole window clean: the model sees it at σ = 0 at every step, instead of
//! re-noised to the current σ as the reference does; the schedule runs on the other stems only.
//! A stem given over part of the window (a time range to regenerate) keeps the reference's
//! replacement. The noise draws are the same in both cases.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

use crate::denoiser::Denoiser;
use crate::noise::NoiseSource;

/// Schedule and stochasticity of one sampling run.
#[derive(Clone, Debug)]
pub struct SamplerConfig {
    /// σ_0 > … > σ_{N−1} > σ_N = 0 (see [`crate::schedule::karras`]).
    pub sigmas: Vec<f32>,
    /// S_churn; γ = min(S_churn / N, √2 − 1) at every step.
    pub churn: f32,
    /// R ≥ 1 network calls per step (R − 1 corrections).
    pub resamples: usize,
    /// Per-stem σ models, imputation only: guidance weight w on the given stems,
    /// D = D_c + w·(D_c − D_u), where D_c sees the given stems clean and D_u sees them at the
    /// schedule's σ_max (as if absent). 0 (the default) is plain conditioning and one network
    /// call per step; w > 0 costs a second call and an extra noise draw per call.
    pub guidance: f32,
    /// Guide only at the steps whose σ̂ lies in `[lo, hi]` (a guidance interval, as in
    /// Kynkäänniemi et al. 2024, arXiv 2404.07724); `None` guides every step. Guidance at low σ
    /// mostly makes the stem louder, at high σ it is what sets its notes and onsets.
    pub guidance_interval: Option<(f32, f32)>,
    /// Guidance rescale φ in [0, 1] (Lin et al. 2023, arXiv 2305.08891, §3.4): the guided estimate
    /// of each generated stem is scaled to the RMS of the unguided one, and φ of that is mixed
    /// with (1 − φ) of the guided estimate. Guidance alone makes the stem louder (+10 dB at w = 2
    /// with the per-stem model); 0 (the default) leaves it so.
    pub guidance_rescale: f32,
}

impl SamplerConfig {
    pub fn steps(&self) -> usize {
        self.sigmas.len().saturating_sub(1)
    }

    /// Total denoiser calls (NFE = N·R).
    pub fn calls(&self) -> usize {
        self.steps() * self.resamples
    }

    /// Steps that guidance (if the posterior allows it) makes a second network call in.
    pub fn guided_steps(&self) -> usize {
        (0..self.steps()).filter(|&i| self.guides(self.sigmas[i] * (self.gamma() + 1.0))).count()
    }

    /// Whether the step at σ̂ is guided.
    fn guides(&self, sigma_hat: f32) -> bool {
        self.guidance > 0.0 && self.guidance_interval.is_none_or(|(lo, hi)| (lo..=hi).contains(&sigma_hat))
    }

    fn gamma(&self) -> f32 {
        (self.churn / self.steps() as f32).min(std::f32::consts::SQRT_2 - 1.0)
    }
}

/// What the sampler conditions on.
pub enum Posterior<'a> {
    /// Total generation from the joint prior.
    Prior,
    /// Source imputation (inpainting over stems and time): `source` `[B, C, T]` holds the given
    /// stems; `mask`, broadcastable to `[B, C, T]` (e.g. `[1, C, 1]`), is 1 where `source` is given.
    Impute { source: &'a Tensor, mask: &'a Tensor },
    /// Dirac likelihood: the stem `constrained` is y − Σ of the others; `mixture` `[B, 1, T]`.
    Dirac { mixture: &'a Tensor, constrained: usize },
    /// Gaussian likelihood with γ(σ) = `gamma_coeff`·σ; `mixture` `[B, 1, T]`.
    Gaussian { mixture: &'a Tensor, gamma_coeff: f32 },
}

/// Progress callback: `(calls done, calls in all)`; return `false` to cancel.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize) -> bool;

/// Error message used when a run is cancelled through the progress callback.
pub const CANCELLED: &str = "cancelled";

fn draw(noise: &mut dyn NoiseSource, shape: &[usize], device: &Device) -> Result<Tensor> {
    noise.draw_tensor(shape, device)
}

/// Runs the sampler on a state of `shape` = `[B, C, T]` and returns the final state.
///
/// Noise is consumed in the reference's order: the initial draw; then per step the noisy-source
/// draw (generation and imputation, not separation); then per resample the churn draw (even when
/// churn is zero) and, between resamples, the re-noise draw.
pub fn sample(
    denoiser: &dyn Denoiser,
    shape: [usize; 3],
    device: &Device,
    config: &SamplerConfig,
    posterior: &Posterior,
    noise: &mut dyn NoiseSource,
    progress: Progress,
) -> Result<Tensor> {
    let [_, c, t] = shape;
    if c != denoiser.channels() {
        bail!("the model has {} stems but the sampler was asked for {c}", denoiser.channels());
    }
    if t % denoiser.length_multiple() != 0 {
        bail!("window length {t} is not a multiple of the model's length multiple {}", denoiser.length_multiple());
    }
    if config.steps() == 0 || config.resamples == 0 {
        bail!("the sampler needs at least one step and one resample");
    }
    let mask = match posterior {
        Posterior::Impute { mask, source } => {
            if mask.rank() != 3 || mask.dim(1)? != c {
                bail!("the imputation mask must be [B|1, {c}, T|1], got {:?}", mask.dims());
            }
            if source.dims() != shape {
                bail!("the given stems are {:?}, the sampler state {shape:?}", source.dims());
            }
            Some((*mask).clone())
        }
        _ => None,
    };
    // Per-stem σ models: the stems given over the whole window stay clean (1 in `clean`).
    let clean = match posterior {
        Posterior::Impute { mask, .. } if denoiser.takes_stem_sigmas() => Some(fully_given(mask, c)?),
        _ => None,
    };
    let clean = clean.filter(|k| k.iter().any(|&g| g));
    if config.guidance > 0.0 && !denoiser.takes_stem_sigmas() {
        bail!(
            "guidance works on imputation with a model that takes one noise level per stem (`msdm info` says which); \
             leave --guidance out for this model"
        );
    }
    // Guidance needs a stem given over the whole window to guide by: a window without one (a
    // regenerated range with every stem chosen, the part of a window past the clip's end, total
    // generation) runs plain, so that a model whose stored defaults guide can do every job.
    let clean_mask = match &clean {
        Some(k) => Some(Tensor::from_vec(k.iter().map(|&g| if g { 1f32 } else { 0.0 }).collect::<Vec<_>>(), (1, c, 1), device)?),
        None => None,
    };
    let keep_clean = |x: Tensor| -> Result<Tensor> {
        match (&clean_mask, posterior) {
            (Some(m), Posterior::Impute { source, .. }) => Ok((source.broadcast_mul(m)? + x.broadcast_mul(&(1.0 - m)?)?)?),
            _ => Ok(x),
        }
    };
    let gamma = config.gamma();
    let sigmas = &config.sigmas;
    let total = config.calls();
    let mut done = 0;
    let mut x = (draw(noise, &shape, device)? * sigmas[0] as f64)?;
    for i in 0..config.steps() {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let source_noisy = match posterior {
            Posterior::Impute { source, .. } => Some((*source + (draw(noise, &shape, device)? * sigma as f64)?)?),
            Posterior::Prior => {
                // The reference generates with its imputation function on an all-zero source and
                // mask, so it draws (and discards) a noisy source every step: same seed, same stems.
                draw(noise, &shape, device)?;
                None
            }
            _ => None,
        };
        for r in 0..config.resamples {
            if let (Some(m), Some(s)) = (&mask, &source_noisy) {
                x = (s.broadcast_mul(m)? + x.broadcast_mul(&(1.0 - m)?)?)?;
            }
            let sigma_hat = sigma * (gamma + 1.0);
            let churn = (sigma_hat * sigma_hat - sigma * sigma).sqrt();
            x = (x + (draw(noise, &shape, device)? * churn as f64)?)?;
            let d = match &clean {
                Some(given) => {
                    x = keep_clean(x)?;
                    let sigmas: Vec<f32> = given.iter().map(|&g| if g { 0.0 } else { sigma_hat }).collect();
                    let mut den = denoiser.denoise_stems(&x, &sigmas)?;
                    if let (true, Some(m), Posterior::Impute { source, .. }) = (config.guides(sigma_hat), &clean_mask, posterior) {
                        den = guide(denoiser, &x, &den, source, m, &sigmas, config, noise)?;
                    }
                    ((&x - den)? / sigma_hat as f64)?
                }
                None => differential(denoiser, &mut x, sigma_hat, posterior)?,
            };
            x = (&x + (d * (sigma_next - sigma_hat) as f64)?)?;
            if r + 1 < config.resamples {
                let renoise = (sigma * sigma - sigma_next * sigma_next).sqrt();
                x = (x + (draw(noise, &shape, device)? * renoise as f64)?)?;
            }
            done += 1;
            if !progress(done, total) {
                bail!(CANCELLED);
            }
        }
    }
    if let (Some(m), Posterior::Impute { source, .. }) = (&mask, posterior) {
        x = (source.broadcast_mul(m)? + x.broadcast_mul(&(1.0 - m)?)?)?;
    }
    Ok(x)
}

/// D_c + w·(D_c − D_u) on the generated stems (see [`SamplerConfig::guidance`]); `den` is D_c,
/// `clean` the given stems (`[1, C, 1]`), `sigmas` the levels D_c was called with.
#[allow(clippy::too_many_arguments)]
fn guide(
    denoiser: &dyn Denoiser,
    x: &Tensor,
    den: &Tensor,
    source: &Tensor,
    clean: &Tensor,
    sigmas: &[f32],
    config: &SamplerConfig,
    noise: &mut dyn NoiseSource,
) -> Result<Tensor> {
    let top = config.sigmas[0];
    let absent = (source + (draw(noise, x.dims(), x.device())? * top as f64)?)?;
    let x_u = (absent.broadcast_mul(clean)? + x.broadcast_mul(&(1.0 - clean)?)?)?;
    let sigmas_u: Vec<f32> = sigmas.iter().map(|&s| if s == 0.0 { top } else { s }).collect();
    let d_u = denoiser.denoise_stems(&x_u, &sigmas_u)?;
    let mut guided = (den + ((den - d_u)? * config.guidance as f64)?)?;
    if config.guidance_rescale > 0.0 {
        guided = rescale(den, &guided, config.guidance_rescale)?;
    }
    Ok((den.broadcast_mul(clean)? + guided.broadcast_mul(&(1.0 - clean)?)?)?)
}

/// φ·(guided scaled to the RMS of `den` over time, per item and stem) + (1 − φ)·guided.
pub fn rescale(den: &Tensor, guided: &Tensor, phi: f32) -> Result<Tensor> {
    let rms = |x: &Tensor| -> Result<Tensor> { Ok(x.sqr()?.mean_keepdim(2)?.sqrt()?) };
    let ratio = (rms(den)? / rms(guided)?.clamp(1e-8f32, f32::MAX)?)?;
    let scaled = guided.broadcast_mul(&ratio)?;
    Ok(((scaled * phi as f64)? + (guided * (1.0 - phi as f64))?)?)
}

/// For each of the `c` stems, whether `mask` (`[B|1, C, T|1]`) gives it everywhere.
fn fully_given(mask: &Tensor, c: usize) -> Result<Vec<bool>> {
    let m = mask.transpose(0, 1)?.flatten_from(1)?.min(1)?.to_dtype(candle_core::DType::F32)?;
    let v: Vec<f32> = m.to_vec1()?;
    if v.len() != c {
        bail!("the imputation mask has {} stems, the model {c}", v.len());
    }
    Ok(v.into_iter().map(|x| x >= 1.0).collect())
}

/// The ODE derivative dx/dσ under the posterior, at the churned state `x` (which the Dirac
/// likelihood constrains in place, as the reference does).
fn differential(denoiser: &dyn Denoiser, x: &mut Tensor, sigma: f32, posterior: &Posterior) -> Result<Tensor> {
    match posterior {
        Posterior::Prior | Posterior::Impute { .. } => score_step(denoiser, x, sigma),
        Posterior::Dirac { mixture, constrained } => {
            *x = constrain(x, mixture, *constrained)?;
            let e = score_step(denoiser, x, sigma)?;
            let e_c = e.narrow(1, *constrained, 1)?;
            Ok(e.broadcast_sub(&e_c)?)
        }
        Posterior::Gaussian { mixture, gamma_coeff } => {
            let e = score_step(denoiser, x, sigma)?;
            let residual = mixture.broadcast_sub(&x.sum_keepdim(1)?)?;
            let gamma = gamma_coeff * sigma;
            let coeff = sigma / (2.0 * gamma * gamma);
            Ok(e.broadcast_sub(&(residual * coeff as f64)?)?)
        }
    }
}

/// (x − D(x, σ)) / σ.
fn score_step(denoiser: &dyn Denoiser, x: &Tensor, sigma: f32) -> Result<Tensor> {
    let den = denoiser.denoise(x, sigma)?;
    Ok(((x - den)? / sigma as f64)?)
}

/// The Dirac likelihood's projection: x_c ← y − Σ_{n≠c} x_n (the stems then sum to the mixture).
pub fn constrain(x: &Tensor, mixture: &Tensor, c: usize) -> candle_core::Result<Tensor> {
    let n = x.dim(1)?;
    let others = (x.sum_keepdim(1)? - x.narrow(1, c, 1)?)?;
    let xc = mixture.broadcast_sub(&others)?;
    let mut parts = Vec::with_capacity(3);
    if c > 0 {
        parts.push(x.narrow(1, 0, c)?);
    }
    parts.push(xc);
    if c + 1 < n {
        parts.push(x.narrow(1, c + 1, n - c - 1)?);
    }
    Tensor::cat(&parts, 1)
}
