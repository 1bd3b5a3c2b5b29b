//! The training loop: batches from the multi-source dataset, the denoising loss, Adam, periodic
//! validation with fixed draws, checkpoints (every N steps, at the end and when asked to stop)
//! and bit-for-bit resume.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

use super::adam::Adam;
use super::ema::{EmaState, WeightAverage};
use super::loss::{denoising_loss, draw_noise, item_losses, LossBatch};
use super::net::TrainableNet;
use super::run::{self, CsvLog, RunSettings, RunState, Validation};
use super::seeds::{self, EpochSampler, Purpose};
use super::tasks::draw_stem_noise;
use crate::data::MultiSourceDataset;
use crate::denoiser::EdmDenoiser;
use crate::model_file::{Model, ModelMeta, StoreDType};

/// When to stop, checkpoint, validate and log. These may change between sessions of a run.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// Train until this many steps in total (not: this many more).
    pub steps: u64,
    /// Checkpoint every this many steps (0: only at the end and on stop).
    pub checkpoint_every: u64,
    /// Validate every this many steps (0: never).
    pub val_every: u64,
    /// Write a CSV row (mean loss since the last row) every this many steps.
    pub log_every: u64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self { steps: 1000, checkpoint_every: 500, val_every: 1000, log_every: 10 }
    }
}

/// What the loop reports to its caller (a progress bar).
#[derive(Clone, Debug)]
pub enum Event {
    /// The loop starts at `step` of `steps`.
    Started { step: u64, steps: u64, parameters: usize, train_items: usize, val_items: usize },
    /// A step finished: its loss, the mean loss of recent steps and the current speed.
    Step { step: u64, loss: f64, mean_loss: f64, steps_per_s: f64 },
    /// A validation pass finished (the weights' loss and, with an EMA, the average's); `best` when
    /// the weights' loss is the lowest so far (saved to best.safetensors).
    Validated { step: u64, loss: f64, ema_loss: Option<f64>, best: bool },
    Checkpointed { step: u64 },
}

/// How a call to [`train`] ended.
#[derive(Clone, Debug)]
pub struct Summary {
    pub start_step: u64,
    pub end_step: u64,
    /// True when the stop flag ended the loop before `steps`.
    pub stopped: bool,
    pub last_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub steps_per_s: f64,
}

/// A training run in memory: its settings and progress, the network's variables, the optimizer
/// and the data.
pub struct Trainer {
    pub run_dir: PathBuf,
    pub state: RunState,
    pub net: TrainableNet,
    adam: Adam,
    ema: Option<WeightAverage>,
    train_data: MultiSourceDataset,
    val_data: Option<MultiSourceDataset>,
    sampler: EpochSampler,
    /// Wall/CPU time of this session not yet added to `state`.
    session_wall: Instant,
    session_cpu: Option<f64>,
}

fn open_split(s: &RunSettings, split: &str) -> Result<MultiSourceDataset> {
    let ds = MultiSourceDataset::open(&s.data_root, split, s.window, s.min_duration, s.max_duration)
        .with_context(|| format!("opening the '{split}' split of {}", s.data_root.display()))?;
    if ds.is_empty() {
        bail!(
            "the '{split}' split of {} holds {:.1} s of audio, less than one training window of {} samples",
            s.data_root.display(),
            ds.total_samples() as f64 / crate::MODEL_RATE as f64,
            s.window
        );
    }
    if let Some(t) = ds.tracks().iter().find(|t| t.len < s.window) {
        bail!(
            "track {} in the '{split}' split is shorter ({} samples) than the training window ({} samples); \
             raise the minimum track duration to at least {:.2} s so such tracks are left out",
            t.name,
            t.len,
            s.window,
            s.window as f64 / crate::MODEL_RATE as f64
        );
    }
    Ok(ds)
}

impl Trainer {
    /// Starts a new run in `run_dir` (created; it must not already hold a run). `with_validation`
    /// opens the validation split (needed when the schedule validates).
    pub fn create(run_dir: &Path, settings: RunSettings, with_validation: bool, device: &Device) -> Result<Self> {
        Self::create_from(run_dir, settings, None, with_validation, device)
    }

