//! `msdm train`: train a model on a multi-source dataset (denoising score matching, Adam), with
//! checkpoints, Ctrl-C handling and bit-for-bit `--resume`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use msdm::config::ModelConfig;
use msdm::train::{train, Event, RunSettings, RunState, Schedule, Trainer};

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Run directory for a new run (checkpoints, train.csv, best.safetensors)
    #[arg(long, value_name = "DIR", required_unless_present = "resume", conflicts_with = "resume")]
    pub run_dir: Option<PathBuf>,
    /// Continue the run in RUN_DIR exactly where its last checkpoint left off
    #[arg(long, value_name = "RUN_DIR")]
    pub resume: Option<PathBuf>,
    /// Start the new run from this model file's weights (fresh optimizer), e.g. to fine-tune with
    /// another σ distribution from a `--config` JSON; the network must match the config
    #[arg(long, value_name = "MODEL", conflicts_with = "resume")]
    pub init: Option<PathBuf>,
    /// Dataset root holding train/ and validation/ track folders (new runs)
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Model config: a preset (tiny, small, paper, paper-isdm) or a JSON file (new runs; default small)
    #[arg(long)]
    pub config: Option<String>,
    /// Training window in samples (default: the config's default window)
    #[arg(long)]
    pub window: Option<usize>,
    /// Batch size (default 8, as the reference)
    #[arg(long)]
    pub batch: Option<usize>,
    /// Adam learning rate (default: the config's, else 1e-4)
    #[arg(long)]
    pub lr: Option<f64>,
    /// Run seed: initialization, item order, shifts and noise (default 12345, as the reference)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Validation batches with fixed draws (default 4)
    #[arg(long)]
    pub val_batches: Option<usize>,
    /// Keep tracks lasting at least this many seconds (default 12, as the reference)
    #[arg(long)]
    pub min_duration: Option<f64>,
    /// ... and less than this many (default 640)
    #[arg(long)]
    pub max_duration: Option<f64>,
    /// One-stem (ISDM) configs: the stem to learn (bass, drums, guitar, piano)
    #[arg(long)]
    pub stem: Option<String>,
    /// Also keep an exponential moving average of the weights with this decay, saved as
    /// ema.safetensors at every checkpoint (default 0.999 for new runs; 0: none). A resumed run
    /// without one starts it at its current step; training itself is unchanged either way
    #[arg(long, value_name = "DECAY")]
    pub ema: Option<f64>,
    /// Train until this many steps in total (default: until stopped with Ctrl-C)
    #[arg(long)]
    pub steps: Option<u64>,
    /// Checkpoint every this many steps (also at the end and on Ctrl-C)
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: u64,
    /// Validation loss every this many steps (0: never)
    #[arg(long, default_value_t = 2000)]
    pub val_every: u64,
    /// A row in train.csv every this many steps
    #[arg(long, default_value_t = 10)]
    pub log_every: u64,
    /// auto, cpu, cuda or metal
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// No progress bar
    #[arg(long, short)]
    pub quiet: bool,
}

const DEFAULT_SEED: u64 = 12345;
const DEFAULT_EMA_DECAY: f64 = 0.999;

fn stem_index(name: &str) -> Result<usize> {
    msdm::stem_index(&msdm::STEMS, name).map_err(|e| anyhow::anyhow!("--stem {e}"))
}

/// The settings of a new run from the arguments.
fn new_settings(args: &TrainArgs) -> Result<RunSettings> {
    let data = args.data.clone().context("a new run needs --data DIR (a dataset root holding train/ and validation/)")?;
    let config = ModelConfig::from_name_or_file(args.config.as_deref().unwrap_or("small"))?;
    let mut s = RunSettings::new(config, data, args.seed.unwrap_or(DEFAULT_SEED));
    if let Some(w) = args.window {
        s.window = w;
    }
    if let Some(b) = args.batch {
        s.batch_size = b;
    }
    if let Some(lr) = args.lr {
        // the config goes into every model file the run writes: it records the rate used
        s.adam.lr = lr;
        s.config.learning_rate = Some(lr);
    }
    if let Some(v) = args.val_batches {
        s.val_batches = v;
    }
    if let Some(d) = args.min_duration {
        s.min_duration = d;
    }
    if let Some(d) = args.max_duration {
        s.max_duration = d;
    }
    s.stem = args.stem.as_deref().map(stem_index).transpose()?;
    s.validate()?;
    Ok(s)
}

