//! One render: builds the engine job from a captured clip, runs `msdm::tasks::run` on the
//! instance's own compute threads, and caches the stems. It reports what it does through a
//! callback (the caller decides what the editor shows and whether to go on), so it knows nothing
//! of the plugin's shared state.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Result};
use msdm::audio::AudioBuffer;
use msdm::ops::ComputePool;
use msdm::tasks::{Given, Job, Settings};

use crate::cache::{render_key, Cache};
use crate::params::{JobKind, Quality, Role};
use crate::session::{ClipRef, RegenRange, RenderSpec, Take};

/// A finished capture in memory: `CAPTURE_CHANNELS` planar channels at `info.rate`.
pub struct Clip {
    pub info: ClipRef,
    pub audio: Vec<Vec<f32>>,
}

impl Clip {
    /// The main input (stereo).
    pub fn main(&self) -> Vec<Vec<f32>> {
        vec![self.audio[0].clone(), self.audio[1].clone()]
    }

    /// Stem `k`'s sidechain (stereo).
    pub fn sidechain(&self, k: usize) -> Vec<Vec<f32>> {
        vec![self.audio[2 + 2 * k].clone(), self.audio[3 + 2 * k].clone()]
    }
}

pub struct JobRequest {
    pub id: u64,
    pub model_path: PathBuf,
    pub spec: RenderSpec,
    pub seed: u64,
    pub clip: Option<Arc<Clip>>,
    /// "Regenerate range" (`spec.range`): the stems of the take it starts from (four stereo
    /// stems of `len` samples at `rate`).
    pub parent: Option<Arc<Vec<Vec<Vec<f32>>>>>,
    /// Where the stems go on the timeline, at `rate`.
    pub start: i64,
    pub rate: u32,
    pub len: usize,
    pub cache_root: Option<PathBuf>,
    /// Diffusion steps instead of the quality's (tests and benchmarks; see `WorkerOptions`).
    pub steps_override: Option<usize>,
    /// Set by Cancel: also stops a model load between tensors.
    pub cancel: Arc<AtomicBool>,
}

pub struct JobOutput {
    pub take: Take,
    /// Four stereo stems at `take.rate`, each `take.len` samples.
    pub stems: Vec<Vec<Vec<f32>>>,
    /// A cache write failed (the stems still play, but will not survive a reload).
    pub cache_error: Option<String>,
    /// The stems came from the cache (nothing was rendered).
    pub from_cache: bool,
    /// The render time predicted before it started (from earlier renders of its kind).
    pub predicted: Option<f64>,
    /// The model, kept alive by the worker so the next render does not load it again.
    pub model: Arc<msdm::model_file::Model>,
}

/// Builds the engine job. Impute: a Given stem comes from its sidechain if that carried audio
/// during the capture, else from the main input (only one stem may use the main input).
pub fn build_job(spec: &RenderSpec, clip: Option<&Clip>, rate: u32, len: usize) -> Result<Job> {
    match spec.job {
        JobKind::Separate => {
            let Some(clip) = clip else {
                bail!("Nothing captured yet: arm, play the region in the host, then stop (or press Process).")
            };
            Ok(Job::Separate { mix: AudioBuffer { rate: clip.info.rate, channels: clip.main() } })
        }
        JobKind::Impute => {
            let Some(clip) = clip else {
                bail!("Nothing captured yet: arm, play the given stems in the host, then stop (or press Process).")
            };
            let given_from_main: Vec<&str> = (0..4)
                .filter(|&k| spec.roles[k] == Role::Given && !clip.info.sidechains[k])
                .map(|k| msdm::STEMS[k])
                .collect();
            if given_from_main.len() > 1 {
                bail!(
                    "Stems {} are all Given from the main input. Route all but one of them to their own \
                     sidechain input (named after the stem), or set the others to Generate or Silent.",
                    given_from_main.join(", ")
                );
            }
            if spec.roles.iter().all(|r| *r != Role::Generate) {
                bail!("Impute has nothing to generate: set at least one stem to Generate.");
            }
            if spec.roles.iter().all(|r| *r != Role::Given) {
                bail!("Impute has nothing to fit: set at least one stem to Given (or use the Generate job).");
            }
            let given = (0..4)
                .map(|k| match spec.roles[k] {
                    Role::Given => Given::Audio(AudioBuffer {
                        rate: clip.info.rate,
                        channels: if clip.info.sidechains[k] { clip.sidechain(k) } else { clip.main() },
                    }),
                    Role::Silent => Given::Silent,
                    Role::Generate => Given::Generate,
                })
                .collect();
            Ok(Job::Impute { given })
        }
        JobKind::Generate => Ok(Job::Generate { seconds: len as f64 / rate as f64, rate, channels: 2 }),
    }
}

