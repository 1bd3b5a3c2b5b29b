//! The three jobs on real audio, at any rate, channel count and length: separation, source
//! imputation and total generation. Audio is resampled to 22,050 Hz, cut into the model's windows,
//! run through the sampler and brought back to the input's rate, length and channel count.
//!
//! - Separation windows overlap and are cross-faded with complementary weights, so the stems of a
//!   long file stay a partition of the mix (see [`crate::audio::windows`]).
//! - Generation and imputation run windows one after another: each window takes the end of the
//!   previous one as given (inpainting over time), so a long generated part is one continuous take.
//! - Each channel of a stereo input is processed with the same seed (a centred mono source gives
//!   identical left and right stems); `mono` downmixes first.
//! - After Dirac separation the part of the input the model never saw (above 11,025 Hz, plus the
//!   resampling error) is handed to the stems by [`crate::audio::distribute_residual`], so the
//!   written stems sum to the input at every sample.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};

use crate::audio::{self, AudioBuffer};
use crate::model_file::Model;
use crate::noise::{window_seed, DeviceNoise};
use crate::sampler::{self, Posterior};
use crate::separation;
use crate::seams;
use crate::separator;
use crate::MODEL_RATE;

pub use crate::job::{Given, Job, Progress, Settings, StemSet, MAX_BATCH, MAX_RESAMPLES, MAX_STEPS};

/// Runs a job. `progress` is called after every denoiser call; returning `false` cancels the run
/// (the error's message is `cancelled`).
pub fn run(model: &Model, job: &Job, settings: &Settings, progress: &mut dyn FnMut(Progress) -> bool) -> Result<StemSet> {
    settings.validate()?;
    let started = Instant::now();
    let mut out = match job {
        Job::Separate { mix } => separate(model, mix, settings, progress)?,
        Job::Impute { given } => impute(model, given, settings, progress)?,
        Job::Generate { seconds, rate, channels } => {
            if !(*seconds > 0.0 && seconds.is_finite()) || *seconds > 3600.0 {
                bail!("generation length must be between 0 and 3600 seconds, got {seconds}");
            }
            if *rate < 8000 || *rate > 384_000 || *channels == 0 || *channels > 64 {
                bail!("generation needs a rate in 8–384 kHz and 1–64 channels");
            }
            let frames = generation_frames(*seconds, *rate);
            let silence = AudioBuffer::new(*rate, vec![vec![0.0; frames]; *channels]);
            let given = vec![None; model.num_stems()];
            let mut out = run_sequential(model, &given, &silence, settings, progress)?;
            out.stems.iter_mut().for_each(fade_ends);
            out
        }
    };
    out.seconds = started.elapsed().as_secs_f64();
    Ok(out)
}

/// The job's denoiser calls and the batch items in each, from the same plans the runs use:
/// separation runs windows × channels in near-equal batches ([`separation::batches`]);
/// generation and imputation run one window at a time ([`seams::windows`]) with every
/// channel in the batch.
fn plan_calls(model: &Model, job: &Job, settings: &Settings) -> (usize, usize) {
    let per_window = settings.steps * settings.resamples;
    let window = model.window();
    let channels = |ch: usize| if settings.mono { ch.min(1) } else { ch };
    match job {
        Job::Separate { mix } => {
            let len22 = audio::resampled_len(mix.frames(), mix.rate, MODEL_RATE);
            let b = separation::batches(len22, window, settings.separation_items(mix.num_channels()).max(1), separation::windows_per_call(settings));
            // the posterior samples averaged run in the same calls, as more batch items
            (b.count * per_window, b.size * settings.average)
        }
        Job::Impute { given } => match given.iter().find_map(Given::audio) {
            Some(g) => {
                let len22 = audio::resampled_len(g.frames(), g.rate, MODEL_RATE);
                (seams::windows(len22, window).len() * per_window, channels(g.num_channels()).max(1))
            }
            None => (0, 1),
        },
        Job::Generate { seconds, rate, channels: ch } => {
            let len22 = audio::resampled_len(generation_frames(*seconds, *rate), *rate, MODEL_RATE);
            (seams::windows(len22, window).len() * per_window, channels(*ch).max(1))
        }
    }
}

