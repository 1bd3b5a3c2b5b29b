//! What a job is and how it is run: the job, its sampler settings (with the caps every setting
//! read from a file or a command line is checked against), progress and the result. A leaf of the
//! job modules: [`crate::tasks`] runs jobs, [`crate::separation`] streams separation, and both
//! depend on this, not on each other.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::audio::AudioBuffer;
use crate::model_file::Model;
use crate::sampler::SamplerConfig;
use crate::schedule::karras;
use crate::separator::Likelihood;
use crate::stereo::StereoMode;
use crate::wiener::WienerFilter;

/// What to do.
#[derive(Clone, Debug)]
pub enum Job {
    /// Split a mix into the model's stems.
    Separate { mix: AudioBuffer },
    /// Generate the stems marked [`Given::Generate`], fitting the others (one entry per stem, in
    /// stem order).
    Impute { given: Vec<Given> },
    /// Generate every stem from nothing.
    Generate { seconds: f64, rate: u32, channels: usize },
}

/// One stem of an imputation job.
#[derive(Clone, Debug, PartialEq)]
pub enum Given {
    /// Made by the model, fitting the other stems.
    Generate,
    /// Kept silent: given as silence as long as the given audio (so a shell never builds the
    /// zeros itself, and "silence only" cannot be asked for: it has no length).
    Silent,
    /// Given as this audio; resampled and spread to the job's channels as needed.
    Audio(AudioBuffer),
}

impl Given {
    pub fn audio(&self) -> Option<&AudioBuffer> {
        match self {
            Given::Audio(a) => Some(a),
            _ => None,
        }
    }

    /// What imputation will do to given stems that do not match each other (`names`: the stems'
    /// names, in the order of `given`), one line each for the user: stems at another rate than
    /// the first given one are resampled to it; shorter ones are padded with silence to the
    /// longest (the stems made are as long as the longest given one).
    pub fn alignment_notes(names: &[String], given: &[Given]) -> Vec<String> {
        let audio: Vec<(&str, &AudioBuffer)> =
            names.iter().zip(given).filter_map(|(n, g)| g.audio().map(|a| (n.as_str(), a))).collect();
        let Some(&(first, reference)) = audio.first() else {
            return Vec::new();
        };
        let seconds = |a: &AudioBuffer| a.frames() as f64 / a.rate.max(1) as f64;
        let longest = audio.iter().map(|(_, a)| seconds(a)).fold(0.0, f64::max);
        let mut notes = Vec::new();
        for &(name, a) in &audio {
            if a.rate != reference.rate {
                notes.push(format!("the given {name} stem is at {} Hz: resampled to {} Hz (the rate of {first})", a.rate, reference.rate));
            }
            // shorter by more than a millisecond (rounding of resampled lengths is not worth a note)
            if seconds(a) + 1e-3 < longest {
                notes.push(format!("the given {name} stem is {:.3} s long: padded with silence to {longest:.3} s (the longest given stem)", seconds(a)));
            }
        }
        notes
    }
}

/// Most sampler steps accepted (the paper uses 150-256; each step is a network call per window).
pub const MAX_STEPS: usize = 10_000;
/// Most resamples per step accepted (the paper uses 1-2).
pub const MAX_RESAMPLES: usize = 100;
/// Most windows per network call accepted (the default is 8; memory grows with it).
pub const MAX_BATCH: usize = 1024;

/// Sampler settings of one run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub steps: usize,
    pub churn: f32,
    pub resamples: usize,
    pub sigma_min: f32,
    pub sigma_max: f32,
    pub rho: f32,
    pub likelihood: Likelihood,
    pub seed: u64,
    /// Downmix to mono before processing.
    pub mono: bool,
    /// Windows (× channels × posterior samples averaged) per network call in separation.
    pub batch: usize,
    /// Imputation with a per-stem σ model: guidance weight on the given stems (see
    /// [`SamplerConfig::guidance`]); 0 = none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub guidance: f32,
    /// Guide only at σ in `[lo, hi]` (see [`SamplerConfig::guidance_interval`]); absent: every step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guidance_interval: Option<(f32, f32)>,
    /// Rescale of the guided estimate to the unguided one's level (see
    /// [`SamplerConfig::guidance_rescale`]); 0 = none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub guidance_rescale: f32,
    /// Separation: posterior samples averaged per window ([`crate::separator::separate_mean`]);
    /// 1 = one sample, as the paper. Each costs a full separation.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub average: usize,
    /// Separation: the Wiener post-filter applied to each window's stems; absent (the released
    /// settings, and files that do not store it): none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wiener: Option<WienerFilter>,
    /// Separation of a mix of two or more channels: each channel on its own (the released
    /// settings, and files that do not store it) or the mid once, shared out to the channels.
    #[serde(default, skip_serializing_if = "is_each")]
    pub stereo: StereoMode,
}

fn is_each(m: &StereoMode) -> bool {
    *m == StereoMode::Each
}

