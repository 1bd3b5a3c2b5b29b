//! `msdm separate`, `generate` and `impute`: thin shells over `msdm::tasks`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use msdm::args::GivenStem;
use msdm::audio::{self, AudioReader, OutputPolicy, ReadOptions, SampleFormat, WavStreamWriter};
use msdm::model_file::{bundled_model_path, Model};
use msdm::separation::{self, FrameSource};
use msdm::separator::Likelihood;
use msdm::stereo::StereoMode;
use msdm::wiener::WienerFilter;
use msdm::tasks::{self, Given, Job, Settings};

use crate::{FormatArg, LikelihoodArg, OutputArgs, SamplingArgs, StereoArg};

/// Loads `--model`, or the bundled default model. `--model a,b,c,d` (one single-stem model per
/// stem, in stem order) makes an ISDM model.
pub fn load_model(path: Option<&Path>, device: &str) -> Result<Model> {
    let device = msdm::device::select(device)?;
    let path: PathBuf = match path {
        Some(p) => p.to_path_buf(),
        None => bundled_model_path().context(
            "no model given and the bundled default model (assets/msdm-small.safetensors) is not there: \
             pass --model FILE (e.g. one made with `msdm import CKPT -o FILE`) or set MSDM_MODEL",
        )?,
    };
    Model::load_spec(&path, &device)
}

/// Loads the model for a job, in the precision asked for.
pub(crate) fn job_model(out: &OutputArgs) -> Result<Model> {
    let model = load_model(out.model.as_deref(), &out.device)?;
    match out.dtype.as_str() {
        "f32" => Ok(model),
        "f16" => model.to_dtype(candle_core::DType::F16),
        "bf16" => model.to_dtype(candle_core::DType::BF16),
        other => bail!("--dtype {other}: use f32, f16 or bf16"),
    }
}

/// The job's settings: `base` with the command line's overrides, checked before any work starts.
pub fn settings(base: Settings, s: &SamplingArgs, mono: bool) -> Result<Settings> {
    let settings = Settings {
        steps: s.steps.unwrap_or(base.steps),
        churn: s.churn.unwrap_or(base.churn),
        resamples: s.resamples.unwrap_or(base.resamples),
        sigma_max: s.sigma_max.unwrap_or(base.sigma_max),
        sigma_min: s.sigma_min.unwrap_or(base.sigma_min),
        rho: s.rho.unwrap_or(base.rho),
        batch: s.batch.unwrap_or(base.batch),
        guidance: s.guidance.unwrap_or(base.guidance),
        guidance_interval: s.guidance_interval.or(base.guidance_interval),
        guidance_rescale: s.guidance_rescale.unwrap_or(base.guidance_rescale),
        average: s.average.unwrap_or(base.average),
        wiener: wiener(base.wiener, s.wiener, s.wiener_exponent),
        stereo: match s.stereo {
            Some(StereoArg::Each) => StereoMode::Each,
            Some(StereoArg::Mid) => StereoMode::Mid,
            None => base.stereo,
        },
        seed: s.seed,
        mono,
        ..base
    };
    settings.validate()?;
    Ok(settings)
}

/// The Wiener post-filter from the model's default and the command line: `--wiener 0` turns it
/// off, either option alone changes that one number of the default (or of
/// [`WienerFilter::DEFAULT`] where the model has none).
fn wiener(base: Option<WienerFilter>, frame: Option<usize>, exponent: Option<f32>) -> Option<WienerFilter> {
    match (frame, exponent) {
        (Some(0), _) => None,
        (None, None) => base,
        _ => {
            let b = base.unwrap_or(WienerFilter::DEFAULT);
            Some(WienerFilter { frame: frame.unwrap_or(b.frame), exponent: exponent.unwrap_or(b.exponent) })
        }
    }
}

pub(crate) fn format(f: FormatArg) -> SampleFormat {
    match f {
        FormatArg::F32 => SampleFormat::F32,
        FormatArg::I16 => SampleFormat::I16,
        FormatArg::I24 => SampleFormat::I24,
    }
}

/// The output folder of each take, each checked before anything is computed.
pub(crate) fn take_dirs(model: &Model, out: &OutputArgs) -> Result<(Vec<PathBuf>, Vec<String>, OutputPolicy)> {
    if out.takes == 0 {
        bail!("--takes must be at least 1");
    }
    let names: Vec<String> = model.meta.stems.iter().map(|s| format!("{s}.wav")).collect();
    let mut guarded = names.clone();
    if out.midi {
        crate::midi::bass_index(&model.meta.stems)?;
        guarded.push(crate::midi::BASS_MIDI.to_string());
    }
    let name_refs: Vec<&str> = guarded.iter().map(String::as_str).collect();
    let policy = if out.force { OutputPolicy::Overwrite } else { OutputPolicy::Refuse };
    let dirs: Vec<PathBuf> = (0..out.takes)
        .map(|k| if out.takes == 1 { out.output.clone() } else { out.output.join(format!("take-{}", k + 1)) })
        .collect();
    for d in &dirs {
        audio::ensure_output_dir(d, &name_refs, policy)?;
    }
    eprintln!(
        "model {} ({} parameters) on {}",
        model.id(),
        model.parameter_count(),
        msdm::device::describe(model.device()),
    );
    Ok((dirs, names, policy))
}