/// Frames of a generated take of `seconds` at `rate`.
fn generation_frames(seconds: f64, rate: u32) -> usize {
    (seconds * rate as f64).round() as usize
}

/// A render-time estimate in seconds: planned calls × the time of one sampler step at the job's
/// batch size: measured once per model, batch size and likelihood (then cached), or taken from
/// the last real run ([`record_seconds`]), which includes everything around the network calls.
pub fn predicted_seconds(model: &Model, job: &Job, settings: &Settings) -> f64 {
    let (calls, items) = plan_calls(model, job, settings);
    calls as f64 * evaluations(model, job, settings) * seconds_per_call(model, items, settings).unwrap_or(f64::NAN)
}

/// Network evaluations per planned call: a guided imputation step with a per-stem model makes
/// two, so its time is not an unguided call's (nor may it be cached as one).
fn evaluations(model: &Model, job: &Job, settings: &Settings) -> f64 {
    let config = settings.sampler_config();
    let guided = matches!(job, Job::Impute { .. }) && model.stems_denoiser().takes_stem_sigmas();
    if guided { 1.0 + config.guided_steps() as f64 / config.steps().max(1) as f64 } else { 1.0 }
}

/// [`predicted_seconds`] if this kind of call has been timed already (never runs the network).
pub fn known_seconds(model: &Model, job: &Job, settings: &Settings) -> Option<f64> {
    let (calls, items) = plan_calls(model, job, settings);
    let per_call = CALL_SECONDS.lock().ok()?.as_ref()?.get(&call_key(model, items, settings)).copied()?;
    Some(calls as f64 * evaluations(model, job, settings) * per_call)
}

/// Records that running `job` with `settings` took `seconds` in all, so the next prediction for
/// such calls is the real time per call (resampling, windowing and the likelihood included).
pub fn record_seconds(model: &Model, job: &Job, settings: &Settings, seconds: f64) {
    let (calls, items) = plan_calls(model, job, settings);
    if calls == 0 || !(seconds.is_finite() && seconds > 0.0) {
        return;
    }
    if let Ok(mut c) = CALL_SECONDS.lock() {
        let per_evaluation = seconds / (calls as f64 * evaluations(model, job, settings));
        c.get_or_insert_with(HashMap::new).insert(call_key(model, items, settings), per_evaluation);
    }
}

/// Seconds per sampler step by (model id, batch items, churn on).
type CallKey = (String, usize, bool);
static CALL_SECONDS: Mutex<Option<HashMap<CallKey, f64>>> = Mutex::new(None);

fn call_key(model: &Model, items: usize, settings: &Settings) -> CallKey {
    (model.id(), items, settings.churn > 0.0)
}

fn seconds_per_call(model: &Model, items: usize, settings: &Settings) -> Result<f64> {
    let key = call_key(model, items, settings);
    if let Some(s) = CALL_SECONDS.lock().ok().and_then(|c| c.as_ref().and_then(|m| m.get(&key).copied())) {
        return Ok(s);
    }
    let y = Tensor::zeros((items, 1, model.window()), candle_core::DType::F32, model.device())?;
    let steps = |n: usize| Settings { steps: n, resamples: 1, ..settings.clone() }.sampler_config();
    // the noise a real run uses (on a GPU: drawn on the device; host noise would dominate there)
    let mut noise = DeviceNoise::for_items(model.device(), &vec![0; items])?;
    let mut run = |n: usize| separator::separate(model.stems_denoiser(), &y, settings.likelihood, &steps(n), &mut *noise, &mut |_, _| true);
    run(1)?; // warm-up (on CUDA it also captures the network's graph)
    model.device().synchronize()?;
    let t = Instant::now();
    run(3)?;
    model.device().synchronize()?; // GPU work is queued: wait for it
    let s = t.elapsed().as_secs_f64() / 3.0;
    if let Ok(mut c) = CALL_SECONDS.lock() {
        c.get_or_insert_with(HashMap::new).insert(key, s);
    }
    Ok(s)
}