/// On resume the run's settings are fixed: an option that would change them is an error.
fn check_resume_args(args: &TrainArgs, s: &RunSettings) -> Result<()> {
    let mut conflicts = Vec::new();
    let mut check = |flag: &str, given: Option<String>, stored: String| {
        if let Some(g) = given {
            if g != stored {
                conflicts.push(format!("--{flag} {g} (the run has {stored})"));
            }
        }
    };
    check("data", args.data.as_ref().map(|p| p.display().to_string()), s.data_root.display().to_string());
    check("window", args.window.map(|v| v.to_string()), s.window.to_string());
    check("batch", args.batch.map(|v| v.to_string()), s.batch_size.to_string());
    check("lr", args.lr.map(|v| v.to_string()), s.adam.lr.to_string());
    check("seed", args.seed.map(|v| v.to_string()), s.seed.to_string());
    check("val-batches", args.val_batches.map(|v| v.to_string()), s.val_batches.to_string());
    check("min-duration", args.min_duration.map(|v| v.to_string()), s.min_duration.to_string());
    check("max-duration", args.max_duration.map(|v| v.to_string()), s.max_duration.to_string());
    if let Some(c) = &args.config {
        let mut given = ModelConfig::from_name_or_file(c)?;
        // the run's config holds the --lr it was started with (checked above), the file may not
        given.learning_rate = s.config.learning_rate;
        if given != s.config {
            conflicts.push(format!("--config {c} (the run has another config)"));
        }
    }
    if let Some(st) = &args.stem {
        if Some(stem_index(st)?) != s.stem {
            conflicts.push(format!("--stem {st}"));
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "a resumed run keeps the settings it was started with, so it continues bit-for-bit; drop {} \
             (or start a new run in another directory)",
            conflicts.join(", ")
        );
    }
    Ok(())
}

/// Sets a flag on the first Ctrl-C (or SIGTERM): the loop checkpoints and returns. A second
/// Ctrl-C exits at once (the last checkpoint stays intact).
fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let installed = ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond interrupt: exiting without a new checkpoint");
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: finishing this step and writing a checkpoint (Ctrl-C again to quit at once)");
    });
    if let Err(e) = installed {
        eprintln!("warning: cannot catch Ctrl-C ({e}); an interrupt will lose the steps since the last checkpoint");
    }
    stop
}