pub(crate) fn describe(s: &Settings) -> String {
    let mean = if s.average > 1 { format!(", the mean of {} samples per window", s.average) } else { String::new() };
    let wiener = s.wiener.map(|w| format!(", {w}")).unwrap_or_default();
    let stereo = if s.stereo == StereoMode::Mid && !s.mono { ", stereo from the mid" } else { "" };
    format!("{} steps x {} resamples, churn {}, seed {}{mean}{wiener}{stereo}", s.steps, s.resamples, s.churn, s.seed)
}

/// One take: runs `sample` under a progress bar, writes its stems into `dir` (named `names`,
/// under `policy`) and says so; returns the stems for what the caller adds (MIDI, edge report).
pub(crate) fn write_take(
    dir: &Path,
    names: &[&str],
    policy: OutputPolicy,
    out: &OutputArgs,
    several: bool,
    seed: u64,
    sample: impl FnOnce(&mut dyn FnMut(tasks::Progress) -> bool) -> Result<tasks::StemSet>,
) -> Result<tasks::StemSet> {
    let pb = crate::progress::bar(out.quiet, if several { "take" } else { "sampling" });
    let result = sample(&mut |p| {
        pb.set_length(p.total as u64);
        pb.set_position(p.done as u64);
        true
    });
    pb.finish_and_clear();
    let set = result?;
    let paths = audio::ensure_output_dir(dir, names, policy)?;
    for (stem, path) in set.stems.iter().zip(&paths) {
        audio::write_wav(path, stem, format(out.format))?;
    }
    println!("wrote {} stems to {} in {:.1} s (seed {seed})", set.stems.len(), dir.display(), set.seconds);
    Ok(set)
}

/// Runs `job` once per take and writes the stems.
fn run_takes(model: &Model, job: &Job, settings: &Settings, out: &OutputArgs) -> Result<()> {
    let midi = crate::midi::job_options(out)?;
    let (dirs, names, policy) = take_dirs(model, out)?;
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    eprintln!("{}", describe(settings));
    for (k, dir) in dirs.iter().enumerate() {
        let s = Settings { seed: settings.seed + k as u64, ..settings.clone() };
        let set = write_take(dir, &name_refs, policy, out, dirs.len() > 1, s.seed, |progress| tasks::run(model, job, &s, progress))?;
        if let Some(opts) = &midi {
            crate::midi::write_job_midi(dir, &set.stems[crate::midi::bass_index(&model.meta.stems)?], opts)?;
        }
    }
    Ok(())
}

/// Separates `input` once per take, streaming: the file is decoded, separated and written piece
/// by piece, so memory stays flat however long it is; each stem file appears (atomically) only
/// once its take is complete.
fn separate_takes(model: &Model, input: &Path, settings: &Settings, out: &OutputArgs) -> Result<()> {
    // Decode the whole input once first (fast, flat memory), so a damaged, truncated or NaN
    // file fails at once rather than after minutes of sampling.
    let mut check = AudioReader::open(input, &ReadOptions::default())?;
    while check.next_chunk()?.is_some() {}
    let midi = crate::midi::job_options(out)?;
    let (dirs, names, policy) = take_dirs(model, out)?;
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    eprintln!("{}", describe(settings));
    for (k, dir) in dirs.iter().enumerate() {
        let s = Settings { seed: settings.seed + k as u64, ..settings.clone() };
        let mut reader = AudioReader::open(input, &ReadOptions::default())?;
        let paths = audio::ensure_output_dir(dir, &name_refs, policy)?;
        let channels = reader.output_channels(s.mono);
        let mut writers = paths
            .iter()
            .map(|p| WavStreamWriter::create(p, channels, reader.rate(), format(out.format)))
            .collect::<Result<Vec<_>>>()?;
        let pb = crate::progress::bar(out.quiet, if out.takes > 1 { "take" } else { "sampling" });
        let started = Instant::now();
        let result = separation::separate(model, &mut reader, &s, &mut writers, &mut |p| {
            pb.set_length(p.total as u64);
            pb.set_position(p.done as u64);
            true
        });
        pb.finish_and_clear();
        let report = result?;
        for w in writers {
            w.finish()?;
        }
        println!(
            "wrote {} stems to {} in {:.1} s (seed {})",
            names.len(),
            dir.display(),
            started.elapsed().as_secs_f64(),
            s.seed
        );
        println!(
            "residual |mix - sum of stems|: max {:.2e} as written ({:.2e} before the band above 11,025 Hz was handed to the stems)",
            report.residual_max, report.unseen_max
        );
        if let Some(opts) = &midi {
            // The stems were streamed to disk; the bass stem is read back whole to transcribe it.
            let bass = audio::read_audio(&paths[crate::midi::bass_index(&model.meta.stems)?])?;
            crate::midi::write_job_midi(dir, &bass, opts)?;
        }
    }
    Ok(())
}