pub(crate) fn check_audio(what: &str, a: &AudioBuffer) -> Result<()> {
    if a.frames() == 0 || a.num_channels() == 0 {
        bail!("{what} is empty: there is no audio to process");
    }
    if a.rate == 0 {
        bail!("{what} has a sample rate of 0");
    }
    audio::validate_samples(a).with_context(|| format!("{what} holds invalid samples"))
}

/// The channels to process: the input's, or its mono downmix.
fn working_channels(a: &AudioBuffer, mono: bool) -> Vec<Vec<f32>> {
    if mono && a.num_channels() > 1 {
        vec![a.to_mono()]
    } else {
        a.channels.clone()
    }
}

fn to_model_rate(channels: &[Vec<f32>], rate: u32) -> Result<Vec<Vec<f32>>> {
    audio::resample(channels, rate, MODEL_RATE)
}

/// Resamples model-rate signals to `rate` and pads/trims them to exactly `frames`.
fn from_model_rate(channels: &[Vec<f32>], rate: u32, frames: usize) -> Result<Vec<Vec<f32>>> {
    let mut out = audio::resample(channels, MODEL_RATE, rate)?;
    for c in &mut out {
        c.resize(frames, 0.0);
    }
    Ok(out)
}

/// Separation in memory: the streaming pipeline (which checks the mix) between a buffer source
/// and a buffer sink.
fn separate(model: &Model, mix: &AudioBuffer, settings: &Settings, progress: &mut dyn FnMut(Progress) -> bool) -> Result<StemSet> {
    let mut sink = separation::BufferSink::default();
    let report = separation::separate(model, &mut separation::BufferSource::new(mix), settings, &mut sink, progress)?;
    Ok(StemSet {
        names: model.meta.stems.clone(),
        stems: sink.stems.into_iter().map(|ch| AudioBuffer::new(mix.rate, ch)).collect(),
        residual_max: report.residual_max,
        unseen_max: report.unseen_max,
        seconds: 0.0,
    })
}

fn impute(model: &Model, given: &[Given], settings: &Settings, progress: &mut dyn FnMut(Progress) -> bool) -> Result<StemSet> {
    let n = model.num_stems();
    if given.len() != n {
        bail!("imputation needs one entry per stem ({n}), got {}", given.len());
    }
    let present: Vec<&AudioBuffer> = given.iter().filter_map(Given::audio).collect();
    if present.is_empty() {
        bail!(
            "imputation needs at least one stem given as audio (silence alone gives no length; to generate \
             everything, use generate)"
        );
    }
    if !given.iter().any(|g| *g == Given::Generate) {
        bail!("every stem is given: there is nothing to generate");
    }
    for (i, g) in given.iter().enumerate() {
        if let Given::Audio(g) = g {
            check_audio(&format!("the given {} stem", model.meta.stems[i]), g)?;
        }
    }
    // The output takes the first given stem's rate; the channel count and length are the largest.
    let rate = present[0].rate;
    let channels = present.iter().map(|g| g.num_channels()).max().unwrap_or(1);
    let mut aligned: Vec<Option<AudioBuffer>> = Vec::with_capacity(n);
    for g in given {
        aligned.push(match g {
            Given::Generate | Given::Silent => None,
            Given::Audio(g) => {
                let ch = if g.rate == rate { g.channels.clone() } else { audio::resample(&g.channels, g.rate, rate)? };
                // mono given stems are spread to every channel
                let ch = if ch.len() == channels { ch } else { vec![AudioBuffer::new(rate, ch).to_mono(); channels] };
                Some(AudioBuffer::new(rate, ch))
            }
        });
    }
    let frames = aligned.iter().flatten().map(|g| g.frames()).max().unwrap_or(0);
    for g in aligned.iter_mut().flatten() {
        for c in &mut g.channels {
            c.resize(frames, 0.0);
        }
    }
    let shape = AudioBuffer::new(rate, vec![vec![0.0; frames]; channels]);
    for (a, g) in aligned.iter_mut().zip(given) {
        if *g == Given::Silent {
            *a = Some(shape.clone());
        }
    }
    let mut out = run_sequential(model, &aligned, &shape, settings, progress)?;
    // Given stems come back exactly as given; the made ones get their ends faded.
    for (i, g) in aligned.into_iter().enumerate() {
        let Some(g) = g else {
            fade_ends(&mut out.stems[i]);
            continue;
        };
        out.stems[i] = if settings.mono && g.num_channels() > 1 { AudioBuffer::new(rate, vec![g.to_mono()]) } else { g };
    }
    Ok(out)
}

