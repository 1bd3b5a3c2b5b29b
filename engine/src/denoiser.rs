//! The EDM-preconditioned denoiser D(x, σ) = clamp(c_skip·x + c_out·F_θ(c_in·x, ln σ / 4), −1, 1)
//! (Karras et al. 2022, σ_data from the config; the clamp is the reference's
//! `dynamic_threshold = 0` branch, applied in training and in every sampler call).
//!
//! Per-stem σ models (not in the reference; `ModelConfig::stem_sigmas`) precondition each stem
//! with its own σ: c_skip, c_out and c_in become `[B, C, 1]`, the network's time input is the
//! largest σ of the item and the per-stem levels enter through its stem embedding. A stem at σ = 0
//! is given: c_skip = 1 and c_out = 0, so D returns it unchanged (up to the clamp).

use candle_core::{DType, Result, Tensor};

use crate::graph::NetGraphs;
use crate::unet::stem_embedding::stem_c_noise;
use crate::unet::UNet1d;

/// Anything that denoises a `[B, C, T]` state at a noise level σ.
pub trait Denoiser {
    /// Number of stems (channels) the denoiser works on.
    fn channels(&self) -> usize;
    /// Input lengths must be a multiple of this.
    fn length_multiple(&self) -> usize;
    /// D(x, σ) with one σ for the whole batch.
    fn denoise(&self, x: &Tensor, sigma: f32) -> Result<Tensor>;
    /// Whether the denoiser takes one σ per stem ([`Self::denoise_stems`]).
    fn takes_stem_sigmas(&self) -> bool {
        false
    }
    /// D(x, σ) with one σ per stem (`sigmas`, C values; 0 = the stem is given, clean). A denoiser
    /// that does not take per-stem σ accepts only equal values.
    fn denoise_stems(&self, x: &Tensor, sigmas: &[f32]) -> Result<Tensor> {
        match sigmas.first() {
            Some(&s) if sigmas.iter().all(|&v| v == s) => self.denoise(x, s),
            _ => candle_core::bail!("this model takes one noise level for all stems, got {sigmas:?}"),
        }
    }
}

/// The EDM preconditioning around one score network.
pub struct EdmDenoiser {
    pub net: UNet1d,
    pub sigma_data: f64,
    /// The dtype the network runs in (f32 on CPU; f16/bf16 possible on GPUs).
    pub compute_dtype: DType,
    /// The network's calls captured as CUDA graphs (inference on CUDA only; see [`crate::graph`]).
    pub graphs: NetGraphs,
}

impl EdmDenoiser {
    pub fn new(net: UNet1d) -> Self {
        let sigma_data = net.config.diffusion_sigma_data;
        Self { net, sigma_data, compute_dtype: DType::F32, graphs: NetGraphs::default() }
    }

    /// D(x, σ) with one σ per batch item (`sigmas` `[B]`) or, for a per-stem σ model, per item
    /// and stem (`[B, C]`). Composed of differentiable ops: training's reference path.
    pub fn denoise_sigmas(&self, x: &Tensor, sigmas: &Tensor) -> Result<Tensor> {
        let sd2 = self.sigma_data * self.sigma_data;
        let b = sigmas.dim(0)?;
        let per_stem = sigmas.rank() == 2;
        let s = if per_stem { sigmas.unsqueeze(2)? } else { sigmas.reshape((b, 1, 1))? };
        let s2 = s.sqr()?;
        let c_skip = (s2.clone() + sd2)?.recip()?.affine(sd2, 0.0)?;
        let c_out = (s.clone() * self.sigma_data)?.broadcast_mul(&(s2.clone() + sd2)?.sqrt()?.recip()?)?;
        let c_in = (s2 + sd2)?.sqrt()?.recip()?;
        let f = if per_stem {
            let c_noise = (sigmas.max(1)?.log()? * 0.25)?;
            let stem_noise = (sigmas.clamp(crate::unet::stem_embedding::CLEAN_SIGMA_FLOOR, f32::MAX)?.log()? * 0.25)?;
            self.run_net_stems(&x.broadcast_mul(&c_in)?, &c_noise, &stem_noise)?
        } else {
            self.run_net(&x.broadcast_mul(&c_in)?, &(sigmas.log()? * 0.25)?)?
        };
        (x.broadcast_mul(&c_skip)? + f.broadcast_mul(&c_out)?)?.clamp(-1f32, 1f32)
    }

    /// F_θ with per-stem noise levels (c_noise `[B]`, stem c_noise `[B, C]`), in the compute
    /// dtype, returned as f32 (never from a CUDA graph: those capture one input signature).
    pub(crate) fn run_net_stems(&self, x: &Tensor, c_noise: &Tensor, stem_noise: &Tensor) -> Result<Tensor> {
        if self.compute_dtype == DType::F32 || x.dtype() != DType::F32 {
            return self.net.forward_stems(x, c_noise, Some(stem_noise));
        }
        let dt = self.compute_dtype;
        let y = self.net.forward_stems(&x.to_dtype(dt)?, &c_noise.to_dtype(dt)?, Some(&stem_noise.to_dtype(dt)?))?;
        y.to_dtype(DType::F32)
    }

