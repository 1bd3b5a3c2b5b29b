//! The plugin's own worker thread: assembles captured chunks, starts renders on a job thread,
//! publishes stem sets to the audio thread (and frees the old ones), restores takes from the
//! cache, exports. Never runs on nice-plug's shared background thread.

mod export;
mod jobs;
mod takes;
#[cfg(test)]
mod tests;
mod waveforms;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use crossbeam_channel::{select, unbounded, Receiver, Sender};

use crate::assembly::Assembly;
use crate::cache::{content_hash, Cache};
use crate::messages::{Command, ToAudio, ToWorker};
use crate::render::{Clip, JobOutput};
use crate::session::{ClipRef, Take};
use crate::shared::{Phase, Shared, WorkerEnds};
use waveforms::{peaks, PEAK_COLUMNS};

/// A finished render: its id and result.
type JobResult = (u64, Result<JobOutput>);

struct RunningJob {
    id: u64,
    cancel: Arc<AtomicBool>,
    handle: JoinHandle<()>,
    started: std::time::Instant,
}

/// Stems of the take that plays, at the rate they were rendered at.
struct Rendered {
    take: Take,
    stems: Vec<Vec<Vec<f32>>>,
}

struct Worker {
    shared: Arc<Shared>,
    ends: WorkerEnds,
    cache: Result<Cache, String>,
    assembly: Assembly,
    clip: Option<Arc<Clip>>,
    job: Option<RunningJob>,
    next_job: u64,
    results: (Sender<JobResult>, Receiver<JobResult>),
    rendered: Option<Rendered>,
    host_rate: u32,
    /// A message for the audio thread that did not fit in its channel yet.
    pending: Option<ToAudio>,
    /// After a cancelled capture: drop chunks still in flight until the next arm.
    discard_chunks: bool,
    /// The last model used: holding it keeps it loaded (and shared) between renders.
    model: Option<Arc<msdm::model_file::Model>>,
    /// This instance's compute threads, started at the first render and joined when the worker
    /// ends (never rayon's global pool, whose threads would outlive the instance).
    pool: Option<Arc<msdm::ops::ComputePool>>,
    steps_override: Option<usize>,
}

/// What a worker is told when it starts (read once per instance, never inside a render).
#[derive(Clone, Debug, Default)]
pub struct WorkerOptions {
    /// The stem cache folder; `None`: `$MSDM_CACHE_DIR`, else the user's data folder.
    pub cache_root: Option<PathBuf>,
    /// Diffusion steps for every render instead of the quality's (one call per step): host
    /// tests and benchmarks set `MSDM_PLUGIN_STEPS`.
    pub steps_override: Option<usize>,
}

impl WorkerOptions {
    pub fn from_env() -> Self {
        let steps_override = std::env::var("MSDM_PLUGIN_STEPS").ok().and_then(|v| v.parse::<usize>().ok());
        Self { cache_root: None, steps_override }
    }

    /// The worker's main function with these options, for [`Shared::new`].
    pub fn worker_main(self) -> crate::shared::WorkerMain {
        Box::new(move |shared, ends| run(shared, ends, self))
    }
}

pub fn run(shared: Arc<Shared>, ends: WorkerEnds, options: WorkerOptions) {
    let cache = match &options.cache_root {
        Some(root) => Ok(Cache::at(root.clone())),
        None => Cache::open().map_err(|e| format!("{e:#}")),
    };
    let mut w = Worker {
        cache,
        steps_override: options.steps_override,
        shared,
        ends,
        assembly: Assembly::default(),
        clip: None,
        job: None,
        next_job: 1,
        results: unbounded(),
        rendered: None,
        host_rate: 0,
        pending: None,
        discard_chunks: false,
        model: None,
        pool: None,
    };
    w.run_loop();
    w.stop_job();
    // Last owner of the pool: its threads are joined here, before the instance is gone.
    drop(w.pool.take());
}