/// Fades a stem the model made in and out over [`seams::EDGE_FADE_S`] at its own rate.
fn fade_ends(stem: &mut AudioBuffer) {
    let n = (seams::EDGE_FADE_S * stem.rate as f64).round() as usize;
    stem.channels.iter_mut().for_each(|c| seams::fade_edges(c, n));
}

/// Generation and imputation over windows in sequence: each window after the first takes the
/// previous window's last `overlap` samples as given for every stem (inpainting over time).
/// `shape` gives the output rate, channel count and length.
fn run_sequential(
    model: &Model,
    given: &[Option<AudioBuffer>],
    shape: &AudioBuffer,
    settings: &Settings,
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<StemSet> {
    let device = model.device().clone();
    let n = model.num_stems();
    let rate = shape.rate;
    let channels = if settings.mono { 1 } else { shape.num_channels() };
    // given stems at the model rate: given22[stem][channel]
    let given22: Vec<Option<Vec<Vec<f32>>>> = given
        .iter()
        .map(|g| g.as_ref().map(|g| to_model_rate(&working_channels(g, settings.mono), rate)).transpose())
        .collect::<Result<_>>()?;
    let len22 = audio::resampled_len(shape.frames(), rate, MODEL_RATE);
    let window = model.window();
    let ov = seams::overlap(window);
    let plan = seams::windows(len22, window);
    let config = settings.sampler_config();
    let total = plan.len() * config.calls();
    // result22[stem][channel]
    let mut result22 = vec![vec![vec![0f32; len22]; channels]; n];
    for (w, &start) in plan.starts.iter().enumerate() {
        // source [channels, n, window] and mask [channels, n, window]
        let mut source = vec![0f32; channels * n * window];
        let mut mask = vec![0f32; channels * n * window];
        for c in 0..channels {
            for s in 0..n {
                let base = (c * n + s) * window;
                for t in 0..window {
                    let i = start + t;
                    if let Some(g) = &given22[s] {
                        source[base + t] = g[c].get(i).copied().unwrap_or(0.0);
                        mask[base + t] = 1.0;
                    } else if w > 0 && t < ov - seams::fade(ov) && i < len22 {
                        source[base + t] = result22[s][c][i];
                        mask[base + t] = 1.0;
                    }
                }
            }
        }
        let source = Tensor::from_vec(source, (channels, n, window), &device)?;
        let mask = Tensor::from_vec(mask, (channels, n, window), &device)?;
        let seeds = vec![window_seed(settings.seed, w); channels];
        let mut noise = DeviceNoise::for_items(&device, &seeds)?;
        let mut cb = |d: usize, _t: usize| progress(Progress { done: w * config.calls() + d, total });
        let posterior = if given22.iter().all(Option::is_none) && w == 0 {
            Posterior::Prior
        } else {
            Posterior::Impute { source: &source, mask: &mask }
        };
        let x = sampler::sample(model.stems_denoiser(), [channels, n, window], &device, &config, &posterior, &mut *noise, &mut cb)?;
        let x: Vec<Vec<Vec<f32>>> = x.to_device(&Device::Cpu)?.to_vec3()?;
        for (c, stems) in x.into_iter().enumerate() {
            for (s, sig) in stems.into_iter().enumerate() {
                seams::write_window(&mut result22[s][c], &sig, start, if w > 0 { ov } else { 0 });
            }
        }
    }
    let stems = result22
        .iter()
        .map(|ch| Ok(AudioBuffer::new(rate, from_model_rate(ch, rate, shape.frames())?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(StemSet { names: model.meta.stems.clone(), stems, residual_max: 0.0, unseen_max: 0.0, seconds: 0.0 })
}

#[cfg(test)]
#[path = "tasks_tests.rs"]
mod tests;
