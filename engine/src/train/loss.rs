//! The training objective (spec §5): denoising score matching with EDM preconditioning.
//!
//! σ_b = exp(mean + std·n_b), n_b ~ N(0, 1), one σ per batch item; x_noisy = x + σ·ε;
//! loss = mean_b [ w(σ_b) · mean_{C,T} (D(x_noisy, σ_b) − x)² ],  w(σ) = (σ² + σ_d²)/(σ·σ_d)²,
//! where D is [`EdmDenoiser::denoise_sigmas`] (clamp to [−1, 1] inside, so clamped outputs get no
//! gradient). All draws come from the caller's seeded RNG.
//!
//! Per-stem σ models ([`super::tasks`]) have σ per item and stem: a clean stem (σ = 0) is left out
//! of the loss, and each item's loss is the mean over its noisy stems,
//! loss_b = Σ_{c noisy} w(σ_bc) · mean_T (D − x)² / n_noisy,b (the reference's loss when every stem
//! shares one σ).
//!
//! The weight's σ_d is the denoiser's unless the batch carries its own ([`LossBatch::weighted_as`],
//! the config's `loss_sigma_data`): that moves the training effort between noise levels without
//! touching the model.

use candle_core::{DType, Device, Result, Tensor};
use rand::Rng;
use rand_distr::StandardNormal;

use crate::config::SigmaDistribution;
use crate::denoiser::{edm_coefficients, EdmDenoiser};
use crate::unet::stem_embedding::stem_c_noise;
use super::loss_stage::{edm_item_losses, fused_loss_applies, EdmLossCoefficients};
use super::tasks::StemNoiseDraw;

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

/// A training batch as tensors in the network's dtype: clean sources x `[B, C, T]`, σ `[B]` (or
/// `[B, C]` for a per-stem σ model), ε `[B, C, T]`.
pub struct LossBatch {
    pub x: Tensor,
    pub sigmas: Tensor,
    pub noise: Tensor,
    /// σ_d of the loss weight w(σ); `None`: the denoiser's.
    pub weight_sigma_data: Option<f64>,
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
            weight_sigma_data: None,
        })
    }

    /// From flat data and a per-stem draw (σ `[B, C]`, 0 for clean stems).
    pub fn per_stem(x: Vec<f32>, channels: usize, draw: StemNoiseDraw, dtype: DType, device: &Device) -> Result<Self> {
        let b = draw.tasks.len();
        if b == 0 || draw.sigmas.len() != b * channels || x.len() % (b * channels) != 0 || draw.noise.len() != x.len() {
            candle_core::bail!(
                "loss batch: {} samples, {} noise values and {} sigmas do not form a [{b}, {channels}, T] batch",
                x.len(),
                draw.noise.len(),
                draw.sigmas.len()
            );
        }
        let t = x.len() / (b * channels);
        let mk = |v: Vec<f32>, shape: &[usize]| Tensor::from_vec(v, shape, device)?.to_dtype(dtype);
        Ok(Self {
            x: mk(x, &[b, channels, t])?,
            sigmas: mk(draw.sigmas, &[b, channels])?,
            noise: mk(draw.noise, &[b, channels, t])?,
            weight_sigma_data: None,
        })
    }

    /// The same batch with its losses weighted as for data of RMS `sigma_data` (`None`: the denoiser's σ_d).
    pub fn weighted_as(self, sigma_data: Option<f64>) -> Self {
        Self { weight_sigma_data: sigma_data, ..self }
    }

    /// σ_d of the loss weight.
    fn weight_sd(&self, denoiser: &EdmDenoiser) -> f64 {
        self.weight_sigma_data.unwrap_or(denoiser.sigma_data)
    }

    /// σ broadcastable against `[B, C, T]`.
    fn sigma_column(&self) -> Result<Tensor> {
        match self.sigmas.rank() {
            2 => self.sigmas.unsqueeze(2),
            _ => self.sigmas.reshape((self.batch_size(), 1, 1)),
        }
    }

    pub fn batch_size(&self) -> usize {
        self.sigmas.dims()[0]
    }

    /// Items `start..start+len` of this batch.
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        Ok(Self {
            x: self.x.narrow(0, start, len)?,
            sigmas: self.sigmas.narrow(0, start, len)?,
            noise: self.noise.narrow(0, start, len)?,
            weight_sigma_data: self.weight_sigma_data,
        })
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
    let (b, c) = (batch.batch_size(), batch.x.dim(1)?);
    let sd = denoiser.sigma_data as f32;
    let wd = batch.weight_sd(denoiser);
    let dev = batch.x.device();
    let x_noisy = (&batch.x + batch.noise.broadcast_mul(&batch.sigma_column()?)?)?;
    if batch.sigmas.rank() == 2 {
        let rows = StemRows::new(&batch.sigmas.to_vec2()?, sd, wd)?;
        let c_noise = Tensor::from_vec(rows.c_noise, b, dev)?;
        let stem_noise = Tensor::from_vec(rows.stem_noise, (b, c), dev)?;
        let c_in = Tensor::from_vec(rows.c_in, (b, c, 1), dev)?;
        let f = denoiser.run_net_stems(&x_noisy.broadcast_mul(&c_in)?, &c_noise, &stem_noise)?;
        return edm_item_losses(&f, &x_noisy, &batch.x, &rows.k);
    }
    let sigmas: Vec<f32> = batch.sigmas.to_vec1()?;
    let (mut skip, mut out, mut weight) = (vec![], vec![], vec![]);
    let (mut c_in, mut c_noise) = (vec![], vec![]);
    for &s in &sigmas {
        let (k_skip, k_out, k_in, k_noise) = edm_coefficients(s, sd);
        skip.push(k_skip);
        out.push(k_out);
        weight.push(loss_weight(s as f64, wd) as f32);
        c_in.push(k_in);
        c_noise.push(k_noise);
    }
    let k = EdmLossCoefficients::per_item(&skip, &out, &weight, c);
    let c_in = Tensor::from_vec(c_in, (b, 1, 1), dev)?;
    let f = denoiser.run_net(&x_noisy.broadcast_mul(&c_in)?, &Tensor::from_vec(c_noise, b, dev)?)?;
    edm_item_losses(&f, &x_noisy, &batch.x, &k)
}

