//! `msdm bench`: time one denoiser call (mean and spread after a warm-up), optionally one full
//! separation of a 12 s window at the default settings, and report peak memory.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use clap::Args;
use msdm::config::ModelConfig;
use msdm::denoiser::Denoiser;
use msdm::model_file::{bundled_model_path, Model};
use msdm::tasks::{self, Job, Settings};

#[derive(Args)]
pub struct BenchArgs {
    /// tiny, small, paper, paper-isdm, bundled, a config JSON, or a model file (.safetensors)
    #[arg(long, default_value = "bundled")]
    config: String,
    /// Input length in samples (default: the model's window)
    #[arg(long)]
    length: Option<usize>,
    /// Batch size of the denoiser calls
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed denoiser calls (after one warm-up)
    #[arg(long, default_value_t = 5)]
    iters: usize,
    /// Also time a full separation of 12 s of audio at the model's default settings
    #[arg(long)]
    separation: bool,
    /// Compute device
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print the result as JSON (last line)
    #[arg(long)]
    json: bool,
}

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let device = msdm::device::select(&args.device)?;
    let model = match args.config.as_str() {
        "bundled" => Model::load(&bundled_model_path().context("the bundled model is not there; pass --config tiny|small|paper")?, &device)?,
        p if p.ends_with(".safetensors") => Model::load(std::path::Path::new(p), &device)?,
        name => Model::random(ModelConfig::from_name_or_file(name)?, 0, &device)?,
    };
    let length = args.length.unwrap_or(model.window());
    let mult = model.config.length_multiple();
    anyhow::ensure!(length % mult == 0 && length > 0, "--length must be a positive multiple of {mult}");
    let threads = rayon::current_num_threads();
    eprintln!(
        "config {} ({} parameters), length {length}, batch {}, device {}, {threads} threads",
        args.config,
        model.parameter_count(),
        args.batch,
        msdm::device::describe(&device)
    );
    let noise = msdm::noise::SeededNoise::new(1).standard_normal(args.batch * model.config.in_channels * length);
    let x = Tensor::from_vec(noise, (args.batch, model.config.in_channels, length), &device)?.to_dtype(DType::F32)?;
    let call = || -> Result<f64> {
        let t = Instant::now();
        let y = model.denoiser.denoise(&x, 0.3)?;
        y.flatten_all()?.max(0)?.to_scalar::<f32>()?; // wait for the device
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    call()?;
    let times: Vec<f64> = (0..args.iters.max(1)).map(|_| call()).collect::<Result<_>>()?;
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let std = (times.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / times.len() as f64).sqrt();
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    println!("denoiser call: mean {mean:.1} ms, std {std:.1} ms, min {min:.1} ms over {} calls", times.len());
    let mut sep_s = None;
    if args.separation {
        let frames = 12 * msdm::MODEL_RATE as usize;
        let mix: Vec<f32> = (0..frames).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
        let job = Job::Separate { mix: msdm::audio::AudioBuffer::new(msdm::MODEL_RATE, vec![mix]) };
        let settings = Settings::for_job(&job, &model);
        let t = Instant::now();
        tasks::run(&model, &job, &settings, &mut |_| true)?;
        let s = t.elapsed().as_secs_f64();
        println!(
            "separation of 12 s: {s:.2} s ({} steps x {} resamples, real-time factor {:.2})",
            settings.steps,
            settings.resamples,
            s / 12.0
        );
        sep_s = Some(s);
    }
    let peak = peak_rss_mb();
    if let Some(p) = peak {
        println!("peak RSS: {p:.0} MB");
    }
    let v = serde_json::json!({
        "config": args.config, "parameters": model.parameter_count(), "length": length, "batch": args.batch,
        "threads": threads, "device": msdm::device::describe(&device),
        "denoise_ms_mean": mean, "denoise_ms_std": std, "denoise_ms_min": min, "calls": times.len(),
        "separation_12s_seconds": sep_s, "peak_rss_mb": peak,
    });
    if args.json {
        println!("{v}");
    }
    Ok(())
}