    /// Starts a new run like [`Self::create`], its weights taken from `init` instead of a random
    /// initialisation (the optimizer starts fresh): fine-tuning a trained model with other
    /// settings, e.g. another σ distribution. `init` must have the run's network; the σ
    /// distribution and optimizer fields of its config may differ, and a reference-style model may
    /// start a per-stem σ run (its stem embedding starts at zero: see [`crate::unet`]).
    pub fn create_from(run_dir: &Path, settings: RunSettings, init: Option<&Model>, with_validation: bool, device: &Device) -> Result<Self> {
        settings.validate()?;
        if run_dir.join(run::STATE_FILE).exists() {
            bail!("'{}' already holds a training run: resume it with --resume, or pick another run directory", run_dir.display());
        }
        let net = match init {
            None => TrainableNet::random(&settings.config, settings.seed, DType::F32, device)?,
            Some(model) => {
                let mut network = model.config.clone();
                network.diffusion_sigma_distribution = settings.config.diffusion_sigma_distribution;
                network.learning_rate = settings.config.learning_rate;
                network.beta1 = settings.config.beta1;
                network.beta2 = settings.config.beta2;
                network.stem_tasks = settings.config.stem_tasks;
                network.loss_sigma_data = settings.config.loss_sigma_data;
                let add_stem_embedding = settings.config.stem_sigmas && !model.config.stem_sigmas;
                network.stem_sigmas |= add_stem_embedding;
                if network != settings.config {
                    bail!(
                        "the initial model's network differs from the run's config: pass the --config it was trained with \
                         (`msdm info MODEL` shows it; the σ distribution and optimizer settings may differ)"
                    );
                }
                // the run's config (its σ distribution and optimizer fields) goes with the weights
                let mut tensors: Vec<_> = model.tensors().to_vec();
                if add_stem_embedding {
                    let fresh = Model::random(settings.config.clone(), settings.seed, &Device::Cpu)?;
                    tensors.extend(fresh.tensors().iter().filter(|(n, _)| n.starts_with("stem_sigmas.")).cloned());
                }
                let as_run = Model::from_tensors(settings.config.clone(), model.meta.clone(), tensors.into_iter().collect())?;
                TrainableNet::from_model(&as_run, DType::F32, device)?
            }
        };
        std::fs::create_dir_all(run_dir).with_context(|| format!("cannot create the run directory '{}'", run_dir.display()))?;
        let adam = Adam::new(net.vars.clone(), settings.adam)?;
        let state = RunState::new(settings);
        let mut t = Self::assemble(run_dir, state, net, adam, with_validation)?;
        t.checkpoint()?; // step 0: the run can be resumed from the start
        Ok(t)
    }

    /// Reopens the run in `run_dir` at its last checkpoint.
    pub fn resume(run_dir: &Path, with_validation: bool, device: &Device) -> Result<Self> {
        let state = RunState::load(run_dir)?;
        state.settings.validate()?;
        let model = Model::load(&run_dir.join(run::MODEL_FILE), &Device::Cpu)?;
        if model.config != state.settings.config {
            bail!("{} in '{}' has another config than the run: the run directory is damaged", run::MODEL_FILE, run_dir.display());
        }
        let model_step = model.meta.info.get("steps").and_then(|v| v.as_u64());
        let net = TrainableNet::from_model(&model, DType::F32, device)?;
        let adam = Adam::load(net.vars.clone(), state.settings.adam, &run_dir.join(run::OPTIMIZER_FILE))?;
        if model_step != Some(state.step) || adam.step_count() != state.step {
            bail!(
                "the checkpoint in '{}' is inconsistent ({} says step {}, the model {:?}, the optimizer {}); \
                 it was interrupted while being written — start a new run or restore the files",
                run_dir.display(),
                run::STATE_FILE,
                state.step,
                model_step,
                adam.step_count()
            );
        }
        let ema = match state.ema {
            None => None,
            Some(ema_state) => {
                let saved = Model::load(&run_dir.join(run::EMA_FILE), &Device::Cpu)
                    .with_context(|| format!("the run in '{}' keeps a weight average but cannot read it", run_dir.display()))?;
                let saved_step = saved.meta.info.get("steps").and_then(|v| v.as_u64());
                if saved_step != Some(state.step) {
                    bail!(
                        "the checkpoint in '{}' is inconsistent ({} says step {}, {} {saved_step:?}); it was interrupted \
                         while being written — start a new run or restore the files",
                        run_dir.display(),
                        run::STATE_FILE,
                        state.step,
                        run::EMA_FILE
                    );
                }
                Some(WeightAverage::from_model(&saved, &net, ema_state)?)
            }
        };
        let mut t = Self::assemble(run_dir, state, net, adam, with_validation)?;
        t.ema = ema;
        Ok(t)
    }

