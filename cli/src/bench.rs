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
    /// Channels of the 12 s separation's input (2: a stereo clip)
    #[arg(long, default_value_t = 1)]
    separation_channels: usize,
    /// Sample rate of the 12 s separation's input
    #[arg(long, default_value_t = 22_050)]
    separation_rate: u32,
    /// Compute device
    #[arg(long, default_value = "auto")]
    device: String,
    /// Print the result as JSON (last line)
    #[arg(long)]
    json: bool,
    /// Noise level σ of the timed denoiser calls
    #[arg(long, default_value_t = 0.3)]
    sigma: f32,
    /// Write the model that is timed to this file (f32), e.g. to time the PyTorch reference on the
    /// same weights (tools/bench/)
    #[arg(long)]
    save_model: Option<std::path::PathBuf>,
    /// Write the input `x` and the output `y` = D(x, σ) of the first call to this safetensors file
    #[arg(long)]
    dump_io: Option<std::path::PathBuf>,
    /// Network dtype: f32, f16 or bf16 (f16/bf16 are meant for GPUs)
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Also time one separation of one `--length` window (batch 1) at the default settings
    #[arg(long)]
    window_separation: bool,
}

/// One Dirac/Gaussian separation of one `length`-sample window (batch 1) at the model's default
/// separation settings: seconds with the noise a real run uses (seeded CPU streams on the CPU, the
/// device's generator on a GPU), seconds with the draws replayed from one host buffer, and the
/// number of denoiser calls.
fn window_separation(model: &Model, length: usize, device: &candle_core::Device) -> Result<(f64, f64, usize)> {
    struct Replay(Vec<f32>);
    impl msdm::noise::NoiseSource for Replay {
        fn draw(&mut self, n: usize) -> Result<Vec<f32>> {
            Ok(self.0[..n].to_vec())
        }
    }
    let job = Job::Separate { mix: msdm::audio::AudioBuffer::new(msdm::MODEL_RATE, vec![vec![0.0; 1]]) };
    let settings = Settings::for_job(&job, model);
    let cfg = settings.sampler_config();
    let mix: Vec<f32> = (0..length).map(|i| 0.3 * (i as f32 * 0.05).sin()).collect();
    let mixture = Tensor::from_vec(mix, (1, 1, length), device)?;
    let time = |noise: &mut dyn msdm::noise::NoiseSource| -> Result<f64> {
        let t = Instant::now();
        let y = msdm::separator::separate(&model.denoiser, &mixture, settings.likelihood, &cfg, noise, &mut |_, _| true)?;
        y.sum_all()?.to_scalar::<f32>()?; // wait for the device
        Ok(t.elapsed().as_secs_f64())
    };
    let seeded = time(&mut *msdm::noise::DeviceNoise::for_items(device, &[0])?)?;
    let n = model.denoiser.channels() * length;
    let replayed = time(&mut Replay(msdm::noise::SeededNoise::new(0).standard_normal(n)))?;
    Ok((seeded, replayed, cfg.calls()))
}