/// Separation settings: the model's defaults with the likelihood asked for; Dirac keeps the
/// model's constrained source unless `constrained` (an index or a stem name) is given.
pub fn separation_settings(model: &Model, likelihood: LikelihoodArg, constrained: Option<&str>, gamma_coeff: f32) -> Result<Settings> {
    let base = Settings::for_separation(model);
    Ok(match likelihood {
        LikelihoodArg::Dirac => {
            let default = match base.likelihood {
                Likelihood::Dirac { constrained } => constrained,
                Likelihood::Gaussian { .. } => 0,
            };
            let c = match constrained {
                Some(name) => constrained_index(model, name)?,
                None => default,
            };
            Settings { likelihood: Likelihood::Dirac { constrained: c }, ..base }
        }
        LikelihoodArg::Gaussian => base.with_gaussian(gamma_coeff),
    })
}

fn constrained_index(model: &Model, name: &str) -> Result<usize> {
    msdm::args::constrained_index(&model.meta.stems, name)
}

pub fn separate(
    input: &Path,
    out: &OutputArgs,
    sampling: &SamplingArgs,
    likelihood: LikelihoodArg,
    constrained: Option<&str>,
    gamma_coeff: f32,
) -> Result<()> {
    only_for_imputation(sampling, "separate")?;
    let model = job_model(out)?;
    let base = separation_settings(&model, likelihood, constrained, gamma_coeff)?;
    separate_takes(&model, input, &settings(base, sampling, out.mono)?, out)
}

/// The guidance options guide imputation by its given stems; other jobs have none to guide by.
fn only_for_imputation(s: &SamplingArgs, command: &str) -> Result<()> {
    if s.guidance.is_some() || s.guidance_interval.is_some() || s.guidance_rescale.is_some() {
        bail!("--guidance, --guidance-interval and --guidance-rescale steer imputation by the given stems (msdm impute, msdm regenerate); `msdm {command}` has none: leave them out");
    }
    Ok(())
}

/// Averaging posterior samples suits separation, where the mix pins the stems down; a generated
/// or imputed stem has many right answers, and their mean is a blur of them.
pub(crate) fn only_for_separation(s: &SamplingArgs, command: &str) -> Result<()> {
    if s.average.is_some() {
        bail!("--average averages separations of a mix (msdm separate, msdm eval); `msdm {command}` makes new material, where a mean of takes is a blur: leave it out (use --takes N for several takes)");
    }
    if s.wiener.is_some() || s.wiener_exponent.is_some() {
        bail!("--wiener and --wiener-exponent filter separated stems against their mix (msdm separate, msdm eval); `msdm {command}` has no mix to share out: leave them out");
    }
    if s.stereo.is_some() {
        bail!("--stereo chooses how a stereo mix is separated (msdm separate); `msdm {command}` has no mix to separate: leave it out");
    }
    Ok(())
}

pub fn generate(out: &OutputArgs, sampling: &SamplingArgs, seconds: f64, rate: u32, channels: usize) -> Result<()> {
    only_for_imputation(sampling, "generate")?;
    only_for_separation(sampling, "generate")?;
    let model = job_model(out)?;
    let job = Job::Generate { seconds, rate, channels };
    let base = Settings::for_job(&job, &model);
    run_takes(&model, &job, &settings(base, sampling, out.mono)?, out)
}

pub fn impute(given: &[String], out: &OutputArgs, sampling: &SamplingArgs) -> Result<()> {
    only_for_separation(sampling, "impute")?;
    let model = job_model(out)?;
    let parsed = msdm::args::parse_given(given, &model.meta.stems)?;
    let given = parsed
        .into_iter()
        .map(|g| {
            Ok(match g {
                None => Given::Generate,
                Some(GivenStem::Silence) => Given::Silent,
                Some(GivenStem::File(path)) => Given::Audio(audio::read_audio(&path)?),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    for note in Given::alignment_notes(&model.meta.stems, &given) {
        eprintln!("note: {note}");
    }
    let job = Job::Impute { given };
    let base = Settings::for_job(&job, &model);
    run_takes(&model, &job, &settings(base, sampling, out.mono)?, out)
}