/// Posterior samples a Final separation averages (or the model file's own number, if higher):
/// with the bundled file the mean of 2 separates 0.7 dB better (SI-SDRi All +6.15 against +5.43
/// on the test songs) in twice the time, and Final is the quality a bounce is made at (model card).
pub const FINAL_SEPARATION_AVERAGE: usize = 2;

/// Engine settings for a quality level; `steps_override` replaces the steps (one call per step).
pub fn settings_for(job: &Job, model: &msdm::model_file::Model, quality: Quality, seed: u64, steps_override: Option<usize>) -> Settings {
    let mut s = Settings::for_job(job, model);
    if quality == Quality::Draft {
        // Half the network calls: one call per step, else half the steps, but never below 16
        // steps (earlier bundled models' Dirac sampler diverged at 12; see the model card).
        if s.resamples > 1 {
            s.resamples = 1;
        } else {
            s.steps = (s.steps / 2).max(16).min(s.steps);
        }
    } else if matches!(job, Job::Separate { .. }) {
        s.average = s.average.max(FINAL_SEPARATION_AVERAGE);
    }
    if let Some(steps) = steps_override {
        s.steps = steps.max(1);
        s.resamples = 1;
    }
    s.seed = seed;
    s
}

/// What a render tells its caller while it runs.
pub enum RenderNote {
    /// The model in use (its file and id) and the compute device.
    Model { name: String, device: Option<String> },
    /// Predicted seconds of this clip at (draft, final) quality.
    Predicted(f64, f64),
    /// Denoiser calls done of total.
    Progress { done: usize, total: usize },
}

/// Runs one render on `pool`. `note` hears what happens; when it returns false the render stops
/// with an error whose text contains "cancelled".
pub fn run(req: JobRequest, pool: &ComputePool, note: &mut (dyn FnMut(RenderNote) -> bool + Send)) -> Result<JobOutput> {
    pool.install(|| run_here(req, note))
}

fn run_here(req: JobRequest, note: &mut (dyn FnMut(RenderNote) -> bool + Send)) -> Result<JobOutput> {
    let cancel = Arc::clone(&req.cancel);
    let model = crate::models::shared(&req.model_path, &|| !cancel.load(Ordering::Acquire))?;
    note(RenderNote::Model {
        name: format!("{} ({})", req.model_path.display(), model.id()),
        device: crate::models::device().ok().map(|d| msdm::device::describe(&d)),
    });
    if let Some(range) = req.spec.range.clone() {
        return regenerate(req, &range, model, note);
    }
    let job = build_job(&req.spec, req.clip.as_deref(), req.rate, req.len)?;
    let settings = settings_for(&job, &model, req.spec.quality, req.seed, req.steps_override);
    let draft = settings_for(&job, &model, Quality::Draft, req.seed, None);
    let fin = settings_for(&job, &model, Quality::Final, req.seed, None);
    // Predictions come from earlier renders of this kind (no timing run of the network first,
    // which would add its own calls to this render); the first render shows its progress only.
    let predict = |note: &mut dyn FnMut(RenderNote) -> bool| {
        if let (Some(d), Some(f)) = (msdm::tasks::known_seconds(&model, &job, &draft), msdm::tasks::known_seconds(&model, &job, &fin)) {
            note(RenderNote::Predicted(d, f));
        }
    };
    predict(note);
    let clip_hash = req.clip.as_ref().map(|c| c.info.hash.clone());
    let input = clip_hash.clone().unwrap_or_else(|| "generate".into());
    let mut take = keyed_take(&req, &model, &settings, &input, clip_hash)?;
    if let Some(stems) = cached(&req, &take.stems_key) {
        return Ok(JobOutput { take, stems, cache_error: None, from_cache: true, predicted: None, model });
    }
    let predicted = msdm::tasks::known_seconds(&model, &job, &settings);
    let started = std::time::Instant::now();
    let out = reporting(note, |progress| msdm::tasks::run(&model, &job, &settings, progress))?;
    msdm::tasks::record_seconds(&model, &job, &settings, started.elapsed().as_secs_f64());
    predict(note);
    take.residual_max = out.residual_max;
    Ok(JobOutput { predicted, ..store(&req, take, out.stems, model)? })
}

/// Runs `work` with a progress callback that reports to `note`; when `note` says stop, the work
/// ends with a "render cancelled" error.
fn reporting(
    note: &mut (dyn FnMut(RenderNote) -> bool + Send),
    work: impl FnOnce(&mut dyn FnMut(msdm::tasks::Progress) -> bool) -> Result<msdm::tasks::StemSet>,
) -> Result<msdm::tasks::StemSet> {
    let mut going = true;
    let out = work(&mut |p| {
        going = note(RenderNote::Progress { done: p.done, total: p.total });
        going
    })?;
    if !going {
        bail!("render cancelled");
    }
    Ok(out)
}