    /// Starts keeping a moving average of the weights with `decay` from the current step on (saved
    /// at the next checkpoint). A run that already keeps one with this decay is left as it is.
    pub fn enable_weight_average(&mut self, decay: f64) -> Result<()> {
        EmaState::check_decay(decay)?;
        if let Some(ema) = &self.ema {
            if ema.state.decay != decay {
                bail!(
                    "the run already keeps a weight average with decay {} (since step {}); it cannot change to {decay}",
                    ema.state.decay,
                    ema.state.since_step
                );
            }
            return Ok(());
        }
        let ema = WeightAverage::start(&self.net, decay, self.state.step)?;
        self.state.ema = Some(ema.state);
        self.ema = Some(ema);
        Ok(())
    }

    /// The weight average's settings, when the run keeps one.
    pub fn weight_average(&self) -> Option<EmaState> {
        self.ema.as_ref().map(|e| e.state)
    }

    fn assemble(run_dir: &Path, state: RunState, net: TrainableNet, adam: Adam, with_validation: bool) -> Result<Self> {
        let s = &state.settings;
        let train_data = open_split(s, &s.train_split)?;
        let val_data = if with_validation { Some(open_split(s, &s.val_split)?) } else { None };
        let sampler = EpochSampler::new(train_data.len(), s.batch_size, s.seed);
        Ok(Self {
            run_dir: run_dir.to_path_buf(),
            state,
            net,
            adam,
            ema: None,
            train_data,
            val_data,
            sampler,
            session_wall: Instant::now(),
            session_cpu: run::process_cpu_seconds(),
        })
    }

    pub fn settings(&self) -> &RunSettings {
        &self.state.settings
    }

    /// Optimizer steps done.
    pub fn step_count(&self) -> u64 {
        self.state.step
    }

    pub fn train_items(&self) -> usize {
        self.train_data.len()
    }

    pub fn val_items(&self) -> usize {
        self.val_data.as_ref().map(|d| d.len()).unwrap_or(0)
    }

    /// The batch of step `step`: item indices from the epoch order, then shifts, σ and ε from the
    /// step's own stream. Its losses are weighted as the config's `loss_sigma_data` asks;
    /// validation keeps the plain EDM weight, so validation losses compare across recipes.
    fn batch_for_step(&mut self, step: u64) -> Result<LossBatch> {
        let s = &self.state.settings;
        let indices = self.sampler.indices(step);
        let mut rng = seeds::stream(s.seed, Purpose::Step, step);
        let x = self.train_data.batch(&indices, &mut rng)?;
        let weight_sd = s.config.loss_sigma_data;
        Ok(self.to_loss_batch(x, &mut rng)?.weighted_as(weight_sd))
    }

    fn to_loss_batch(&self, x: Vec<f32>, rng: &mut rand_chacha::ChaCha20Rng) -> Result<LossBatch> {
        let s = &self.state.settings;
        let (b, l) = (x.len() / (4 * s.window), s.window);
        let x = match s.stem {
            None => x,
            Some(st) => (0..b).flat_map(|i| x[(i * 4 + st) * l..(i * 4 + st + 1) * l].to_vec()).collect(),
        };
        let c = s.config.in_channels;
        let dist = s.config.diffusion_sigma_distribution;
        if s.config.stem_sigmas {
            let draw = draw_stem_noise(rng, dist, s.config.stem_task_mix(), b, c, l);
            return Ok(LossBatch::per_stem(x, c, draw, self.net.dtype(), &self.net.device())?);
        }
        let draw = draw_noise(rng, dist, b, c * l);
        Ok(LossBatch::new(x, c, draw, self.net.dtype(), &self.net.device())?)
    }