    /// F_θ(x, c_noise) in the compute dtype, returned as f32; replayed from a CUDA graph where
    /// that applies.
    pub(crate) fn run_net(&self, x: &Tensor, c_noise: &Tensor) -> Result<Tensor> {
        self.graphs.run(x, c_noise, &|x, c| self.run_net_eager(x, c))
    }

    fn run_net_eager(&self, x: &Tensor, c_noise: &Tensor) -> Result<Tensor> {
        if self.compute_dtype == DType::F32 {
            return self.net.forward(x, c_noise);
        }
        let y = self.net.forward(&x.to_dtype(self.compute_dtype)?, &c_noise.to_dtype(self.compute_dtype)?)?;
        y.to_dtype(DType::F32)
    }
}

/// The preconditioning coefficients (c_skip, c_out, c_in, c_noise) for one σ, in f32.
pub fn edm_coefficients(sigma: f32, sigma_data: f32) -> (f32, f32, f32, f32) {
    let sd2 = sigma_data * sigma_data;
    let s2 = sigma * sigma;
    let c_skip = sd2 / (s2 + sd2);
    let c_out = sigma * sigma_data * (sd2 + s2).powf(-0.5);
    let c_in = (s2 + sd2).powf(-0.5);
    let c_noise = sigma.ln() * 0.25;
    (c_skip, c_out, c_in, c_noise)
}

impl Denoiser for EdmDenoiser {
    fn channels(&self) -> usize {
        self.net.config.in_channels
    }

    fn length_multiple(&self) -> usize {
        self.net.config.length_multiple()
    }

    fn denoise(&self, x: &Tensor, sigma: f32) -> Result<Tensor> {
        if self.net.takes_stem_sigmas() {
            return self.denoise_stems(x, &vec![sigma; self.channels()]);
        }
        let b = x.dim(0)?;
        let (c_skip, c_out, c_in, c_noise) = edm_coefficients(sigma, self.sigma_data as f32);
        let c_noise = Tensor::full(c_noise, b, x.device())?;
        let f = self.run_net(&(x * c_in as f64)?, &c_noise)?;
        ((x * c_skip as f64)? + (f * c_out as f64)?)?.clamp(-1f32, 1f32)
    }

    fn takes_stem_sigmas(&self) -> bool {
        self.net.takes_stem_sigmas()
    }

    fn denoise_stems(&self, x: &Tensor, sigmas: &[f32]) -> Result<Tensor> {
        let (b, c) = (x.dim(0)?, x.dim(1)?);
        if sigmas.len() != c || sigmas.iter().any(|s| !(s.is_finite() && *s >= 0.0)) {
            candle_core::bail!("denoise_stems: {c} stems need {c} finite, non-negative noise levels, got {sigmas:?}");
        }
        let top = sigmas.iter().copied().fold(0f32, f32::max);
        if !self.net.takes_stem_sigmas() {
            if sigmas.iter().any(|&s| s != top) {
                candle_core::bail!("this model takes one noise level for all stems, got {sigmas:?}");
            }
            return self.denoise(x, top);
        }
        if top == 0.0 {
            candle_core::bail!("denoise_stems: every stem is given (σ = 0); there is nothing to denoise");
        }
        let sd = self.sigma_data as f32;
        let coeff: Vec<_> = sigmas.iter().map(|&s| edm_coefficients(s, sd)).collect();
        let col = |f: fn(&(f32, f32, f32, f32)) -> f32| Tensor::from_vec(coeff.iter().map(f).collect::<Vec<_>>(), (1, c, 1), x.device());
        let (c_skip, c_out, c_in) = (col(|k| k.0)?, col(|k| k.1)?, col(|k| k.2)?);
        let c_noise = Tensor::full(edm_coefficients(top, sd).3, b, x.device())?;
        let stem: Vec<f32> = (0..b).flat_map(|_| sigmas.iter().map(|&s| stem_c_noise(s))).collect();
        let stem = Tensor::from_vec(stem, (b, c), x.device())?;
        let f = self.run_net_stems(&x.broadcast_mul(&c_in)?, &c_noise, &stem)?;
        (x.broadcast_mul(&c_skip)? + f.broadcast_mul(&c_out)?)?.clamp(-1f32, 1f32)
    }
}

/// ISDM: one single-stem model per stem; D(x, σ)[:, n] = D⁽ⁿ⁾(x[:, n:n+1], σ), each with its own
/// clamp, concatenated in stem order (the paper's "weakly supervised" variant).
pub struct IsdmDenoiser {
    pub stems: Vec<EdmDenoiser>,
}

impl Denoiser for IsdmDenoiser {
    fn channels(&self) -> usize {
        self.stems.len()
    }

    fn length_multiple(&self) -> usize {
        self.stems.iter().map(|d| d.length_multiple()).fold(1, num_lcm)
    }

    fn denoise(&self, x: &Tensor, sigma: f32) -> Result<Tensor> {
        let outs = self
            .stems
            .iter()
            .enumerate()
            .map(|(n, d)| d.denoise(&x.narrow(1, n, 1)?, sigma))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&outs, 1)
    }
}

fn num_lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    a / gcd(a, b) * b
}
