//! The training objective (spec §5): denoising score matching with EDM preconditioning.
//!
//! σ_b = exp(mean + std·n_b), n_b ~ N(0, 1), one σ per batch item; x_noisy = x + σ·ε;
//! loss = mean_b [ w(σ_b) · mean_{C,T} (D(x_noisy, σ_b) − x)² ],  w(σ) = (σ² + σ_d²)/(σ·σ_d)²,
//! where D is [`EdmDenoiser::denoise_sigmas`] (clamp to [−1, 1] inside, so clamped outputs get no
//! gradient). All draws come from the caller's seeded RNG.

use candle_core::{DType, Device, Result, Tensor};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::config::SigmaDistribution;
use crate::denoiser::{edm_coefficients, EdmDenoiser};
use super::loss_stage::{edm_item_losses, fused_loss_applies, EdmLossCoefficients};

/// The noise of one training batch: σ per item and ε for every sample.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseDraw {
    pub sigmas: Vec<f32>,
    pub noise: Vec<f32>,
}

/// Draws σ (first, one per item) then ε (`batch · per_item` values) from `rng`.
pub fn draw_noise<R: Rng + ?Sized>(rng: &mut R, dist: SigmaDistribution, batch: usize, per_item: usize) -> NoiseDraw {
    let sigmas = (0..batch)
        .map(|_| {
            let n: f64 = rng.sample(StandardNormal);
            (dist.mean + dist.std * n).exp() as f32
        })
        .collect();
    let noise = (0..batch * per_item).map(|_| rng.sample::<f32, _>(StandardNormal)).collect();
    NoiseDraw { sigmas, noise }
}

/// The EDM loss weight w(σ) = (σ² + σ_d²)/(σ·σ_d)².
pub fn loss_weight(sigma: f64, sigma_data: f64) -> f64 {
    (sigma * sigma + sigma_data * sigma_data) / (sigma * sigma_data).powi(2)
}

/// A training batch as tensors in the network's dtype: clean sources x `[B, C, T]`, σ `[B]`, ε `[B, C, T]`.
pub struct LossBatch {
    pub x: Tensor,
    pub sigmas: Tensor,
    pub noise: Tensor,
}

impl LossBatch {
    /// From flat data (`x`, batch-major `[B, C, T]`) and a noise draw.
    pub fn new(x: Vec<f32>, channels: usize, draw: NoiseDraw, dtype: DType, device: &Device) -> Result<Self> {
        let b = draw.sigmas.len();
        if b == 0 || x.len() % (b * channels) != 0 || draw.noise.len() != x.len() {
            candle_core::bail!(
                "loss batch: {} samples, {} noise values and {b} sigmas do not form a [B, {channels}, T] batch",
                x.len(),
                draw.noise.len()
            );
        }
        let t = x.len() / (b * channels);
        let mk = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, device)?.to_dtype(dtype);
        Ok(Self {
            x: mk(x, &[b, channels, t])?,
            sigmas: mk(draw.sigmas, &[b])?,
            noise: mk(draw.noise, &[b, channels, t])?,
        })
    }

    pub fn batch_size(&self) -> usize {
        self.sigmas.dims()[0]
    }

    /// Items `start..start+len` of this batch.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self { x: self.x.narrow(0, start, len)?, sigmas: self.sigmas.narrow(0, start, len)?, noise: self.noise.narrow(0, start, len)? })
    }
}

/// Per-item weighted losses `[B]`: w(σ_b) · mean_{C,T} (D(x + σ_b·ε, σ_b) − x)².
///
/// On the CPU in f32 the preconditioning, clamp and weighted error after the network are one op
/// ([`edm_item_losses`]); elsewhere, and in [`item_losses_composite`], candle ops.
pub fn item_losses(denoiser: &EdmDenoiser, batch: &LossBatch) -> Result<Tensor> {
    if !fused_loss_applies(&batch.x) || denoiser.compute_dtype != DType::F32 {
        return item_losses_composite(denoiser, batch);
    }
    let b = batch.batch_size();
    let sd = denoiser.sigma_data as f32;
    let sigmas: Vec<f32> = batch.sigmas.to_vec1()?;
    let mut k = EdmLossCoefficients { c_skip: vec![], c_out: vec![], weight: vec![] };
    let (mut c_in, mut c_noise) = (vec![], vec![]);
    for &s in &sigmas {
        let (skip, out, inp, noise) = edm_coefficients(s, sd);
        k.c_skip.push(skip);
        k.c_out.push(out);
        k.weight.push(loss_weight(s as f64, sd as f64) as f32);
        c_in.push(inp);
        c_noise.push(noise);
    }
    let s = batch.sigmas.reshape((b, 1, 1))?;
    let x_noisy = (&batch.x + batch.noise.broadcast_mul(&s)?)?;
    let c_in = Tensor::from_vec(c_in, (b, 1, 1), batch.x.device())?;
    let f = denoiser.run_net(&x_noisy.broadcast_mul(&c_in)?, &Tensor::from_vec(c_noise, b, batch.x.device())?)?;
    edm_item_losses(&f, &x_noisy, &batch.x, &k)
}

/// [`item_losses`] composed of candle ops (any device and dtype).
pub fn item_losses_composite(denoiser: &EdmDenoiser, batch: &LossBatch) -> Result<Tensor> {
    let b = batch.batch_size();
    let s = batch.sigmas.reshape((b, 1, 1))?;
    let x_noisy = (&batch.x + batch.noise.broadcast_mul(&s)?)?;
    let denoised = denoiser.denoise_sigmas(&x_noisy, &batch.sigmas)?;
    let mse = (denoised - &batch.x)?.sqr()?.flatten_from(1)?.mean(1)?;
    // w = (σ² + σ_d²) · (σ·σ_d)^-2, computed on the tensor (no gradient flows into σ anyway).
    let sd = denoiser.sigma_data;
    let w = ((batch.sigmas.sqr()? + sd * sd)? / (&batch.sigmas * sd)?.sqr()?)?;
    mse * w
}

/// The batch loss: the mean of [`item_losses`] (a scalar tensor).
pub fn denoising_loss(denoiser: &EdmDenoiser, batch: &LossBatch) -> Result<Tensor> {
    item_losses(denoiser, batch)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn sigmas_are_log_normal_with_the_reference_median() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let d = draw_noise(&mut rng, SigmaDistribution::default(), 20000, 1);
        let logs: Vec<f64> = d.sigmas.iter().map(|&s| (s as f64).ln()).collect();
        let mean = logs.iter().sum::<f64>() / logs.len() as f64;
        let var = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / logs.len() as f64;
        assert!((mean + 3.0).abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
    }

    #[test]
    fn weight_is_edm_lambda() {
        // σ = σ_d: w = 2σ_d²/σ_d⁴ = 2/σ_d²
        assert!((loss_weight(0.2, 0.2) - 50.0).abs() < 1e-9);
        // w·c_out² = 1 (the EDM effective weight on F is one)
        for s in [0.01, 0.05, 1.0, 10.0f64] {
            let c_out2 = (s * 0.2).powi(2) / (s * s + 0.04);
            assert!((loss_weight(s, 0.2) * c_out2 - 1.0).abs() < 1e-9);
        }
    }
}
