//! `msdm regenerate`: a thin shell over `msdm::regenerate` that reads a folder of stems, turns
//! seconds or bars into frames, and writes each take like the other jobs do.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use msdm::audio::{self, AudioBuffer};
use msdm::regenerate::{self, EdgeStep, Regeneration};
use msdm::tasks::Settings;

use crate::jobs;
use crate::{OutputArgs, SamplingArgs};

#[derive(Args)]
pub struct RegenerateArgs {
    /// Folder with bass.wav, drums.wav, guitar.wav and piano.wav of one take, as `msdm separate`,
    /// `impute` and `generate` write them (one rate, channel count and length)
    pub stems_dir: PathBuf,
    /// Stem(s) to regenerate: bass, drums, guitar or piano (repeat or comma-separate for several)
    #[arg(long, required = true, value_delimiter = ',')]
    pub stem: Vec<String>,
    /// Start of the range in seconds; with --bpm, a bar position counted from 0 (--from 4 --to 8
    /// regenerates bars 5 to 8)
    #[arg(long, allow_negative_numbers = true)]
    pub from: f64,
    /// End of the range (not included) in seconds; with --bpm, a bar position
    #[arg(long, allow_negative_numbers = true)]
    pub to: f64,
    /// Tempo in beats per minute: --from and --to are then bars, not seconds
    #[arg(long)]
    pub bpm: Option<f64>,
    /// Beats per bar with --bpm
    #[arg(long, default_value_t = 4.0)]
    pub beats_per_bar: f64,
    /// Fade at each edge of the range, inside it, in milliseconds (0: none)
    #[arg(long, default_value_t = regenerate::DEFAULT_CROSSFADE_S * 1000.0, allow_negative_numbers = true)]
    pub crossfade_ms: f64,
    #[command(flatten)]
    pub out: OutputArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Reads `dir/NAME.wav` for every stem of the model, refusing a folder that lacks one.
fn read_stems(dir: &Path, names: &[String]) -> Result<Vec<AudioBuffer>> {
    if !dir.is_dir() {
        bail!("{} is not a folder: give the folder that holds the stems ({})", dir.display(), wav_names(names));
    }
    names
        .iter()
        .map(|name| {
            let path = dir.join(format!("{name}.wav"));
            if !path.is_file() {
                bail!(
                    "{} is missing: regenerate needs all {} stems of one take in the folder ({}), as `msdm separate` writes them",
                    path.display(),
                    names.len(),
                    wav_names(names)
                );
            }
            audio::read_audio(&path).with_context(|| format!("reading the {name} stem"))
        })
        .collect()
}

fn wav_names(names: &[String]) -> String {
    names.iter().map(|n| format!("{n}.wav")).collect::<Vec<_>>().join(", ")
}

/// The folders the takes will be written to (as `jobs` names them), none of which may be the
/// stems' own folder: the input stems are never written over, not even with --force.
fn refuse_input_folder(args: &RegenerateArgs) -> Result<()> {
    let input = std::fs::canonicalize(&args.stems_dir)?;
    let takes = args.out.takes.max(1);
    let dirs: Vec<PathBuf> =
        if takes == 1 { vec![args.out.output.clone()] } else { (1..=takes).map(|k| args.out.output.join(format!("take-{k}"))).collect() };
    for d in dirs {
        if std::fs::canonicalize(&d).is_ok_and(|d| d == input) {
            bail!("the output folder {} is the stems' own folder: regenerate never writes over its input; choose another folder with -o", d.display());
        }
    }
    Ok(())
}

/// The range in seconds, from seconds or (with --bpm) bars.
fn seconds(args: &RegenerateArgs) -> Result<(f64, f64, String)> {
    match args.bpm {
        None => Ok((args.from, args.to, format!("{} s to {} s", args.from, args.to))),
        Some(bpm) => {
            let from = regenerate::bars_to_seconds(args.from, bpm, args.beats_per_bar).context("--bpm / --beats-per-bar")?;
            let to = regenerate::bars_to_seconds(args.to, bpm, args.beats_per_bar)?;
            Ok((from, to, format!("bar {} to bar {} at {bpm} bpm, {} beats a bar ({from:.3} s to {to:.3} s)", args.from, args.to, args.beats_per_bar)))
        }
    }
}

pub fn run(args: &RegenerateArgs) -> Result<()> {
    let model = jobs::job_model(&args.out)?;
    let names = model.meta.stems.clone();
    let stems = read_stems(&args.stems_dir, &names)?;
    regenerate::check_stems(&model, &stems)?;
    let targets = regenerate::stem_indices(&names, &args.stem).context("--stem")?;
    let (from_s, to_s, shown) = seconds(args)?;
    let (rate, frames) = (stems[0].rate, stems[0].frames());
    let range = regenerate::frame_range(from_s, to_s, rate, frames).with_context(|| match args.bpm {
        Some(_) => format!("--from {} --to {}: {shown}", args.from, args.to),
        None => format!("--from {} --to {}", args.from, args.to),
    })?;
    if !(args.crossfade_ms >= 0.0 && args.crossfade_ms.is_finite()) {
        bail!("--crossfade-ms {}: give a length of 0 ms or more", args.crossfade_ms);
    }
    let what = Regeneration { stems: targets, range, crossfade: args.crossfade_ms / 1000.0 };
    jobs::only_for_separation(&args.sampling, "regenerate")?;
    let settings = jobs::settings(regenerate::default_settings(&model), &args.sampling, args.out.mono)?;
    refuse_input_folder(args)?;
    let (dirs, file_names, policy) = jobs::take_dirs(&model, &args.out)?;
    let name_refs: Vec<&str> = file_names.iter().map(String::as_str).collect();
    let chosen: Vec<&str> = what.stems.iter().map(|&s| names[s].as_str()).collect();
    eprintln!(
        "regenerating {} from {shown}, {} windows; {}",
        chosen.join(", "),
        regenerate::planned_calls(&model, rate, frames, &what, &settings) / (settings.steps * settings.resamples).max(1),
        jobs::describe(&settings)
    );
    for (k, dir) in dirs.iter().enumerate() {
        let s = Settings { seed: settings.seed + k as u64, ..settings.clone() };
        let set = jobs::write_take(dir, &name_refs, policy, &args.out, dirs.len() > 1, s.seed, |progress| {
            regenerate::regenerate(&model, &stems, &what, &s, progress)
        })?;
        for line in edge_report(&regenerate::edge_steps(&stems, &set.stems, &what), &names, rate) {
            println!("{line}");
        }
    }
    Ok(())
}

/// One line per stem and edge, the worst channel: the step across the edge against the stem's own
/// steps nearby (at most 1x: no larger than the stem's 99th-percentile step there).
fn edge_report(steps: &[EdgeStep], names: &[String], rate: u32) -> Vec<String> {
    let mut worst: Vec<EdgeStep> = Vec::new();
    for e in steps {
        match worst.iter_mut().find(|w| w.stem == e.stem && w.frame == e.frame) {
            Some(w) if w.ratio() < e.ratio() => *w = *e,
            Some(_) => {}
            None => worst.push(*e),
        }
    }
    worst
        .iter()
        .map(|e| {
            format!(
                "  {} edge at {:.3} s: step {:.2e} = {:.2}x the 99th percentile ({:.2e}) of its sample-to-sample steps in the 50 ms around; \
                 largest step across the edge and its fade {:.2e} (the input's largest in those 50 ms: {:.2e})",
                names[e.stem],
                e.frame as f64 / rate as f64,
                e.step,
                e.ratio(),
                e.p99,
                e.fade_max,
                e.input_max
            )
        })
        .collect()
}
