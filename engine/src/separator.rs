//! Source separation as posterior sampling (the paper's §3.3): the Dirac likelihood (one
//! "constrained source" is the mixture minus the others, so the stems sum to the mixture) and the
//! Gaussian likelihood (a soft consistency term with γ(σ) = gamma_coeff·σ).

use anyhow::{bail, Result};
use candle_core::Tensor;

use crate::denoiser::Denoiser;
use crate::noise::NoiseSource;
use crate::sampler::{sample, Posterior, Progress, SamplerConfig};

/// Which likelihood links the stems to the mixture.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Likelihood {
    /// γ → 0: the constrained source is y − Σ of the others (release default: source 0, bass).
    Dirac { constrained: usize },
    /// Gaussian with γ = gamma_coeff·σ (release default 0.75).
    Gaussian { gamma_coeff: f32 },
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
