//! The score network's hyper-parameters: the `model:` section of the reference training YAML
//! (audio-diffusion-pytorch 0.0.43 `AudioDiffusionModel` kwargs), plus named presets.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize};

/// Log-normal training distribution of σ: σ = exp(mean + std·n), n ~ N(0, 1).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SigmaDistribution {
    pub mean: f64,
    pub std: f64,
}

impl Default for SigmaDistribution {
    fn default() -> Self {
        Self { mean: -3.0, std: 1.0 }
    }
}

/// How a per-stem-σ model's training items are drawn (shares of the three tasks; they need not
/// sum to one, they are normalised). Each item is one task:
/// - `joint`: every stem at one σ (the reference objective: generation and Dirac separation);
/// - `conditional`: a random non-empty proper subset of the stems clean (σ = 0, no loss), the
///   others at one σ (imputation with the given stems clean);
/// - `independent`: one σ per stem, drawn independently (the marginals and everything between).
///
/// Two optional knobs shape the conditional items towards the product's main use, one stem made
/// to fit the other three (absent, they keep the first recipe):
/// - `one_left`: the share of conditional items with exactly one stem noisy (the rest draw a
///   uniform subset; with 4 stems the one-left case is then 4 of the 14 subsets);
/// - `conditional_sigma`: the σ distribution of the noisy stems of conditional items, so that
///   training can spend them at the noise levels where imputation decides pitch and onsets;
/// - `one_left_weights`: which stem the one-left items leave, one weight per stem in channel order
///   (absent: uniform), so that training can favour the headline job, a bass under the rest.
///
/// Unknown keys are refused here (not in the rest of the config, which reads reference files):
/// a misspelt knob, or a config newer than the binary, must not train the old recipe silently.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StemTaskMix {
    pub joint: f64,
    pub conditional: f64,
    pub independent: f64,
    #[serde(default, skip_serializing_if = "is_zero_share")]
    pub one_left: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditional_sigma: Option<SigmaDistribution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_left_weights: Option<[f64; 4]>,
}

fn is_zero_share(x: &f64) -> bool {
    *x == 0.0
}

impl Default for StemTaskMix {
    /// Tilted towards conditional items (the reading notes suggest 0.5 / 0.35 / 0.15): the
    /// network starts from a joint model, and imputation is what it has not learned.
    fn default() -> Self {
        Self { joint: 0.4, conditional: 0.45, independent: 0.15, one_left: 0.0, conditional_sigma: None, one_left_weights: None }
    }
}

/// The reference `model:` kwargs. Unknown keys are ignored, so a reference config can be read as is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub in_channels: usize,
    pub channels: usize,
    pub patch_factor: usize,
    #[serde(default = "one")]
    pub patch_blocks: usize,
    pub resnet_groups: usize,
    pub kernel_multiplier_downsample: usize,
    pub multipliers: Vec<usize>,
    pub factors: Vec<usize>,
    pub num_blocks: Vec<usize>,
    #[serde(deserialize_with = "bools_or_ints")]
    pub attentions: Vec<bool>,
    pub attention_heads: usize,
    pub attention_features: usize,
    pub attention_multiplier: usize,
    #[serde(default)]
    pub use_nearest_upsample: bool,
    #[serde(default = "yes")]
    pub use_skip_scale: bool,
    #[serde(default = "yes")]
    pub use_attention_bottleneck: bool,
    #[serde(default = "yes")]
    pub use_context_time: bool,
    #[serde(default = "sigma_data_default")]
    pub diffusion_sigma_data: f64,
    #[serde(default)]
    pub diffusion_sigma_distribution: SigmaDistribution,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_sizes_init: Option<Vec<usize>>,
    /// Not in the reference: the network takes one noise level per stem (σ `[B, C]`) through an
    /// extra, zero-initialised embedding (see [`crate::unet`]). Absent (false) in reference
    /// configs and older model files, which therefore keep their ids.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stem_sigmas: bool,
    /// Training only, for per-stem-σ models: the task mixture (default [`StemTaskMix::default`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stem_tasks: Option<StemTaskMix>,
    /// Training only: weight the loss as EDM would for data whose RMS is this σ_data,
    /// w(σ) = (σ² + s²)/(σ·s)², instead of with `diffusion_sigma_data` (the preconditioning is
    /// unchanged). Our stems' RMS is 0.035–0.076 against the reference's σ_data 0.2, so the
    /// reference weight gives the noise levels above the stems' RMS, where imputation decides
    /// pitch and onsets, up to (0.2/0.05)² = 16 times less weight than EDM intends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_sigma_data: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f64>,
}

