//! The run directory: what a training run keeps on disk so it can be resumed bit-for-bit.
//!
//! - `trainer.json`: the run's settings and progress (step, best validation loss, time spent);
//!   written last at every checkpoint, so it names the step the other files hold;
//! - `model.safetensors`: the weights in our model format ([`crate::model_file`]), with the
//!   provenance in `meta.info` (steps, data, seed, CPU seconds);
//! - `optimizer.safetensors`: Adam's moments and step count;
//! - `best.safetensors`: the weights with the lowest validation loss so far;
//! - `ema.safetensors`: the moving average of the weights, when the run keeps one ([`super::ema`]);
//! - `train.csv`: `step,loss,steps_per_s,elapsed_s,val_loss,ema_val_loss`.
//!
//! There is no RNG state file: every random draw of step s is derived from (seed, s) (see
//! [`super::seeds`]), so the step count is the RNG state.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::adam::AdamConfig;
use super::ema::EmaState;
use crate::config::ModelConfig;

pub const STATE_FILE: &str = "trainer.json";
pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const BEST_FILE: &str = "best.safetensors";
pub const EMA_FILE: &str = "ema.safetensors";
pub const CSV_FILE: &str = "train.csv";
pub const CSV_HEADER: &str = "step,loss,steps_per_s,elapsed_s,val_loss,ema_val_loss";
const STATE_VERSION: u32 = 1;

/// What defines a run: changing any of these would make a resumed run differ from an
/// uninterrupted one, so they are fixed when the run is created.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub config: ModelConfig,
    /// Dataset root holding `<split>/<Track>/{bass,drums,guitar,piano}.wav`.
    pub data_root: PathBuf,
    pub train_split: String,
    pub val_split: String,
    /// Training window in samples (a multiple of the config's length multiple).
    pub window: usize,
    pub batch_size: usize,
    pub adam: AdamConfig,
    pub seed: u64,
    /// Track duration filter in seconds (the reference: 12 ≤ d < 640).
    pub min_duration: f64,
    pub max_duration: f64,
    /// Validation batches (of `batch_size` items) with fixed draws.
    pub val_batches: usize,
    /// For one-stem (ISDM) configs: the stem (0 bass, 1 drums, 2 guitar, 3 piano) to learn.
    #[serde(default)]
    pub stem: Option<usize>,
}

impl RunSettings {
    /// Reference defaults around `config`, `data_root` and `seed` (batch 8 and the window of the
    /// model file format's default for this config; lr/betas from the config when it has them).
    pub fn new(config: ModelConfig, data_root: PathBuf, seed: u64) -> Self {
        let d = AdamConfig::default();
        let adam = AdamConfig {
            lr: config.learning_rate.unwrap_or(d.lr),
            beta1: config.beta1.unwrap_or(d.beta1),
            beta2: config.beta2.unwrap_or(d.beta2),
            eps: d.eps,
        };
        Self {
            window: crate::model_file::Model::default_window(&config),
            config,
            data_root,
            train_split: "train".into(),
            val_split: "validation".into(),
            batch_size: 8,
            adam,
            seed,
            min_duration: 12.0,
            max_duration: 640.0,
            val_batches: 4,
            stem: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        self.adam.validate()?;
        let m = self.config.length_multiple();
        if self.window == 0 || self.window % m != 0 {
            bail!(
                "the training window {} is not a positive multiple of the model's length multiple {m} (try {})",
                self.window,
                self.window.div_ceil(m).max(1) * m
            );
        }
        if self.batch_size == 0 {
            bail!("the batch size must be at least 1");
        }
        match (self.config.in_channels, self.stem) {
            (4, None) => {}
            (4, Some(_)) => bail!("--stem is only for one-stem (ISDM) configs; this config has 4 channels"),
            (1, Some(s)) if s < 4 => {}
            (1, _) => bail!("a one-stem (ISDM) config needs --stem (bass, drums, guitar or piano)"),
            (c, _) => bail!("training reads 4-stem data: the config must have 4 channels (MSDM) or 1 (ISDM), not {c}"),
        }
        Ok(())
    }
}

/// The run's progress, saved in `trainer.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub version: u32,
    pub settings: RunSettings,
    /// Optimizer steps done (the weights on disk are after this many steps).
    pub step: u64,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<u64>,
    /// Training time summed over sessions: wall clock and process CPU time.
    pub wall_seconds: f64,
    pub cpu_seconds: f64,
    /// How the random draws are made (informative).
    pub rng: String,
    /// The moving average of the weights, when the run keeps one (it does not affect training, so
    /// it may start at any step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<EmaState>,
}

impl RunState {
    pub fn new(settings: RunSettings) -> Self {
        Self {
            version: STATE_VERSION,
            settings,
            step: 0,
            best_val_loss: None,
            best_step: None,
            wall_seconds: 0.0,
            cpu_seconds: 0.0,
            rng: "ChaCha20, stream per (seed, purpose, step); no state carried between steps".into(),
            ema: None,
        }
    }

    pub fn load(run_dir: &Path) -> Result<Self> {
        let p = run_dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!("'{}' is not a training run (no readable {STATE_FILE}); start one without --resume", run_dir.display())
        })?;
        let s: Self = serde_json::from_str(&text).with_context(|| format!("'{}' is damaged", p.display()))?;
        if s.version != STATE_VERSION {
            bail!("'{}' has version {}, this build reads version {STATE_VERSION}", p.display(), s.version);
        }
        Ok(s)
    }

    /// Writes `trainer.json` atomically.
    pub fn save(&self, run_dir: &Path) -> Result<()> {
        write_atomic(&run_dir.join(STATE_FILE), serde_json::to_string_pretty(self)?.as_bytes())
    }
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write '{}'", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move '{}' into place", path.display()))
}

/// The validation losses of one pass: of the weights and, when the run keeps one, of their average.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Validation {
    pub loss: f64,
    pub ema_loss: Option<f64>,
}

/// The CSV log. On resume, rows after the checkpoint's step are dropped (they belong to steps
/// that will be redone).
pub struct CsvLog {
    path: PathBuf,
}

impl CsvLog {
    pub fn open(run_dir: &Path, resume_step: u64) -> Result<Self> {
        let path = run_dir.join(CSV_FILE);
        let mut kept = vec![CSV_HEADER.to_string()];
        if path.exists() {
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read '{}'", path.display()))?;
            for line in text.lines().skip(1) {
                let step: Option<u64> = line.split(',').next().and_then(|s| s.parse().ok());
                if matches!(step, Some(s) if s <= resume_step) {
                    // rows of logs written before the ema_val_loss column get an empty one
                    let pad = CSV_HEADER.matches(',').count().saturating_sub(line.matches(',').count());
                    kept.push(format!("{line}{}", ",".repeat(pad)));
                }
            }
        }
        write_atomic(&path, (kept.join("\n") + "\n").as_bytes())?;
        Ok(Self { path })
    }

    pub fn append(&self, step: u64, loss: Option<f64>, steps_per_s: f64, elapsed_s: f64, val: Option<Validation>) -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.path)
            .with_context(|| format!("cannot append to '{}'", self.path.display()))?;
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.6}")).unwrap_or_default();
        let (v, ema) = (val.map(|v| v.loss), val.and_then(|v| v.ema_loss));
        writeln!(f, "{step},{},{steps_per_s:.4},{elapsed_s:.1},{},{}", opt(loss), opt(v), opt(ema))?;
        Ok(())
    }
}

/// CPU time (user + system) of this process in seconds, where the OS tells it (Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 14 (utime) and 15 (stime) of proc(5), counted from `state` = field 3; USER_HZ = 100
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
