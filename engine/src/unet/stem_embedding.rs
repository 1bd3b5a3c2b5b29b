//! Not in the reference: the per-stem noise levels as an extra input of the σ mapping, for models
//! that take one σ per stem (`ModelConfig::stem_sigmas`).
//!
//! Each stem's c_noise = ln σₙ / 4 gets learned Fourier features (the same frequencies for every
//! stem, like the reference's time embedding); the stems' features are concatenated and projected
//! to the mapping width by a linear layer and a GELU, then added to the time embedding before
//! `to_mapping`, where the reference adds its optional context features. The projection starts at
//! zero and GELU(0) = 0, so a model fine-tuned from a reference-style checkpoint computes exactly
//! the reference network until training moves it.

use candle_core::{Result, Tensor};

use super::blocks::Linear;
use super::params::{Init, Scope};
use crate::ops;

/// Fourier frequencies per stem.
pub const STEM_FREQUENCIES: usize = 16;

/// c_noise of a clean stem (σ = 0): ln σ is clamped at this σ, the schedules' smallest.
pub const CLEAN_SIGMA_FLOOR: f32 = 1e-4;

/// The per-stem c_noise ln(max(σ, [`CLEAN_SIGMA_FLOOR`]))/4.
pub fn stem_c_noise(sigma: f32) -> f32 {
    sigma.max(CLEAN_SIGMA_FLOOR).ln() * 0.25
}

pub struct StemEmbedding {
    frequencies: Tensor,
    to_features: Linear,
}

impl StemEmbedding {
    pub fn new(s: &Scope, stems: usize, mapping_features: usize) -> Result<Self> {
        let frequencies = s.get("frequencies", &[STEM_FREQUENCIES], Init::StandardNormal)?;
        let inputs = stems * (2 * STEM_FREQUENCIES + 1);
        let t = s.pp("to_features");
        let to_features = Linear {
            weight: t.get("weight", &[mapping_features, inputs], Init::Zeros)?,
            bias: Some(t.get("bias", &[mapping_features], Init::Zeros)?),
        };
        Ok(Self { frequencies, to_features })
    }

    /// `stem_noise` `[B, C]` (per-stem c_noise) → `[B, mapping_features]`.
    pub fn forward(&self, stem_noise: &Tensor) -> Result<Tensor> {
        let (b, c) = stem_noise.dims2()?;
        let s = stem_noise.unsqueeze(2)?; // [B, C, 1]
        let f = self.frequencies.reshape((1, 1, STEM_FREQUENCIES))?;
        let angles = (s.broadcast_mul(&f)? * (2.0 * std::f64::consts::PI))?;
        let feats = Tensor::cat(&[&s, &angles.sin()?, &angles.cos()?], 2)?;
        let feats = feats.reshape((b, c * (2 * STEM_FREQUENCIES + 1)))?;
        ops::gelu(&self.to_features.forward(&feats)?)
    }
}