/// The take a render makes, keyed (content-addressed) by its input (the clip's hash, the parent
/// take's key, or "generate"), the model, the seed, the settings and the length: the same key
/// means the same stems.
fn keyed_take(req: &JobRequest, model: &msdm::model_file::Model, settings: &Settings, input: &str, clip: Option<String>) -> Result<Take> {
    let mut spec = req.spec.clone();
    spec.steps = settings.steps;
    spec.resamples = settings.resamples;
    let mut parts = vec![input.to_string(), model.id(), req.seed.to_string(), serde_json::to_string(&spec)?, format!("{}@{}", req.len, req.rate)];
    if settings.average > 1 {
        // a take averaged over posterior samples is other stems (earlier takes keep their keys)
        parts.push(format!("average {}", settings.average));
    }
    if let Some(w) = settings.wiener {
        // the post-filter changes the stems too, and the model id hashes the weights only: the
        // bundled file gained the filter in its stored defaults with its id unchanged, so without
        // this, takes cached before would come back unfiltered
        parts.push(format!("wiener {} {}", w.frame, w.exponent));
    }
    if settings.stereo != msdm::stereo::StereoMode::Each {
        // a stereo take separated from the mid is other stems (the same file can gain the mode)
        parts.push("stereo mid".to_string());
    }
    let key = render_key(&parts.iter().map(String::as_str).collect::<Vec<_>>());
    Ok(Take {
        clip,
        start: req.start,
        rate: req.rate,
        len: req.len,
        model_id: model.id(),
        seed: req.seed,
        spec,
        stems_key: key,
        residual_max: 0.0,
    })
}

/// The stems under `key` if the cache holds them at the request's rate and length.
fn cached(req: &JobRequest, key: &str) -> Option<Vec<Vec<Vec<f32>>>> {
    let cache = Cache::at(req.cache_root.clone()?);
    let (rate, stems) = cache.get_stems(key).ok()?;
    (rate == req.rate && stems.iter().all(|s| s.len() == 2 && s[0].len() == req.len)).then_some(stems)
}

/// Fits the engine's stems to the take (stereo, its length) and caches them.
fn store(req: &JobRequest, take: Take, stems: Vec<AudioBuffer>, model: Arc<msdm::model_file::Model>) -> Result<JobOutput> {
    if stems.len() != 4 {
        bail!("the engine returned {} stems instead of 4", stems.len());
    }
    let stems: Vec<Vec<Vec<f32>>> = stems.into_iter().map(|s| fit_stereo(s.channels, req.len)).collect();
    let cache_error = match req.cache_root.clone().map(Cache::at) {
        Some(cache) => cache.put_stems(&take.stems_key, req.rate, &stems).err().map(|e| format!("{e:#}")),
        None => Some("no cache folder".into()),
    };
    Ok(JobOutput { take, stems, cache_error, from_cache: false, predicted: None, model })
}

/// "Regenerate range": part of one stem of the parent take made again with the model's
/// imputation settings (at the take's quality), everything else kept sample for sample.
fn regenerate(
    req: JobRequest,
    range: &RegenRange,
    model: Arc<msdm::model_file::Model>,
    note: &mut (dyn FnMut(RenderNote) -> bool + Send),
) -> Result<JobOutput> {
    let Some(parent) = req.parent.as_deref() else { bail!("no stems to regenerate from") };
    if parent.len() != 4 || parent.iter().any(|s| s.len() != 2 || s[0].len() != req.len || s[1].len() != req.len) {
        bail!("the take to regenerate from does not hold four stereo stems of {} samples", req.len);
    }
    let impute = Job::Impute { given: Vec::new() };
    let settings = settings_for(&impute, &model, req.spec.quality, req.seed, req.steps_override);
    let what = msdm::regenerate::Regeneration {
        stems: vec![range.stem],
        range: range.from..range.to,
        crossfade: msdm::regenerate::DEFAULT_CROSSFADE_S,
    };
    let mut take = keyed_take(&req, &model, &settings, &range.parent, None)?;
    if let Some(stems) = cached(&req, &take.stems_key) {
        return Ok(JobOutput { take, stems, cache_error: None, from_cache: true, predicted: None, model });
    }
    let stems: Vec<AudioBuffer> = parent.iter().map(|s| AudioBuffer { rate: req.rate, channels: s.clone() }).collect();
    let out = reporting(note, |progress| msdm::regenerate::regenerate(&model, &stems, &what, &settings, progress))?;
    take.residual_max = out.residual_max;
    store(&req, take, out.stems, model)
}