fn is_zero(x: &f32) -> bool {
    *x == 0.0
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// Largest guidance weight accepted (the reading notes suggest 0.5–2).
pub const MAX_GUIDANCE: f32 = 10.0;

impl Settings {
    /// The released separation settings (`eval_msdm_dirac`): 150 steps, S_churn 20, 2 resamples,
    /// σ ∈ [1e-4, 1], ρ 7, Dirac with bass constrained.
    pub fn separation() -> Self {
        Self {
            steps: 150,
            churn: 20.0,
            resamples: 2,
            sigma_min: 1e-4,
            sigma_max: 1.0,
            rho: 7.0,
            likelihood: Likelihood::Dirac { constrained: 0 },
            seed: 0,
            mono: false,
            batch: 8,
            guidance: 0.0,
            guidance_interval: None,
            guidance_rescale: 0.0,
            average: 1,
            wiener: None,
            stereo: StereoMode::Each,
        }
    }

    /// The released Gaussian separation settings (`eval_msdm_gaussian`): S_churn 40, γ = 0.75σ.
    pub fn separation_gaussian() -> Self {
        Self { churn: 40.0, likelihood: Likelihood::Gaussian { gamma_coeff: 0.75 }, ..Self::separation() }
    }

    /// The generation notebook's settings: 150 steps, S_churn 20, σ_max 20, no resamples.
    pub fn generation() -> Self {
        Self { steps: 150, churn: 20.0, resamples: 1, sigma_max: 20.0, ..Self::separation() }
    }

    /// The imputation notebook's settings: 256 steps, S_churn 10, σ_max 20, no resamples.
    pub fn imputation() -> Self {
        Self { steps: 256, churn: 10.0, resamples: 1, sigma_max: 20.0, ..Self::separation() }
    }

    /// Defaults for a job: the model file's own defaults for that job if it has them
    /// (`meta.info.defaults.{separate,generate,impute}`), else the released settings.
    pub fn for_job(job: &Job, model: &Model) -> Self {
        match job {
            Job::Separate { .. } => Self::model_defaults(model, "separate", Self::separation()),
            Job::Impute { .. } => Self::model_defaults(model, "impute", Self::imputation()),
            Job::Generate { .. } => Self::model_defaults(model, "generate", Self::generation()),
        }
    }

    /// [`Settings::for_job`] for separation.
    pub fn for_separation(model: &Model) -> Self {
        Self::model_defaults(model, "separate", Self::separation())
    }

    fn model_defaults(model: &Model, key: &str, base: Self) -> Self {
        model
            .meta
            .info
            .get("defaults")
            .and_then(|d| d.get(key))
            .and_then(|v| serde_json::from_value::<Self>(v.clone()).ok())
            .unwrap_or(base)
    }

    /// These settings with the Gaussian likelihood (γ = `gamma_coeff`·σ). A schedule tuned for the
    /// Dirac likelihood (the released one, or a model file's stored separation defaults) does not
    /// carry over: the Gaussian takes the released Gaussian schedule (steps, resamples, S_churn,
    /// σ range, ρ) and keeps only the seed, mono, batch, average, Wiener post-filter and stereo
    /// mode. With the bundled file's Dirac schedule (16 × 2 from σ 0.3) the Gaussian scored
    /// −21.8 dB SI-SDRi on the test songs.
    /// Settings that are Gaussian already keep their schedule.
    pub fn with_gaussian(self, gamma_coeff: f32) -> Self {
        let likelihood = Likelihood::Gaussian { gamma_coeff };
        match self.likelihood {
            Likelihood::Gaussian { .. } => Self { likelihood, ..self },
            Likelihood::Dirac { .. } => Self {
                likelihood,
                seed: self.seed,
                mono: self.mono,
                batch: self.batch,
                average: self.average,
                wiener: self.wiener,
                stereo: self.stereo,
                ..Self::separation_gaussian()
            },
        }
    }

    /// Items per window the network separates for a mix of `channels` channels: one per channel,
    /// or one in all when the mix is downmixed (`mono`) or its mid is separated ([`StereoMode::Mid`]).
    pub fn separation_items(&self, channels: usize) -> usize {
        if self.mono {
            channels.min(1)
        } else {
            self.stereo.network_channels(channels)
        }
    }

    pub fn sampler_config(&self) -> SamplerConfig {
        SamplerConfig {
            sigmas: karras(self.steps, self.sigma_min, self.sigma_max, self.rho),
            churn: self.churn,
            resamples: self.resamples,
            guidance: self.guidance,
            guidance_interval: self.guidance_interval,
            guidance_rescale: self.guidance_rescale,
        }
    }

    /// Checks the settings are usable. They can come from a model file's metadata or a JSON
    /// file, so the counts that size work and buffers are capped ([`MAX_STEPS`],
    /// [`MAX_RESAMPLES`], [`MAX_BATCH`]) and every float must be finite.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.resamples == 0 {
            bail!("steps and resamples must be at least 1");
        }
        if self.steps > MAX_STEPS || self.resamples > MAX_RESAMPLES {
            bail!(
                "steps {} x resamples {}: at most {MAX_STEPS} steps and {MAX_RESAMPLES} resamples (the paper uses 150-256 steps and 1-2 resamples)",
                self.steps,
                self.resamples
            );
        }
        if self.batch > MAX_BATCH {
            bail!("batch {}: at most {MAX_BATCH}", self.batch);
        }
        if !(self.sigma_min > 0.0 && self.sigma_max > self.sigma_min && self.sigma_max.is_finite() && self.rho > 0.0 && self.rho.is_finite()) {
            bail!(
                "the noise schedule needs 0 < sigma_min < sigma_max and rho > 0, all finite (got sigma_min {}, sigma_max {}, rho {}; \
                 set them with --sigma-min, --sigma-max and --rho)",
                self.sigma_min,
                self.sigma_max,
                self.rho
            );
        }
        if !(self.churn >= 0.0 && self.churn.is_finite()) {
            bail!("churn must be finite and ≥ 0");
        }
        if !(0.0..=MAX_GUIDANCE).contains(&self.guidance) {
            bail!("guidance {}: use a weight from 0 (none) to {MAX_GUIDANCE}", self.guidance);
        }
        if self.average == 0 || self.average > crate::separator::MAX_AVERAGE {
            bail!("average {}: give 1 to {} posterior samples per separation window", self.average, crate::separator::MAX_AVERAGE);
        }
        if !(0.0..=1.0).contains(&self.guidance_rescale) {
            bail!("guidance rescale {}: use a share from 0 (none) to 1 (the unguided level)", self.guidance_rescale);
        }
        if let Some((lo, hi)) = self.guidance_interval {
            if !(lo >= 0.0 && hi >= lo && hi.is_finite()) {
                bail!("guidance interval {lo},{hi}: give two noise levels 0 ≤ LO ≤ HI, e.g. 0.3,5");
            }
        }
        if let Some(w) = &self.wiener {
            w.validate()?;
        }
        if let Likelihood::Gaussian { gamma_coeff } = self.likelihood {
            if !(gamma_coeff >= 0.0 && gamma_coeff.is_finite()) {
                bail!("the Gaussian likelihood's gamma_coeff must be finite and ≥ 0 (got {gamma_coeff})");
            }
        }
        Ok(())
    }
}

