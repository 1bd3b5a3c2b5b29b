//! Starting and stopping renders: a render from the captured clip ("Process", "New take") or a
//! regeneration of part of one stem of the current take ("Regenerate range"). Each runs on its
//! own `msdm-render` thread over the instance's compute pool and reports back through the
//! worker's results channel.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};

use super::{fresh_seed, panic_text, RunningJob, Worker};
use crate::params::JobKind;
use crate::render::{self, JobRequest, RenderNote};
use crate::session::{RegenRange, RenderSpec};
use crate::shared::Phase;

impl Worker {
    pub(super) fn start_render(&mut self, new_take: bool) {
        if let Err(e) = self.try_start_render(new_take) {
            nice_plug::nice_warn!("msdm: cannot render: {e:#}");
            self.shared.set_phase(Phase::Error(format!("{e:#}")));
        }
    }

    fn try_start_render(&mut self, new_take: bool) -> Result<()> {
        self.stop_job();
        let p = &self.shared.params;
        let job = p.job.value();
        let clip = self.clip.clone();
        let session = p.session.get();
        let model_path = crate::models::resolve(session.model_path.as_deref())?;
        let seed = if new_take {
            let s = fresh_seed();
            p.session.update(|x| x.seed = s);
            s
        } else {
            session.seed
        };
        let bars = p.bars.value().max(1) as u32;
        let (start, rate, len, seconds) = match (job, &clip) {
            (JobKind::Generate, _) => {
                let (start, rate, tempo, bpb) = match &clip {
                    Some(c) => (c.info.start, c.info.rate, c.info.tempo, c.info.beats_per_bar),
                    None => (0, self.host_rate, None, None),
                };
                if rate == 0 {
                    anyhow::bail!("The plugin has not been activated by the host yet; start playback once, then press Process.");
                }
                let seconds = render::bars_to_seconds(bars, tempo.unwrap_or(120.0), bpb.unwrap_or(4.0));
                (start, rate, (seconds * rate as f64).round() as usize, seconds)
            }
            (_, Some(c)) => (c.info.start, c.info.rate, c.info.len, c.info.len as f64 / c.info.rate as f64),
            (_, None) => anyhow::bail!(
                "Nothing captured yet: arm, play the region in the host, then stop the transport (or press Process)."
            ),
        };
        let spec = RenderSpec { job, roles: p.roles(), quality: p.quality.value(), steps: 0, resamples: 0, bars, seconds, range: None };
        // Check the job can be built before starting a thread (clear errors right away).
        render::build_job(&spec, clip.as_deref(), rate, len)?;
        let req = JobRequest {
            id: 0,
            model_path,
            spec,
            seed,
            clip: if job == JobKind::Generate { None } else { clip },
            parent: None,
            start,
            rate,
            len,
            cache_root: self.cache.as_ref().ok().map(|c| c.root().to_path_buf()),
            steps_override: self.steps_override,
            cancel: Arc::default(),
        };
        self.spawn(req)
    }

    /// "Regenerate range": part of one stem of the take that plays, made again with a fresh seed,
    /// as a new take; `from`..`to` are fractions of the take's length.
    pub(super) fn start_regeneration(&mut self, stem: usize, from: f64, to: f64) {
        if let Err(e) = self.try_start_regeneration(stem, from, to) {
            self.shared.set_phase(Phase::Error(format!("{e:#}")));
        }
    }

    fn try_start_regeneration(&mut self, stem: usize, from: f64, to: f64) -> Result<()> {
        let Some(r) = &self.rendered else {
            anyhow::bail!("No take to regenerate from: render one first (Process).");
        };
        if stem >= crate::STEM_COUNT || !(0.0..=1.0).contains(&from) || !(0.0..=1.0).contains(&to) || from >= to {
            anyhow::bail!("Select a range on one stem's waveform first (drag across it).");
        }
        let (take, parent) = (r.take.clone(), Arc::new(r.stems.clone()));
        let frames = |f: f64| ((f * take.len as f64).round() as usize).min(take.len);
        let range = RegenRange { parent: take.stems_key.clone(), stem, from: frames(from), to: frames(to) };
        if range.to <= range.from {
            anyhow::bail!("The selected range is shorter than one sample: drag across a longer part of the stem.");
        }
        self.stop_job();
        let session = self.shared.params.session.get();
        let model_path = crate::models::resolve(session.model_path.as_deref())?;
        let seed = fresh_seed();
        let spec = RenderSpec { quality: self.shared.params.quality.value(), range: Some(range), ..take.spec.clone() };
        let req = JobRequest {
            id: 0,
            model_path,
            spec,
            seed,
            clip: None,
            parent: Some(parent),
            start: take.start,
            rate: take.rate,
            len: take.len,
            cache_root: self.cache.as_ref().ok().map(|c| c.root().to_path_buf()),
            steps_override: self.steps_override,
            cancel: Arc::default(),
        };
        self.spawn(req)
    }

    /// Runs `req` on a new render thread (its id assigned here); the result arrives on the
    /// worker's results channel.
    fn spawn(&mut self, mut req: JobRequest) -> Result<()> {
        let id = self.next_job;
        self.next_job += 1;
        req.id = id;
        let seed = req.seed;
        let pool = self.compute_pool()?;
        let cancel = Arc::clone(&req.cancel);
        let shared = Arc::clone(&self.shared);
        let tx = self.results.0.clone();
        let flag = Arc::clone(&cancel);
        self.shared.set_phase(Phase::Processing { done: 0, total: 0, started: Instant::now() });
        self.shared.set_message(format!("Rendering with seed {seed}…"));
        let handle = std::thread::Builder::new()
            .name("msdm-render".into())
            .spawn(move || {
                let started = Instant::now();
                let mut note = |n: RenderNote| {
                    match n {
                        RenderNote::Model { name, device } => {
                            let mut st = shared.status();
                            st.model = Some(name);
                            st.device = device.or(st.device.take());
                        }
                        RenderNote::Predicted(draft, fin) => shared.status().predicted = Some((draft, fin)),
                        RenderNote::Progress { done, total } => {
                            shared.status().phase = Phase::Processing { done, total, started };
                            shared.request_repaint();
                        }
                    }
                    !flag.load(Ordering::Acquire)
                };
                let r = catch_unwind(AssertUnwindSafe(|| render::run(req, &pool, &mut note)))
                    .unwrap_or_else(|panic| Err(anyhow::anyhow!("internal error: {}", panic_text(&panic))));
                let _ = tx.send((id, r));
            })
            .context("cannot start the render thread")?;
        self.job = Some(RunningJob { id, cancel, handle, started: Instant::now() });
        Ok(())
    }

    /// The instance's compute pool, started on first use.
    fn compute_pool(&mut self) -> Result<Arc<msdm::ops::ComputePool>> {
        if let Some(p) = &self.pool {
            return Ok(Arc::clone(p));
        }
        crate::library::pin();
        let p = Arc::new(msdm::ops::ComputePool::new("msdm-compute", 0)?);
        self.pool = Some(Arc::clone(&p));
        Ok(p)
    }

    /// Cancels and joins the running render, if any (its result is ignored).
    pub(super) fn stop_job(&mut self) {
        if let Some(job) = self.job.take() {
            job.cancel.store(true, Ordering::Release);
            let _ = job.handle.join();
            while self.results.1.try_recv().is_ok() {}
        }
    }
}