fn is_false(b: &bool) -> bool {
    !*b
}
fn one() -> usize {
    1
}
fn yes() -> bool {
    true
}
fn sigma_data_default() -> f64 {
    0.2
}

fn bools_or_ints<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Vec<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Bool(bool),
        Int(i64),
    }
    let v: Vec<B> = Vec::deserialize(d)?;
    Ok(v.into_iter()
        .map(|b| match b {
            B::Bool(b) => b,
            B::Int(i) => i != 0,
        })
        .collect())
}

impl ModelConfig {
    /// The paper's MSDM configuration (405,497,700 parameters).
    pub fn paper() -> Self {
        Self {
            in_channels: 4,
            channels: 256,
            patch_factor: 16,
            patch_blocks: 1,
            resnet_groups: 8,
            kernel_multiplier_downsample: 2,
            multipliers: vec![1, 2, 4, 4, 4, 4, 4],
            factors: vec![4, 4, 4, 2, 2, 2],
            num_blocks: vec![2, 2, 2, 2, 2, 2],
            attentions: vec![false, false, false, true, true, true],
            attention_heads: 8,
            attention_features: 128,
            attention_multiplier: 2,
            use_nearest_upsample: false,
            use_skip_scale: true,
            use_attention_bottleneck: true,
            use_context_time: true,
            diffusion_sigma_data: 0.2,
            diffusion_sigma_distribution: SigmaDistribution::default(),
            kernel_sizes_init: None,
            stem_sigmas: false,
            stem_tasks: None,
            loss_sigma_data: None,
            learning_rate: Some(1e-4),
            beta1: Some(0.9),
            beta2: Some(0.99),
        }
    }

    /// The paper's ISDM configuration: the same network on one stem.
    pub fn paper_isdm() -> Self {
        Self { in_channels: 1, learning_rate: Some(1e-5), ..Self::paper() }
    }

    /// A small network for the bundled default model (9.5M parameters; about 0.3 s per 12 s
    /// denoiser call on 2 CPU cores).
    pub fn small() -> Self {
        Self {
            in_channels: 4,
            channels: 64,
            patch_factor: 16,
            patch_blocks: 1,
            resnet_groups: 8,
            kernel_multiplier_downsample: 2,
            multipliers: vec![1, 2, 2, 4, 4],
            factors: vec![4, 4, 2, 2],
            num_blocks: vec![1, 1, 1, 1],
            attentions: vec![false, false, true, true],
            attention_heads: 4,
            attention_features: 32,
            attention_multiplier: 2,
            ..Self::paper()
        }
    }

    /// A tiny network for tests (milliseconds per call).
    pub fn tiny() -> Self {
        Self {
            in_channels: 4,
            channels: 16,
            patch_factor: 4,
            patch_blocks: 1,
            resnet_groups: 4,
            kernel_multiplier_downsample: 2,
            multipliers: vec![1, 2, 2],
            factors: vec![4, 2],
            num_blocks: vec![1, 1],
            attentions: vec![false, true],
            attention_heads: 2,
            attention_features: 8,
            attention_multiplier: 2,
            ..Self::paper()
        }
    }