/// Exactly two channels of exactly `len` samples, subnormals flushed to zero.
pub fn fit_stereo(mut channels: Vec<Vec<f32>>, len: usize) -> Vec<Vec<f32>> {
    if channels.is_empty() {
        channels.push(Vec::new());
    }
    if channels.len() == 1 {
        channels.push(channels[0].clone());
    }
    channels.truncate(2);
    for ch in &mut channels {
        ch.resize(len, 0.0);
        for x in ch.iter_mut() {
            if !x.is_finite() || x.abs() < 1e-30 {
                *x = 0.0;
            }
        }
    }
    channels
}

/// Length in seconds of `bars` bars at `tempo` BPM with `beats_per_bar` quarter notes per bar.
pub fn bars_to_seconds(bars: u32, tempo: f64, beats_per_bar: f64) -> f64 {
    bars as f64 * beats_per_bar * 60.0 / tempo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clip(len: usize) -> Clip {
        let info = ClipRef {
            hash: "ab".into(),
            start: 0,
            rate: 48_000,
            len,
            tempo: None,
            beats_per_bar: None,
            sidechains: [false, false, true, false],
        };
        Clip { info, audio: (0..10).map(|c| vec![c as f32 * 0.01; len]).collect() }
    }

    fn spec(roles: [Role; 4]) -> RenderSpec {
        RenderSpec { job: JobKind::Impute, roles, quality: Quality::Draft, steps: 0, resamples: 0, bars: 4, seconds: 0.0, range: None }
    }

    #[test]
    fn impute_jobs_take_given_silent_and_generated_stems_from_the_roles() {
        use Role::*;
        let c = clip(100);
        let Job::Impute { given } = build_job(&spec([Generate, Given, Given, Silent]), Some(&c), 48_000, 100).unwrap() else {
            panic!("not an imputation job");
        };
        assert_eq!(given[0], msdm::tasks::Given::Generate);
        assert_eq!(given[1].audio().unwrap().channels, c.main());
        assert_eq!(given[2].audio().unwrap().channels, c.sidechain(2));
        assert_eq!(given[3], msdm::tasks::Given::Silent);
        let nothing_to_fit = build_job(&spec([Generate, Silent, Silent, Generate]), Some(&c), 48_000, 100).unwrap_err();
        assert!(nothing_to_fit.to_string().contains("set at least one stem to Given"), "{nothing_to_fit}");
        let nothing_to_make = build_job(&spec([Given, Silent, Given, Silent]), Some(&c), 48_000, 100).unwrap_err();
        assert!(nothing_to_make.to_string().contains("nothing to generate"), "{nothing_to_make}");
    }

    /// Final separation averages posterior samples, Draft does not, nor does any other job (a
    /// mean of generated takes is a blur); the averaged take gets its own cache key.
    #[test]
    fn final_separation_averages_and_keys_apart() {
        let model = msdm::model_file::Model::random(msdm::config::ModelConfig::tiny(), 3, &candle_core::Device::Cpu).unwrap();
        let separate = Job::Separate { mix: AudioBuffer::new(48_000, vec![vec![0.1; 100]]) };
        let generate = Job::Generate { seconds: 1.0, rate: 48_000, channels: 2 };
        let fin = settings_for(&separate, &model, Quality::Final, 0, None);
        assert_eq!(fin.average, FINAL_SEPARATION_AVERAGE);
        assert_eq!(settings_for(&separate, &model, Quality::Draft, 0, None).average, 1);
        assert_eq!(settings_for(&generate, &model, Quality::Final, 0, None).average, 1);
        let req = JobRequest {
            id: 1,
            model_path: "tiny.safetensors".into(),
            spec: RenderSpec { job: JobKind::Separate, quality: Quality::Final, ..spec([Role::Generate; 4]) },
            seed: 0,
            clip: None,
            parent: None,
            start: 0,
            rate: 48_000,
            len: 100,
            cache_root: None,
            steps_override: None,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        let plain = Settings { average: 1, ..fin.clone() };
        let key = |s: &Settings| keyed_take(&req, &model, s, "clip", None).unwrap().stems_key;
        assert_ne!(key(&fin), key(&plain));
        // the post-filter keys its takes apart too (a file can gain it with its id unchanged)
        let filtered = Settings { wiener: Some(msdm::wiener::WienerFilter::DEFAULT), ..plain.clone() };
        assert_ne!(key(&filtered), key(&plain));
        let mid = Settings { stereo: msdm::stereo::StereoMode::Mid, ..plain.clone() };
        assert_ne!(key(&mid), key(&plain));
        // a take of one sample keeps the key it had before averaging existed
        let mut spec = req.spec.clone();
        (spec.steps, spec.resamples) = (plain.steps, plain.resamples);
        let before = render_key(&["clip", &model.id(), "0", &serde_json::to_string(&spec).unwrap(), "100@48000"]);
        assert_eq!(key(&plain), before);
    }
}
