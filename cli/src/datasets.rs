//! `msdm data synth` (procedural mini-Slakh) and `msdm eval` (the paper's separation protocol).

use std::path::PathBuf;

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Subcommand};
use msdm::data::{synthesize, ChunkedTracks, SynthOptions};
use msdm::separator::{separate_mean, Likelihood};

use crate::LikelihoodArg;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Render procedural multitrack songs (bass, drums, guitar, piano) through a GM SoundFont
    Synth {
        /// Dataset root: tracks go to OUT/SPLIT/TrackNNNNN/
        #[arg(short, long)]
        out: PathBuf,
        /// GM SoundFont (.sf2)
        #[arg(long, default_value = "/usr/share/sounds/sf2/FluidR3_GM.sf2")]
        soundfont: PathBuf,
        /// train, validation or test (disjoint seeds)
        #[arg(long, default_value = "train")]
        split: String,
        /// Number of tracks
        #[arg(long, default_value_t = 10)]
        count: usize,
        /// Index of the first track
        #[arg(long, default_value_t = 0)]
        first_index: usize,
        /// Shortest and longest track in seconds
        #[arg(long, num_args = 2, default_values_t = [30.0, 60.0])]
        seconds: Vec<f64>,
        /// Seed base (a different base gives a different dataset)
        #[arg(long, default_value_t = 0)]
        seed_base: u64,
        /// Replace existing tracks
        #[arg(long)]
        force: bool,
        #[arg(long, short)]
        quiet: bool,
    },
}

pub fn data(cmd: &DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Synth { out, soundfont, split, count, first_index, seconds, seed_base, force, quiet } => {
            let mut opts = SynthOptions::new(out, soundfont, split, *count);
            opts.first_index = *first_index;
            opts.seconds = (seconds[0], seconds[1]);
            opts.seed_base = *seed_base;
            opts.overwrite = *force;
            let pb = crate::progress::bar(*quiet, split);
            pb.set_style(indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} tracks ETA {eta}").unwrap());
            let report = synthesize(&opts, &|done, total| {
                pb.set_length(total as u64);
                pb.set_position(done as u64);
            })?;
            pb.finish_and_clear();
            println!(
                "{} tracks ({:.0} s of audio) in {} in {:.1} s ({:.1} s of audio per second); stems missing: {:?}",
                report.tracks,
                report.audio_seconds,
                report.split_dir.display(),
                report.wall_seconds,
                report.audio_seconds / report.wall_seconds.max(1e-9),
                report.missing_stems
            );
            Ok(())
        }
    }
}

#[derive(Args)]
pub struct EvalArgs {
    /// Dataset root (Slakh2100 22,050 Hz layout or mini-Slakh)
    #[arg(long)]
    data: PathBuf,
    /// Split to evaluate
    #[arg(long, default_value = "test")]
    split: String,
    /// Model file (default: the bundled model)
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    device: String,
    /// Evaluate at most this many tracks
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, value_enum, default_value_t = LikelihoodArg::Dirac)]
    likelihood: LikelihoodArg,
    /// Dirac: the stem computed as mix minus the others (index or name; default: the model's,
    /// else bass)
    #[arg(long)]
    constrained_source: Option<String>,
    #[command(flatten)]
    sampling: crate::SamplingArgs,
    /// Write the summary and per-track scores as JSON here
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    midi: crate::midi::MidiEvalArgs,
    #[arg(long, short)]
    quiet: bool,
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    if args.midi.midi {
        return crate::midi::eval(&args.data, &args.split, args.limit, &args.midi, args.json.as_deref(), args.quiet);
    }
    if args.midi.render.is_some() || args.midi.tuning.is_some() {
        anyhow::bail!("--render and --tuning belong to the MIDI evaluation: add --midi");
    }
    let model = crate::jobs::load_model(args.model.as_deref(), &args.device)?;
    let tracks = ChunkedTracks::open(&args.data, &args.split, model.window())?;
    let base = crate::jobs::separation_settings(&model, args.likelihood, args.constrained_source.as_deref(), 0.75)?;
    let settings = crate::jobs::settings(base, &args.sampling, false)?;
    let config = settings.sampler_config();
    let likelihood: Likelihood = settings.likelihood;
    let device = model.device().clone();
    eprintln!(
        "evaluating {} on {} / {} ({} tracks), {:?}, {} steps x {} resamples, churn {}{}{}",
        model.id(),
        args.data.display(),
        args.split,
        tracks.tracks().len(),
        likelihood,
        settings.steps,
        settings.resamples,
        settings.churn,
        if settings.average > 1 { format!(", mean of {} samples", settings.average) } else { String::new() },
        settings.wiener.map(|w| format!(", {w}")).unwrap_or_default()
    );
    let window = model.window();
    let mut chunk_index = 0u64;
    let mut sep = |mix: &[f32]| -> Result<Vec<Vec<f32>>> {
        let y = Tensor::from_vec(mix.to_vec(), (1, 1, window), &device)?;
        let seed = settings.seed.wrapping_add(chunk_index);
        chunk_index += 1;
        let x = separate_mean(model.stems_denoiser(), &y, likelihood, &config, &[seed], settings.average, settings.wiener.as_ref(), &mut |_, _| true)?;
        Ok(x.squeeze(0)?.to_device(&Device::Cpu)?.to_vec2()?)
    };
    let pb = crate::progress::bar(args.quiet, "eval");
    pb.set_style(indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} chunks {elapsed_precise} ETA {eta}").unwrap());
    let (summary, per_track) = msdm::eval::evaluate::evaluate_tracks(&tracks, args.limit, &mut sep, &mut |d, t| {
        pb.set_length(t as u64);
        pb.set_position(d as u64);
    })?;
    pb.finish_and_clear();
    println!("{}", summary.to_table());
    if let Some(path) = &args.json {
        let v = serde_json::json!({
            "model": model.id(), "data": args.data, "split": args.split, "settings": settings,
            "summary": serde_json::from_str::<serde_json::Value>(&summary.to_json())?,
            "tracks": per_track,
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)?).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