impl Worker {
    fn run_loop(&mut self) {
        loop {
            let from_audio = self.ends.from_audio.clone();
            let commands = self.ends.commands.clone();
            let garbage = self.ends.garbage.clone();
            let results = self.results.1.clone();
            let step = catch_unwind(AssertUnwindSafe(|| -> bool {
                select! {
                    recv(from_audio) -> m => match m {
                        Ok(ToWorker::Chunk(mut c)) => {
                            if !self.discard_chunks {
                                self.assembly.add(&c);
                            }
                            self.shared.capture_frames.store(self.assembly.len() as u64, Ordering::Release);
                            self.shared.capture_rate.store(self.assembly.rate, Ordering::Release);
                            self.shared.request_repaint();
                            c.len = 0;
                            let _ = self.ends.free.try_send(c);
                        }
                        Ok(ToWorker::Stopped) => {
                            if !self.discard_chunks {
                                self.capture_finished(true)
                            }
                        }
                        Err(_) => return false,
                    },
                    recv(commands) -> c => match c {
                        Ok(Command::Shutdown) | Err(_) => return false,
                        Ok(c) => self.handle(c),
                    },
                    recv(garbage) -> old => drop(old),
                    recv(results) -> r => if let Ok((id, r)) = r { self.job_done(id, r) },
                    default(Duration::from_millis(20)) => {}
                }
                self.flush_pending();
                true
            }));
            match step {
                Ok(true) => {}
                Ok(false) => return,
                Err(panic) => {
                    self.shared.set_phase(Phase::Error(format!("Internal error: {}", panic_text(&panic))));
                }
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Activated { rate } => {
                if rate != self.host_rate {
                    self.host_rate = rate;
                    self.publish();
                }
            }
            Command::Arm => {
                self.discard_chunks = false;
                self.assembly.clear();
                self.shared.capture_frames.store(0, Ordering::Release);
                self.shared.capture.armed.store(true, Ordering::Release);
                self.shared.status().warning = None;
                self.shared.set_message("Armed: play the region in the host, then stop the transport.");
            }
            Command::Process { new_take } => {
                if !self.assembly.is_empty() {
                    self.shared.capture.armed.store(false, Ordering::Release);
                    self.capture_finished(false);
                }
                self.start_render(new_take);
            }
            Command::Cancel => {
                self.shared.capture.armed.store(false, Ordering::Release);
                if self.job.is_some() {
                    self.stop_job();
                    self.shared.set_message("Render cancelled.");
                    self.set_settled_phase();
                } else {
                    self.assembly.clear();
                    self.discard_chunks = true;
                    self.shared.set_message("Capture cancelled.");
                }
            }
            Command::SelectTake(i) => self.select_take(i),
            Command::Regenerate { stem, from, to } => self.start_regeneration(stem, from, to),
            Command::Restore => self.restore(),
            Command::ExportMidi(dir) => match self.export_midi(&dir) {
                Ok(msg) => self.shared.set_message(msg),
                Err(e) => self.shared.set_message(format!("MIDI export failed: {e:#}")),
            },
            Command::Export(dir) => match self.export(&dir) {
                Ok(msg) => self.shared.set_message(msg),
                Err(e) => self.shared.set_message(format!("Export failed: {e:#}")),
            },
            Command::SetModel(path) => {
                self.shared.params.session.update(|s| s.model_path = path.clone());
                self.model = None; // the next render loads (or shares) the chosen model
                match crate::models::resolve(path.as_deref()) {
                    Ok(p) => self.shared.set_message(format!("Model for the next render: {}", p.display())),
                    Err(e) => self.shared.set_message(format!("{e:#}")),
                }
            }
            Command::Shutdown => {}
        }
    }

    /// The capture pass ended: hash and cache the clip; with `render`, start processing.
    fn capture_finished(&mut self, render: bool) {
        let Some(a) = self.assembly.take() else { return };
        nice_plug::nice_log!("msdm: captured {} frames at {} Hz from {}", a.len(), a.rate, a.start);
        self.shared.capture_frames.store(0, Ordering::Release);
        let hash = content_hash(a.rate, &a.channels);
        let sidechains: [bool; 4] =
            std::array::from_fn(|k| a.channels[2 + 2 * k].iter().chain(&a.channels[3 + 2 * k]).any(|x| *x != 0.0));
        let info = ClipRef {
            hash: hash.clone(),
            start: a.start,
            rate: a.rate,
            len: a.len(),
            tempo: a.tempo,
            beats_per_bar: a.beats_per_bar,
            sidechains,
        };
        let mut warning = None;
        match &self.cache {
            Ok(cache) => {
                if let Err(e) = cache.put_clip(&hash, a.rate, &a.channels) {
                    warning = Some(format!("Could not store the captured audio in the cache: {e:#}"));
                }
            }
            Err(e) => warning = Some(format!("No cache folder ({e}); stems will not survive a reload.")),
        }
        if a.tempo.is_none() {
            warning.get_or_insert_with(|| "The host reports no tempo; Generate lengths in bars assume 120 BPM.".into());
        }
        self.shared.params.session.update(|s| s.clip = Some(info.clone()));
        let clip = Arc::new(Clip { info, audio: a.channels });
        {
            let mut st = self.shared.status();
            st.warning = warning;
            st.predicted = None;
            let mut waves = (*st.waves).clone();
            waves.clip = Some(peaks(&[&clip.audio[0], &clip.audio[1]], PEAK_COLUMNS));
            st.waves = Arc::new(waves);
            st.message = format!(
                "Captured {:.2} s at {} Hz from {}.",
                clip.info.len as f64 / clip.info.rate as f64,
                clip.info.rate,
                timeline(clip.info.start, clip.info.rate)
            );
        }
        self.clip = Some(clip);
        self.shared.request_repaint();
        if render {
            self.start_render(false);
        }
    }

    fn set_settled_phase(&self) {
        let phase = if self.rendered.is_some() { Phase::Ready } else { Phase::Idle };
        self.shared.set_phase(phase);
    }

    fn job_done(&mut self, id: u64, result: Result<JobOutput>) {
        match &self.job {
            Some(j) if j.id == id => {}
            _ => return, // stale
        }
        let elapsed = self.job.as_ref().map(|j| j.started.elapsed().as_secs_f64());
        if let Some(job) = self.job.take() {
            let _ = job.handle.join();
        }
        match &result {
            Ok(out) => nice_plug::nice_log!("msdm: render done, take key {}", out.take.stems_key),
            Err(e) => nice_plug::nice_log!("msdm: render ended: {e:#}"),
        }
        match result {
            Ok(out) => {
                let index = self.shared.params.session.update(|s| {
                    let i = match s.takes.iter().position(|t| t.stems_key == out.take.stems_key) {
                        Some(i) => i,
                        None => {
                            s.takes.push(out.take.clone());
                            s.takes.len() - 1
                        }
                    };
                    s.current = Some(i);
                    i
                });
                let take = out.take.clone();
                // The editor's prediction against the real time (docs/plugin.md reports both).
                let timing = match (out.from_cache, elapsed, out.predicted) {
                    (true, _, _) => " from the cache".to_string(),
                    (false, Some(e), Some(p)) if p.is_finite() => format!(" in {e:.1} s (predicted {p:.1} s)"),
                    (false, Some(e), _) => format!(" in {e:.1} s"),
                    _ => String::new(),
                };
                nice_plug::nice_log!("msdm: take ready{timing}");
                self.model = Some(out.model);
                self.rendered = Some(Rendered { take: out.take, stems: out.stems });
                self.after_stems_changed();
                let mut st = self.shared.status();
                st.phase = Phase::Ready;
                st.warning = out.cache_error.map(|e| format!("Stems could not be cached ({e}); they will not survive a reload."));
                st.message = format!("Take {} ready (seed {}){timing}.", index + 1, take.seed);
                drop(st);
                self.shared.request_repaint();
            }
            Err(e) => {
                let text = format!("{e:#}");
                if text.contains("cancelled") {
                    self.shared.set_message("Render cancelled.");
                    self.set_settled_phase();
                } else {
                    self.shared.set_phase(Phase::Error(text));
                }
            }
        }
    }

    /// Sends the current stems, resampled to the host rate, to the audio thread.
    fn publish(&mut self) {
        let Some(r) = &self.rendered else {
            self.pending = Some(ToAudio::Clear);
            self.flush_pending();
            return;
        };
        if self.host_rate == 0 {
            return;
        }
        match takes::build_play_set(r, self.host_rate) {
            Ok(set) => self.pending = Some(ToAudio::Play(Box::new(set))),
            Err(e) => self.shared.set_phase(Phase::Error(format!("Cannot resample the stems: {e:#}"))),
        }
        self.flush_pending();
    }

    fn flush_pending(&mut self) {
        if let Some(m) = self.pending.take() {
            if let Err(e) = self.ends.to_audio.try_send(m) {
                self.pending = Some(e.into_inner());
            }
        }
    }
}

fn fresh_seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    // splitmix64 of the clock, kept below 2^31 so it is easy to read and type
    let mut z = t.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & 0x7FFF_FFFF
}

fn timeline(pos: i64, rate: u32) -> String {
    let s = pos as f64 / rate.max(1) as f64;
    format!("{}:{:05.2}", (s / 60.0).floor() as i64, s.rem_euclid(60.0))
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".into()
    }
}