    /// One optimizer step; returns its loss. A non-finite loss stops training with an error before
    /// the weights are touched (the last checkpoint stays intact).
    pub fn step(&mut self) -> Result<f64> {
        if self.net.device().is_cpu() {
            crate::ops::on_workers(|| self.step_inner())
        } else {
            self.step_inner()
        }
    }

    fn step_inner(&mut self) -> Result<f64> {
        let step = self.state.step;
        let batch = self.batch_for_step(step)?;
        let loss = denoising_loss(&self.net.denoiser, &batch)?;
        let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !value.is_finite() {
            bail!(
                "the training loss became {value} at step {}; the weights were not updated and the last checkpoint is \
                 intact — resume with a lower learning rate",
                step + 1
            );
        }
        let grads = loss.backward()?;
        self.adam.step_and_average(&grads, self.ema.as_mut())?;
        self.state.step += 1;
        Ok(value)
    }

    /// The validation loss: `val_batches` batches spread evenly over the validation items, with
    /// shifts, σ and ε from fixed streams (the same draws at every validation of the run).
    pub fn validate(&mut self) -> Result<Validation> {
        let loss = self.validation_loss(&self.net.denoiser)?;
        let ema_loss = match &self.ema {
            None => None,
            Some(ema) => Some(self.validation_loss(&ema.to_model(&self.net, self.meta(None))?.denoiser)?),
        };
        Ok(Validation { loss, ema_loss })
    }

    fn validation_loss(&self, denoiser: &EdmDenoiser) -> Result<f64> {
        let Some(val) = &self.val_data else {
            bail!("this trainer was opened without its validation split");
        };
        let s = &self.state.settings;
        let n = (s.val_batches * s.batch_size).min(val.len()).max(1);
        let items: Vec<usize> = (0..n).map(|i| i * val.len() / n).collect();
        let mut total = 0.0;
        for (bi, chunk) in items.chunks(s.batch_size).enumerate() {
            let mut rng = seeds::stream(s.seed, Purpose::Validation, bi as u64);
            let x = val.batch(chunk, &mut rng)?;
            let batch = self.to_loss_batch(x, &mut rng)?;
            let losses = item_losses(denoiser, &batch)?.detach();
            total += losses.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        }
        Ok(total / n as f64)
    }

    fn account_time(&mut self) {
        let now = Instant::now();
        self.state.wall_seconds += now.duration_since(self.session_wall).as_secs_f64();
        self.session_wall = now;
        let cpu = run::process_cpu_seconds();
        if let (Some(a), Some(b)) = (self.session_cpu, cpu) {
            self.state.cpu_seconds += (b - a).max(0.0);
        }
        self.session_cpu = cpu;
    }

    /// Wall-clock training seconds of the run so far (all sessions).
    pub fn elapsed_seconds(&self) -> f64 {
        self.state.wall_seconds + self.session_wall.elapsed().as_secs_f64()
    }

    fn meta(&self, val_loss: Option<f64>) -> ModelMeta {
        let s = &self.state.settings;
        ModelMeta {
            window: s.window,
            stems: match s.stem {
                None => s.config.default_stems(),
                Some(st) => vec![crate::STEMS[st].to_string()],
            },
            info: serde_json::json!({
                "source": "msdm train",
                "steps": self.state.step,
                "epochs": self.sampler.epochs(self.state.step),
                "data": s.data_root.display().to_string(),
                "train_split": s.train_split,
                "train_items": self.train_data.len(),
                "train_seconds_of_audio": self.train_data.total_samples() as f64 / crate::MODEL_RATE as f64,
                "seed": s.seed,
                "batch_size": s.batch_size,
                "window": s.window,
                "adam": s.adam,
                "cpu_seconds": self.state.cpu_seconds,
                "wall_seconds": self.state.wall_seconds,
                "val_loss": val_loss,
            }),
        }
    }