pub fn run(args: &TrainArgs) -> Result<()> {
    let device = msdm::device::select(&args.device)?;
    let schedule = Schedule {
        steps: args.steps.unwrap_or(u64::MAX),
        checkpoint_every: args.checkpoint_every,
        val_every: args.val_every,
        log_every: args.log_every,
    };
    let validate = args.val_every > 0;
    let mut trainer = match &args.resume {
        Some(dir) => {
            let state = RunState::load(dir)?;
            check_resume_args(args, &state.settings)?;
            Trainer::resume(dir, validate, &device)?
        }
        None => {
            let dir = args.run_dir.as_ref().expect("clap requires --run-dir without --resume");
            let init = match &args.init {
                Some(path) => Some(
                    msdm::model_file::Model::load(path, &candle_core::Device::Cpu)
                        .with_context(|| format!("--init: cannot use '{}'", path.display()))?,
                ),
                None => None,
            };
            Trainer::create_from(dir, new_settings(args)?, init.as_ref(), validate, &device)?
        }
    };
    match (args.ema, args.resume.is_some()) {
        (Some(d), _) if d == 0.0 => {
            if let Some(e) = trainer.weight_average() {
                bail!("the run keeps a weight average (decay {}) and cannot drop it; leave out --ema 0", e.decay);
            }
        }
        (Some(d), _) => trainer.enable_weight_average(d)?,
        (None, false) => trainer.enable_weight_average(DEFAULT_EMA_DECAY)?,
        (None, true) => {}
    }
    if trainer.step_count() >= schedule.steps {
        println!("the run in '{}' is already at step {} (--steps {})", trainer.run_dir.display(), trainer.step_count(), schedule.steps);
        return Ok(());
    }
    let s = trainer.settings().clone();
    eprintln!(
        "training {} in '{}': window {} ({:.2} s), batch {}, lr {:e}, seed {}, {}, on {}",
        if args.resume.is_some() { "resumes" } else { "starts" },
        trainer.run_dir.display(),
        s.window,
        s.window as f64 / msdm::MODEL_RATE as f64,
        s.batch_size,
        s.adam.lr,
        s.seed,
        match trainer.weight_average() {
            Some(e) => format!("weight average decay {} since step {}", e.decay, e.since_step),
            None => "no weight average".into(),
        },
        msdm::device::describe(&device)
    );
    if let Some(sd) = s.config.loss_sigma_data {
        eprintln!(
            "loss weighted as for stems of RMS {sd} (loss_sigma_data; the model's σ_data is {}); validation keeps the model's",
            s.config.diffusion_sigma_data
        );
    }

    let stop = stop_flag();
    let interactive = !args.quiet && std::io::stderr().is_terminal();
    let pb = if interactive {
        let pb = if schedule.steps == u64::MAX { ProgressBar::new_spinner() } else { ProgressBar::new(schedule.steps) };
        pb.set_style(
            ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30.cyan/blue}] {msg} {elapsed_precise} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb
    } else {
        ProgressBar::hidden()
    };
    let mut last_val: Option<f64> = None;
    let mut next_line = std::time::Instant::now();
    let summary = train(&mut trainer, &schedule, &stop, &mut |e| match e {
        Event::Started { step, parameters, train_items, val_items, .. } => {
            pb.set_position(*step);
            eprintln!("{parameters} parameters; {train_items} training items, {val_items} validation items; step {step}");
        }
        Event::Step { step, mean_loss, steps_per_s, .. } => {
            let val = last_val.map(|v| format!(" val {v:.4}")).unwrap_or_default();
            let msg = format!("loss {mean_loss:.4}{val} {steps_per_s:.2} steps/s");
            pb.set_position(*step);
            pb.set_message(msg.clone());
            // Without a terminal (nohup, logs) a plain line every minute.
            if !interactive && !args.quiet && std::time::Instant::now() >= next_line {
                eprintln!("step {step}: {msg}");
                next_line = std::time::Instant::now() + std::time::Duration::from_secs(60);
            }
        }
        Event::Validated { step, loss, ema_loss, best } => {
            last_val = Some(*loss);
            let ema = ema_loss.map(|l| format!("; weight average {l:.5}")).unwrap_or_default();
            pb.suspend(|| eprintln!("step {step}: validation loss {loss:.5}{}{ema}", if *best { " (best so far)" } else { "" }));
        }
        Event::Checkpointed { step } => {
            if !interactive && !args.quiet {
                eprintln!("step {step}: checkpoint written");
            }
        }
    })?;
    pb.finish_and_clear();
    println!(
        "{} at step {} in '{}' ({:.2} steps/s this session; last loss {}; best validation loss {})",
        if summary.stopped { "stopped" } else { "finished" },
        summary.end_step,
        trainer.run_dir.display(),
        summary.steps_per_s,
        summary.last_loss.map(|l| format!("{l:.4}")).unwrap_or("-".into()),
        summary.best_val_loss.map(|l| format!("{l:.4}")).unwrap_or("-".into()),
    );
    println!("resume with: msdm train --resume {}", trainer.run_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        train: TrainArgs,
    }

    fn args(extra: &[&str]) -> TrainArgs {
        let base = ["msdm-train", "--run-dir", "runs/x", "--data", "data/minislakh", "--config", "small"];
        Cli::try_parse_from(base.iter().chain(extra)).unwrap().train
    }

    #[test]
    fn the_learning_rate_given_is_the_one_the_model_files_record() {
        let s = new_settings(&args(&["--lr", "0.0003"])).unwrap();
        assert_eq!((s.adam.lr, s.config.learning_rate), (3e-4, Some(3e-4)));
        // resuming with the same command line is not a conflict; another rate is
        check_resume_args(&args(&["--lr", "0.0003"]), &s).unwrap();
        let err = check_resume_args(&args(&["--lr", "0.001"]), &s).unwrap_err().to_string();
        assert!(err.contains("--lr 0.001 (the run has 0.0003)"), "{err}");
        // without --lr the config's rate is used and recorded
        let s = new_settings(&args(&[])).unwrap();
        assert_eq!(Some(s.adam.lr), s.config.learning_rate);
    }
}