    /// A named preset (`tiny`, `small`, `paper`, `paper-isdm`) or a path to a JSON file.
    pub fn from_name_or_file(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "small" => Ok(Self::small()),
            "paper" => Ok(Self::paper()),
            "paper-isdm" => Ok(Self::paper_isdm()),
            path => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("'{path}' is neither a preset (tiny, small, paper, paper-isdm) nor a readable JSON file")
                })?;
                Self::from_json(&text).with_context(|| format!("reading the model config in '{path}'"))
            }
        }
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serializes")
    }

    /// Number of U-Net levels.
    pub fn num_layers(&self) -> usize {
        self.multipliers.len().saturating_sub(1)
    }

    /// The task mixture of per-stem-σ training.
    pub fn stem_task_mix(&self) -> StemTaskMix {
        self.stem_tasks.unwrap_or_default()
    }

    /// Width of the σ mapping (4 × channels).
    pub fn mapping_features(&self) -> usize {
        self.channels * 4
    }

    /// Refuses sizes past [`MAX_CONFIG_SIZE`] / [`MAX_CONFIG_LEVELS`] and a length multiple past
    /// [`MAX_LENGTH_MULTIPLE`]. Configs come from model files and checkpoints, and the network's
    /// shapes are products of these numbers: within the bounds no product overflows, and no
    /// division by zero is possible.
    fn check_bounds(&self) -> Result<()> {
        let sizes = [
            ("in_channels", self.in_channels),
            ("channels", self.channels),
            ("patch_factor", self.patch_factor),
            ("patch_blocks", self.patch_blocks),
            ("resnet_groups", self.resnet_groups),
            ("kernel_multiplier_downsample", self.kernel_multiplier_downsample),
            ("attention_heads", self.attention_heads),
            ("attention_features", self.attention_features),
            ("attention_multiplier", self.attention_multiplier),
        ];
        let lists = [
            ("multipliers", &self.multipliers),
            ("factors", &self.factors),
            ("num_blocks", &self.num_blocks),
        ];
        let listed = lists.iter().flat_map(|(k, v)| v.iter().map(move |&x| (*k, x)));
        let kernels = self.kernel_sizes_init.iter().flatten().map(|&x| ("kernel_sizes_init", x));
        if let Some((key, v)) = sizes.into_iter().chain(listed).chain(kernels).find(|&(_, v)| v > MAX_CONFIG_SIZE) {
            bail!("model config: `{key}` is {v}, more than {MAX_CONFIG_SIZE} (MAX_CONFIG_SIZE): not a real model (damaged file?)");
        }
        if self.resnet_groups == 0 {
            bail!("model config: resnet_groups must be positive");
        }
        let longest = [self.multipliers.len(), self.factors.len(), self.num_blocks.len(), self.attentions.len()];
        let longest = longest.into_iter().chain(self.kernel_sizes_init.as_ref().map(Vec::len)).max().unwrap_or(0);
        if longest > MAX_CONFIG_LEVELS + 1 {
            bail!("model config: a list of {longest} levels, more than {MAX_CONFIG_LEVELS} (MAX_CONFIG_LEVELS)");
        }
        let multiple = self
            .factors
            .iter()
            .try_fold(self.patch_factor.checked_pow(self.patch_blocks as u32), |m, &f| m.map(|m| m.checked_mul(f)))
            .flatten()
            .filter(|&m| m <= MAX_LENGTH_MULTIPLE);
        if multiple.is_none() {
            bail!(
                "model config: patch_factor^patch_blocks x the factors is more than {MAX_LENGTH_MULTIPLE} (MAX_LENGTH_MULTIPLE): \
                 not a real model (damaged file?)"
            );
        }
        if !self.diffusion_sigma_data.is_finite() || !self.diffusion_sigma_distribution.mean.is_finite() || !self.diffusion_sigma_distribution.std.is_finite() {
            bail!("model config: diffusion_sigma_data and diffusion_sigma_distribution must be finite");
        }
        Ok(())
    }

    /// Input lengths must be a multiple of this.
    pub fn length_multiple(&self) -> usize {
        self.patch_factor.pow(self.patch_blocks as u32) * self.factors.iter().product::<usize>()
    }

    /// Checks that the network can be built from this configuration.
    pub fn validate(&self) -> Result<()> {
        self.check_bounds()?;
        let n = self.num_layers();
        if n == 0 {
            bail!("model config: `multipliers` needs at least two entries");
        }
        if self.factors.len() != n || self.num_blocks.len() != n || self.attentions.len() != n {
            bail!(
                "model config: `factors`, `num_blocks` and `attentions` need {n} entries each (one per level), got {}, {} and {}",
                self.factors.len(),
                self.num_blocks.len(),
                self.attentions.len()
            );
        }
        if self.in_channels == 0 || self.channels == 0 || self.patch_factor == 0 || self.patch_blocks == 0 {
            bail!("model config: in_channels, channels, patch_factor and patch_blocks must be positive");
        }
        if self.channels % self.patch_factor != 0 {
            bail!("model config: channels ({}) must be divisible by patch_factor ({})", self.channels, self.patch_factor);
        }
        if self.kernel_multiplier_downsample % 2 != 0 {
            bail!("model config: kernel_multiplier_downsample must be even");
        }
        if self.channels % 2 != 0 {
            bail!("model config: channels must be even (time embedding)");
        }
        for &m in &self.multipliers {
            let c = self.channels * m;
            if c % self.resnet_groups != 0 {
                bail!("model config: {c} channels are not divisible by resnet_groups ({})", self.resnet_groups);
            }
        }
        if self.factors.iter().any(|&f| f == 0) {
            bail!("model config: factors must be positive");
        }
        if self.patch_blocks != 1 && self.patch_factor.pow(self.patch_blocks as u32) > self.channels {
            bail!("model config: patch_factor^patch_blocks exceeds channels");
        }
        // Patch/unpatch ResNet blocks use GroupNorm with min(patch_factor, channels) groups.
        let (ic, pf) = (self.in_channels, self.patch_factor);
        for i in 0..self.patch_blocks {
            let pre = ic * pf.pow(i as u32);
            let post = if i + 1 < self.patch_blocks { ic * pf.pow(i as u32 + 1) } else { self.channels };
            let groups = pf.min(pre);
            if post % pf != 0 || (post / pf) % groups != 0 || pre % groups != 0 {
                let step = pf * groups;
                let hint = if i + 1 == self.patch_blocks && pre % groups == 0 {
                    let lower = self.channels / step * step;
                    match lower {
                        0 => format!(" (try channels {step})"),
                        _ => format!(" (try channels {lower} or {})", lower + step),
                    }
                } else {
                    String::new()
                };
                bail!(
                    "model config: the patch block maps {pre} to {} channels with GroupNorm({groups}); \
                     channels/patch_factor must be divisible by min(patch_factor, in_channels){hint}",
                    post / pf
                );
            }
        }
        if !self.use_context_time {
            bail!("model config: use_context_time=false is not supported (the denoiser needs σ conditioning)");
        }
        if !(self.diffusion_sigma_data > 0.0) {
            bail!("model config: diffusion_sigma_data must be positive");
        }
        if let Some(s) = self.loss_sigma_data {
            if !(s.is_finite() && s > 0.0) {
                bail!("model config: `loss_sigma_data` must be a positive number (the stems' RMS), got {s}");
            }
        }
        if let Some(m) = self.stem_tasks {
            let shares = [m.joint, m.conditional, m.independent];
            if !self.stem_sigmas {
                bail!("model config: `stem_tasks` needs `stem_sigmas: true` (a network that takes one σ per stem)");
            }
            if shares.iter().any(|s| !s.is_finite() || *s < 0.0) || shares.iter().sum::<f64>() <= 0.0 {
                bail!("model config: `stem_tasks` shares must be finite, non-negative and not all zero, got {shares:?}");
            }
            if m.conditional > 0.0 && self.in_channels < 2 {
                bail!("model config: conditional training items need at least two stems");
            }
            if !(0.0..=1.0).contains(&m.one_left) {
                bail!("model config: `stem_tasks.one_left` is a share of the conditional items, in [0, 1]; got {}", m.one_left);
            }
            if let Some(d) = m.conditional_sigma {
                if !(d.mean.is_finite() && d.std.is_finite() && d.std >= 0.0) {
                    bail!("model config: `stem_tasks.conditional_sigma` needs a finite mean and a non-negative std, got {d:?}");
                }
            }
            if let Some(w) = m.one_left_weights {
                if self.in_channels != w.len() {
                    bail!("model config: `stem_tasks.one_left_weights` has one weight per stem (4), but the model has {} stems", self.in_channels);
                }
                if w.iter().any(|x| !x.is_finite() || *x < 0.0) || w.iter().sum::<f64>() <= 0.0 {
                    bail!("model config: `stem_tasks.one_left_weights` must be finite, non-negative and not all zero, got {w:?}");
                }
            }
        }
        Ok(())
    }

    /// The stems this model produces, in channel order (4-channel models: bass, drums, guitar, piano).
    pub fn default_stems(&self) -> Vec<String> {
        if self.in_channels == crate::STEMS.len() {
            crate::STEMS.iter().map(|s| s.to_string()).collect()
        } else {
            (0..self.in_channels).map(|i| format!("source{i}")).collect()
        }
    }
}

/// Largest number accepted in a config (channels, factors, heads, ...): 4,096. The paper's largest
/// is 256 channels; products of a few such numbers stay far from overflowing.
pub const MAX_CONFIG_SIZE: usize = 4096;
/// Most U-Net levels accepted (the paper has 6).
pub const MAX_CONFIG_LEVELS: usize = 32;
/// Largest length multiple (patch_factor^patch_blocks x the factors) accepted: 2^24 samples,
/// 12.7 minutes at 22,050 Hz; the paper's is 8,192.
pub const MAX_LENGTH_MULTIPLE: usize = 1 << 24;

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