    /// Writes model, optimizer, weight average and `trainer.json` (last: it commits the checkpoint).
    pub fn checkpoint(&mut self) -> Result<()> {
        self.account_time();
        let model = self.net.to_model(self.meta(None))?;
        model.save(&self.run_dir.join(run::MODEL_FILE), StoreDType::F32)?;
        self.adam.save(&self.run_dir.join(run::OPTIMIZER_FILE))?;
        if let Some(ema) = &self.ema {
            let mut meta = self.meta(None);
            meta.info["weights"] = serde_json::json!("exponential moving average");
            meta.info["ema"] = serde_json::to_value(ema.state)?;
            ema.to_model(&self.net, meta)?.save(&self.run_dir.join(run::EMA_FILE), StoreDType::F32)?;
        }
        self.state.save(&self.run_dir)
    }

    /// Records a validation loss; saves `best.safetensors` when it is the lowest so far.
    fn record_validation(&mut self, loss: f64) -> Result<bool> {
        let best = self.state.best_val_loss.is_none_or(|b| loss < b);
        if best {
            self.account_time();
            let model = self.net.to_model(self.meta(Some(loss)))?;
            model.save(&self.run_dir.join(run::BEST_FILE), StoreDType::F32)?;
            self.state.best_val_loss = Some(loss);
            self.state.best_step = Some(self.state.step);
        }
        Ok(best)
    }
}

/// Trains until `schedule.steps` or until `stop` is set (then checkpoints and returns).
pub fn train(trainer: &mut Trainer, schedule: &Schedule, stop: &AtomicBool, progress: &mut dyn FnMut(&Event)) -> Result<Summary> {
    if schedule.val_every > 0 && trainer.val_data.is_none() {
        bail!("the schedule validates every {} steps but the trainer was opened without validation data", schedule.val_every);
    }
    let start_step = trainer.step_count();
    let csv = CsvLog::open(&trainer.run_dir, start_step)?;
    progress(&Event::Started {
        step: start_step,
        steps: schedule.steps,
        parameters: trainer.net.parameter_count(),
        train_items: trainer.train_items(),
        val_items: trainer.val_items(),
    });
    let t0 = Instant::now();
    let log_every = schedule.log_every.max(1);
    let (mut window_sum, mut window_n, mut window_t) = (0.0, 0u64, Instant::now());
    let mut recent: std::collections::VecDeque<f64> = Default::default();
    let mut last_loss = None;
    let mut stopped = false;
    let mut saved_step = start_step;
    while trainer.step_count() < schedule.steps {
        if stop.load(Ordering::SeqCst) {
            stopped = true;
            break;
        }
        let loss = trainer.step()?;
        let step = trainer.step_count();
        last_loss = Some(loss);
        window_sum += loss;
        window_n += 1;
        recent.push_back(loss);
        if recent.len() > 50 {
            recent.pop_front();
        }
        let done = step - start_step;
        let sps = done as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        progress(&Event::Step { step, loss, mean_loss: recent.iter().sum::<f64>() / recent.len() as f64, steps_per_s: sps });

        let val = if schedule.val_every > 0 && step % schedule.val_every == 0 {
            let v = trainer.validate()?;
            let best = trainer.record_validation(v.loss)?;
            progress(&Event::Validated { step, loss: v.loss, ema_loss: v.ema_loss, best });
            Some(v)
        } else {
            None
        };
        if step % log_every == 0 || val.is_some() {
            let rate = window_n as f64 / window_t.elapsed().as_secs_f64().max(1e-9);
            let mean = (window_n > 0).then(|| window_sum / window_n as f64);
            csv.append(step, mean, rate, trainer.elapsed_seconds(), val)?;
            (window_sum, window_n, window_t) = (0.0, 0, Instant::now());
        }
        if schedule.checkpoint_every > 0 && step % schedule.checkpoint_every == 0 {
            trainer.checkpoint()?;
            saved_step = step;
            progress(&Event::Checkpointed { step });
        }
    }
    let end_step = trainer.step_count();
    if end_step != saved_step {
        trainer.checkpoint()?;
        progress(&Event::Checkpointed { step: end_step });
    }
    Ok(Summary {
        start_step,
        end_step,
        stopped,
        last_loss,
        best_val_loss: trainer.state.best_val_loss,
        steps_per_s: (end_step - start_step) as f64 / t0.elapsed().as_secs_f64().max(1e-9),
    })
}