/// The same model with its weights detached from the autograd graph: `Model::random` hands out
/// training variables, and the ops dispatch variables to the differentiable (slower) composite
/// path; a loaded model file never holds variables.
fn inference_copy(model: Model) -> Result<Model> {
    let tensors = model.tensors().iter().map(|(n, t)| (n.clone(), t.detach())).collect();
    Model::from_tensors(model.config.clone(), model.meta.clone(), tensors)
}

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(args: &BenchArgs) -> Result<()> {
    // candle's pool settings for this workload (see the function; `msdm`'s main should do the same)
    msdm::ops::configure_cpu_threads();
    let device = msdm::device::select(&args.device)?;
    if msdm::ops::profile::enabled() && !device.is_cpu() {
        msdm::ops::profile::sync_with(&device);
    }
    let model = match args.config.as_str() {
        "bundled" => Model::load(&bundled_model_path().context("the bundled model is not there; pass --config tiny|small|paper")?, &device)?,
        p if p.ends_with(".safetensors") => Model::load(std::path::Path::new(p), &device)?,
        name => inference_copy(Model::random(ModelConfig::from_name_or_file(name)?, 0, &device)?)?,
    };
    let model = match args.dtype.as_str() {
        "f32" => model,
        "f16" => model.to_dtype(DType::F16)?,
        "bf16" => model.to_dtype(DType::BF16)?,
        other => anyhow::bail!("unknown --dtype '{other}': use f32, f16 or bf16"),
    };
    if let Some(path) = &args.save_model {
        model.save(path, msdm::model_file::StoreDType::F32)?;
        eprintln!("model written to {}", path.display());
    }
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
        let y = model.denoiser.denoise(&x, args.sigma)?;
        y.flatten_all()?.max(0)?.to_scalar::<f32>()?; // wait for the device
        Ok(t.elapsed().as_secs_f64() * 1000.0)
    };
    if let Some(path) = &args.dump_io {
        let y = model.denoiser.denoise(&x, args.sigma)?;
        let sigma = Tensor::new(&[args.sigma], &device)?;
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("x".to_string(), x.clone()), ("y".to_string(), y), ("sigma".to_string(), sigma)]),
            path,
        )
        .with_context(|| format!("cannot write '{}'", path.display()))?;
    }
    call()?;
    msdm::ops::profile::take(); // the op table covers the timed calls only
    let times: Vec<f64> = (0..args.iters.max(1)).map(|_| call()).collect::<Result<_>>()?;
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let std = (times.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / times.len() as f64).sqrt();
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    let ops_profile = msdm::ops::profile::take();
    if !ops_profile.is_empty() {
        let n = times.len() as f64;
        let total: f64 = ops_profile.iter().map(|r| r.2).sum::<f64>() / n * 1000.0;
        eprintln!("ops per denoiser call (MSDM_OPS_PROFILE; {total:.1} ms in ops):");
        let mut rows = ops_profile;
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        for (op, calls, s) in rows {
            eprintln!("  {:>8.2} ms  {:>4} x  {op}", s / n * 1000.0, calls as f64 / n);
        }
    }
    println!("denoiser call: mean {mean:.1} ms, std {std:.1} ms, min {min:.1} ms over {} calls", times.len());
    let (mut sep_s, mut sep_predicted) = (None, None);
    if args.separation {
        let rate = args.separation_rate;
        let frames = 12 * rate as usize;
        let mix: Vec<f32> = (0..frames).map(|i| 0.3 * (i as f32 * 0.05 * 22_050.0 / rate as f32).sin()).collect();
        let mix = msdm::audio::AudioBuffer::new(rate, vec![mix; args.separation_channels.max(1)]);
        let job = Job::Separate { mix };
        let settings = Settings::for_job(&job, &model);
        let predicted = tasks::predicted_seconds(&model, &job, &settings);
        let t = Instant::now();
        tasks::run(&model, &job, &settings, &mut |_| true)?;
        let s = t.elapsed().as_secs_f64();
        println!(
            "separation of 12 s ({} channel(s) at {rate} Hz): {s:.2} s ({} steps x {} resamples, real-time factor {:.2}; predicted {predicted:.2} s)",
            args.separation_channels.max(1),
            settings.steps,
            settings.resamples,
            s / 12.0
        );
        sep_s = Some(s);
        sep_predicted = Some(predicted);
    }
    let mut window_sep = None;
    if args.window_separation {
        let (s, r, calls) = window_separation(&model, length, &device)?;
        println!("separation of one {length}-sample window: {s:.3} s ({calls} denoiser calls), {r:.3} s with replayed noise");
        window_sep = Some(serde_json::json!({"seconds": s, "seconds_replayed_noise": r, "calls": calls}));
    }
    let peak = peak_rss_mb();
    if let Some(p) = peak {
        println!("peak RSS: {p:.0} MB");
    }
    let v = serde_json::json!({
        "config": args.config, "parameters": model.parameter_count(), "length": length, "batch": args.batch,
        "threads": threads, "sigma": args.sigma, "device": msdm::device::describe(&device),
        "denoise_ms_mean": mean, "denoise_ms_std": std, "denoise_ms_min": min, "calls": times.len(),
        "separation_12s_seconds": sep_s, "separation_12s_predicted_seconds": sep_predicted,
        "separation_channels": args.separation_channels, "separation_rate": args.separation_rate, "peak_rss_mb": peak,
        "dtype": args.dtype, "window_separation": window_sep,
    });
    if args.json {
        println!("{v}");
    }
    Ok(())
}