/// Progress of a run in denoiser calls.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// The result: one buffer per stem at the job's rate, length and channel count.
#[derive(Clone, Debug)]
pub struct StemSet {
    pub names: Vec<String>,
    pub stems: Vec<AudioBuffer>,
    /// Separation: max |input − Σ stems| over all samples and channels, as written.
    pub residual_max: f32,
    /// Separation: max |input − Σ stems| before the unseen band was handed to the stems.
    pub unseen_max: f32,
    pub seconds: f64,
}

#[cfg(test)]
mod given_tests {
    use super::*;

    /// Stored defaults without a Wiener post-filter (every file before 2026-12-07, and the
    /// released settings) read as none; one that is stored comes back; a bad one is refused.
    #[test]
    fn the_wiener_post_filter_in_stored_settings() {
        let mut v = serde_json::to_value(Settings { steps: 16, ..Settings::separation() }).unwrap();
        assert!(v.get("wiener").is_none(), "the released settings store no post-filter: {v}");
        assert_eq!(crate::args::parse_settings(&v).unwrap().wiener, None);
        v["wiener"] = serde_json::json!({"frame": 16384, "exponent": 1.25});
        assert_eq!(crate::args::parse_settings(&v).unwrap().wiener, Some(WienerFilter::DEFAULT));
        v["wiener"] = serde_json::json!({"frame": 3, "exponent": 1.25});
        let err = format!("{:#}", crate::args::parse_settings(&v).unwrap_err());
        assert!(err.contains("Wiener frame 3"), "{err}");
    }

    #[test]
    fn given_stems_of_other_rates_and_lengths_get_a_note_each() {
        let names: Vec<String> = crate::STEMS.iter().map(|s| s.to_string()).collect();
        let a = |rate: u32, frames: usize| Given::Audio(AudioBuffer::new(rate, vec![vec![0.1; frames]]));
        let same = [Given::Generate, a(48_000, 4800), Given::Silent, a(48_000, 4800)];
        assert!(Given::alignment_notes(&names, &same).is_empty());
        let mixed = [Given::Generate, a(48_000, 4800), a(44_100, 4410), a(48_000, 9600)];
        let notes = Given::alignment_notes(&names, &mixed);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("drums stem is 0.100 s long: padded with silence to 0.200 s"), "{notes:?}");
        assert!(notes[1].contains("guitar stem is at 44100 Hz: resampled to 48000 Hz (the rate of drums)"), "{notes:?}");
        assert!(notes[2].contains("guitar stem is 0.100 s long"), "{notes:?}");
    }
}