/// The per-row coefficients of a per-stem batch: loss coefficients, c_in, and the network's
/// inputs (c_noise of each item's largest σ, per-stem c_noise).
struct StemRows {
    k: EdmLossCoefficients,
    c_in: Vec<f32>,
    c_noise: Vec<f32>,
    stem_noise: Vec<f32>,
}

impl StemRows {
    /// `sd`: the denoiser's σ_d (preconditioning); `wd`: the loss weight's.
    fn new(sigmas: &[Vec<f32>], sd: f32, wd: f64) -> Result<Self> {
        let mut r = StemRows { k: EdmLossCoefficients { c_skip: vec![], c_out: vec![], weight: vec![] }, c_in: vec![], c_noise: vec![], stem_noise: vec![] };
        for item in sigmas {
            let top = item.iter().copied().fold(0f32, f32::max);
            let noisy = item.iter().filter(|&&s| s > 0.0).count();
            if noisy == 0 {
                candle_core::bail!("a training item has every stem clean (σ = 0): nothing to learn");
            }
            r.c_noise.push(edm_coefficients(top, sd).3);
            for &s in item {
                let (skip, out, inp, _) = edm_coefficients(s, sd);
                let w = if s > 0.0 { loss_weight(s as f64, wd) * item.len() as f64 / noisy as f64 } else { 0.0 };
                r.k.c_skip.push(skip);
                r.k.c_out.push(out);
                r.k.weight.push(w as f32);
                r.c_in.push(inp);
                r.stem_noise.push(stem_c_noise(s));
            }
        }
        Ok(r)
    }
}

/// [`item_losses`] composed of candle ops (any device and dtype).
pub fn item_losses_composite(denoiser: &EdmDenoiser, batch: &LossBatch) -> Result<Tensor> {
    let x_noisy = (&batch.x + batch.noise.broadcast_mul(&batch.sigma_column()?)?)?;
    let denoised = denoiser.denoise_sigmas(&x_noisy, &batch.sigmas)?;
    if batch.sigmas.rank() == 2 {
        let sigmas = batch.sigmas.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let wd = batch.weight_sd(denoiser);
        let w: Vec<f64> = sigmas
            .iter()
            .flat_map(|item| {
                let noisy = item.iter().filter(|&&s| s > 0.0).count().max(1) as f64;
                item.iter().map(move |&s| if s > 0.0 { loss_weight(s, wd) * item.len() as f64 / noisy } else { 0.0 })
            })
            .collect();
        let w = Tensor::from_vec(w, batch.sigmas.dims(), batch.x.device())?.to_dtype(batch.x.dtype())?.unsqueeze(2)?;
        return (denoised - &batch.x)?.sqr()?.broadcast_mul(&w)?.flatten_from(1)?.mean(1);
    }
    let mse = (denoised - &batch.x)?.sqr()?.flatten_from(1)?.mean(1)?;
    // w = (σ² + σ_d²) · (σ·σ_d)^-2, computed on the tensor (no gradient flows into σ anyway).
    let wd = batch.weight_sd(denoiser);
    let w = ((batch.sigmas.sqr()? + wd * wd)? / (&batch.sigmas * wd)?.sqr()?)?;
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
