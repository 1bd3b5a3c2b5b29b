//! Separation of a mix of any length as a stream: audio is read, resampled to 22,050 Hz, cut into
//! the model's windows, separated a batch of windows at a time, cross-faded, resampled back and
//! given the band the model never saw, and each finished piece of the stems is handed to a
//! [`StemSink`] at once. Only a few windows of audio are held at any time, so memory does not
//! grow with the file's length; the stems are bit-identical to separating the whole file in
//! memory (every stage is a stream version of the whole-signal one).
//!
//! - Windows overlap by 1/8 and are cross-faded with complementary weights
//!   ([`crate::audio::windows`]), so the stems stay a partition of the mix.
//! - Each channel of a stereo input is processed with the same seed per window; `mono` downmixes;
//!   [`StereoMode::Mid`] separates the channels' mean once and shares each channel out to the
//!   stems ([`crate::stereo`]), half the network time of a stereo mix.
//! - After Dirac separation the part of the input the model never saw (above 11,025 Hz, plus the
//!   resampling error) is handed to the stems ([`crate::audio::residual`]), so the stems sum to
//!   the input at every sample. Gaussian separation keeps its own soft consistency and gets only
//!   the unseen part.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor};

use crate::audio::{self, AudioBuffer, OverlapJoin, ResidualStream, StreamResampler};
use crate::model_file::Model;
use crate::noise::window_seed;
use crate::sampler::SamplerConfig;
use crate::separator::{self, Likelihood};
use crate::stereo::{self, StereoMode};
use crate::wiener::WienerFilter;
use crate::job::{Progress, Settings};
use crate::MODEL_RATE;

pub use crate::stems_io::{BufferSink, BufferSource, FrameSource, StemSink};

/// Cross-fade length between separation windows: 1/8 of a window.
pub fn overlap(window: usize) -> usize {
    window / 8
}

/// How separation runs a mix of `len22` frames at the model's rate: its windows × channels in
/// `count` near-equal batches of `size` items, at most `batch` (5 windows with batch 4 run as
/// 3 + 2). The pipeline and the time prediction both plan with this, so the predicted
/// calls are the calls made. `batch` is [`windows_per_call`].
pub(crate) struct Batches {
    pub count: usize,
    pub size: usize,
}

pub(crate) fn batches(len22: usize, window: usize, channels: usize, batch: usize) -> Batches {
    let items = audio::plan(len22, window, overlap(window)).len() * channels;
    let size = items.div_ceil(items.div_ceil(batch.max(1)).max(1)).max(1);
    Batches { count: items.div_ceil(size), size }
}

/// Windows (× channels) per network call: `batch` counts the posterior samples averaged too, so
/// averaging does not multiply a call's memory (at least one window per call).
pub(crate) fn windows_per_call(settings: &Settings) -> usize {
    (settings.batch / settings.average.max(1)).max(1)
}

/// Frames of the residual rule's energy frames (at the input rate).
const RESIDUAL_FRAME: usize = 2048;

/// What a separation measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    /// Input frames separated.
    pub frames: usize,
    /// Max |input − Σ stems| over all samples and channels, as written.
    pub residual_max: f32,
    /// Max |input − Σ stems| before the unseen band was handed to the stems.
    pub unseen_max: f32,
}

/// Separates everything `source` delivers into `sink`. `progress` is called after every
/// denoiser call; returning `false` cancels the run (the error's message is `cancelled`).
pub fn separate(
    model: &Model,
    source: &mut dyn FrameSource,
    settings: &Settings,
    sink: &mut dyn StemSink,
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<Report> {
    let mut p = Pipeline::new(model, source, settings)?;
    while let Some(chunk) = source.next_chunk()? {
        p.push_input(chunk, sink, progress)?;
    }
    p.finish(sink, progress)
}

/// One window of one channel (or of the mid) waiting for its batch.
struct Item {
    window: usize,
    channel: usize,
    last: bool,
    samples: Vec<f32>,
    /// [`StereoMode::Mid`]: the window of every channel, shared out after the mid is separated.
    channels: Vec<Vec<f32>>,
}

struct Pipeline<'m> {
    model: &'m Model,
    settings: Settings,
    config: SamplerConfig,
    n_stems: usize,
    rate: u32,
    mono: bool,
    /// The mid is separated and shared out to the channels ([`StereoMode::Mid`], 2+ channels).
    mid: bool,
    window: usize,
    hop: usize,
    /// Items per network call.
    batch: usize,
    /// Planned calls in all (grows if the source's length hint was short).
    total_calls: usize,
    done_calls: usize,
    // to the model rate
    input_frames: usize,
    down: StreamResampler,
    /// The mix at 22,050 Hz from `base22` on, per channel.
    mix22: Vec<Vec<f32>>,
    base22: usize,
    next_window: usize,
    pending: Vec<Item>,
    // separated windows joined, per channel: joined[channel][stem] from `joined_pos` on
    joins: Vec<OverlapJoin>,
    joined: Vec<Vec<Vec<f32>>>,
    joined_pos: usize,
    // back to the input rate: channel c's stems, then (Gaussian) its seen mix
    up: StreamResampler,
    /// The input at its own rate from the first sample not yet written on, per channel.
    target: Vec<Vec<f32>>,
    /// Stem samples written so far; stem samples that came back from the model rate so far.
    written: usize,
    up_pos: usize,
    residual: Vec<ResidualStream>,
    report: Report,
}

impl<'m> Pipeline<'m> {
    fn new(model: &'m Model, source: &dyn FrameSource, settings: &Settings) -> Result<Self> {
        // Settings can come from a model file's metadata: their caps apply here as in tasks::run.
        settings.validate()?;
        let (rate, in_ch) = (source.rate(), source.channels());
        if in_ch == 0 {
            anyhow::bail!("the mix is empty: there is no audio to process");
        }
        if rate == 0 {
            anyhow::bail!("the mix has a sample rate of 0");
        }
        let mono = settings.mono && in_ch > 1;
        let channels = if mono { 1 } else { in_ch };
        let mid = settings.stereo == StereoMode::Mid && channels > 1;
        let n_stems = model.num_stems();
        let window = model.window();
        let overlap = overlap(window);
        let config = settings.sampler_config();
        let down = StreamResampler::new(rate, MODEL_RATE, channels)?;
        let expected22 = source.frames_hint().map(|n| down.output_len(n));
        let batches = batches(expected22.unwrap_or(window), window, settings.separation_items(in_ch), windows_per_call(settings));
        let gaussian = matches!(settings.likelihood, Likelihood::Gaussian { .. });
        Ok(Self {
            model,
            settings: settings.clone(),
            total_calls: batches.count * config.calls(),
            config,
            n_stems,
            rate,
            mono,
            mid,
            window,
            hop: window - overlap.min(window / 2),
            batch: batches.size,
            done_calls: 0,
            input_frames: 0,
            down,
            mix22: vec![Vec::new(); channels],
            base22: 0,
            next_window: 0,
            pending: Vec::new(),
            joins: (0..channels).map(|_| OverlapJoin::new(window, overlap, n_stems)).collect(),
            joined: vec![vec![Vec::new(); n_stems]; channels],
            joined_pos: 0,
            up: StreamResampler::new(MODEL_RATE, rate, channels * (n_stems + usize::from(gaussian)))?,
            target: vec![Vec::new(); channels],
            written: 0,
            up_pos: 0,
            residual: (0..channels).map(|_| ResidualStream::new(n_stems, RESIDUAL_FRAME)).collect(),
            report: Report::default(),
        })
    }

    fn channels(&self) -> usize {
        self.mix22.len()
    }

    fn push_input(
        &mut self,
        chunk: Vec<Vec<f32>>,
        sink: &mut dyn StemSink,
        progress: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<()> {
        audio::validate_chunk(&chunk, self.input_frames, self.rate).context("the mix holds invalid samples")?;
        self.input_frames += chunk.first().map_or(0, Vec::len);
        let chunk = if self.mono { vec![AudioBuffer::new(self.rate, chunk).to_mono()] } else { chunk };
        for (t, c) in self.target.iter_mut().zip(&chunk) {
            t.extend_from_slice(c);
        }
        let down = self.down.push(&chunk)?;
        self.add_mix22(down);
        self.collect_windows(None);
        while self.pending.len() >= self.batch {
            self.run_batch(sink, progress)?;
        }
        Ok(())
    }

    fn finish(mut self, sink: &mut dyn StemSink, progress: &mut dyn FnMut(Progress) -> bool) -> Result<Report> {
        if self.input_frames == 0 {
            anyhow::bail!("the mix is empty: there is no audio to process");
        }
        let down = std::mem::replace(&mut self.down, StreamResampler::new(1, 1, 0)?);
        let len22 = down.output_len(self.input_frames);
        let rest = down.finish()?;
        self.add_mix22(rest);
        self.collect_windows(Some(len22));
        while !self.pending.is_empty() {
            self.run_batch(sink, progress)?;
        }
        // The last window's samples, up to the end at 22,050 Hz.
        let joins = std::mem::take(&mut self.joins);
        for (c, join) in joins.into_iter().enumerate() {
            for (j, part) in self.joined[c].iter_mut().zip(join.finish(len22)) {
                j.extend(part);
            }
        }
        let up_in = self.take_joined();
        let mut up_out = self.up.push(&up_in)?;
        let up = std::mem::replace(&mut self.up, StreamResampler::new(1, 1, 0)?);
        for (o, rest) in up_out.iter_mut().zip(up.finish()?) {
            o.extend(rest);
        }
        // Exactly the input's length: trim the resampler's rounding, or pad with silence.
        let frames = self.input_frames;
        let have = self.up_pos + up_out.first().map_or(0, Vec::len);
        for o in &mut up_out {
            o.resize(o.len() + frames - have.min(frames), 0.0);
            o.truncate(o.len() - have.saturating_sub(frames));
        }
        self.to_residual(up_out, sink)?;
        let residual = std::mem::take(&mut self.residual);
        let finished: Vec<Vec<Vec<f32>>> = residual.into_iter().map(ResidualStream::finish).collect();
        self.write_stems(finished, sink)?;
        self.report.frames = frames;
        Ok(self.report)
    }

    fn add_mix22(&mut self, part: Vec<Vec<f32>>) {
        for (m, p) in self.mix22.iter_mut().zip(part) {
            m.extend(p);
        }
    }

    /// Queues every window whose samples have all arrived (`len22`: the end, once known). A
    /// window counts as complete once a sample after it exists, so it is known whether another
    /// window follows.
    fn collect_windows(&mut self, len22: Option<usize>) {
        let have = self.base22 + self.mix22[0].len();
        loop {
            let w = self.next_window;
            let start = w * self.hop;
            let end = start + self.window;
            let (exists, last) = match len22 {
                None => (have > end, false),
                Some(total) => (w == 0 || start - self.hop + self.window < total, end >= total),
            };
            if !exists {
                break;
            }
            let windows: Vec<Vec<f32>> = self
                .mix22
                .iter()
                .map(|m| {
                    let from = (start - self.base22).min(m.len());
                    let to = (end - self.base22).min(m.len());
                    let mut samples = m[from..to].to_vec();
                    samples.resize(self.window, 0.0);
                    samples
                })
                .collect();
            if self.mid {
                let scale = 1.0 / windows.len() as f32;
                let samples = (0..self.window).map(|i| windows.iter().map(|c| c[i]).sum::<f32>() * scale).collect();
                self.pending.push(Item { window: w, channel: 0, last, samples, channels: windows });
            } else {
                for (channel, samples) in windows.into_iter().enumerate() {
                    self.pending.push(Item { window: w, channel, last, samples, channels: Vec::new() });
                }
            }
            self.next_window += 1;
            if last {
                break;
            }
        }
    }

    /// Separates the next batch of queued windows and passes on what is finished.
    fn run_batch(&mut self, sink: &mut dyn StemSink, progress: &mut dyn FnMut(Progress) -> bool) -> Result<()> {
        let n = self.batch.min(self.pending.len());
        let items: Vec<Item> = self.pending.drain(..n).collect();
        let device = self.model.device().clone();
        let mut data = Vec::with_capacity(n * self.window);
        for it in &items {
            data.extend_from_slice(&it.samples);
        }
        let y = Tensor::from_vec(data, (n, 1, self.window), &device)?;
        let seeds: Vec<u64> = items.iter().map(|it| window_seed(self.settings.seed, it.window)).collect();
        let calls = self.config.calls();
        self.total_calls = self.total_calls.max(self.done_calls + calls);
        let (before, total) = (self.done_calls, self.total_calls);
        let mut cb = |d: usize, _t: usize| progress(Progress { done: before + d, total });
        let (likelihood, average) = (self.settings.likelihood, self.settings.average);
        // the mid's stems are filtered as they are shared out to the channels
        let wiener = if self.mid { None } else { self.settings.wiener };
        let x = separator::separate_mean(self.model.stems_denoiser(), &y, likelihood, &self.config, &seeds, average, wiener.as_ref(), &mut cb)?;
        self.done_calls += calls;
        let x: Vec<Vec<Vec<f32>>> = x.to_device(&Device::Cpu)?.to_vec3()?;
        let per_channel: Vec<Vec<Vec<Vec<f32>>>> = if self.mid {
            use rayon::prelude::*;
            let filter = self.settings.wiener.unwrap_or(WienerFilter::DEFAULT);
            let residual_to = likelihood.constrained();
            items.par_iter().zip(x).map(|(it, stems)| stereo::share_channels(&filter, &stems, &it.channels, residual_to)).collect::<Result<_>>()?
        } else {
            x.into_iter().map(|stems| vec![stems]).collect()
        };
        for (it, channels) in items.iter().zip(per_channel) {
            for (k, stems) in channels.iter().enumerate() {
                let c = it.channel + k;
                let part = self.joins[c].add(stems, it.last);
                for (j, p) in self.joined[c].iter_mut().zip(part) {
                    j.extend(p);
                }
            }
        }
        let up_in = self.take_joined();
        let up_out = self.up.push(&up_in)?;
        self.to_residual(up_out, sink)
    }

    /// The joined 22,050 Hz samples every channel has, as the back-resampler's channels
    /// (channel c's stems, then its seen mix for Gaussian), dropping what is no longer needed.
    fn take_joined(&mut self) -> Vec<Vec<f32>> {
        let ready = self.joined.iter().map(|j| j[0].len()).min().unwrap_or(0);
        let gaussian = matches!(self.settings.likelihood, Likelihood::Gaussian { .. });
        let mut out = Vec::new();
        for c in 0..self.channels() {
            for j in &mut self.joined[c] {
                out.push(j.drain(..ready).collect());
            }
            if gaussian {
                let from = self.joined_pos - self.base22;
                out.push(self.mix22[c][from..from + ready].to_vec());
            }
        }
        self.joined_pos += ready;
        // The mix is needed from the next window's start (and, for Gaussian, from joined_pos).
        let keep = self.joined_pos.min(self.next_window * self.hop).min(self.base22 + self.mix22[0].len());
        let drop = keep - self.base22;
        self.mix22.iter_mut().for_each(|m| drop_front(m, drop));
        self.base22 = keep;
        out
    }

    /// Stems back at the input rate (the back-resampler's channels) → unseen band handed out →
    /// sink.
    fn to_residual(&mut self, up: Vec<Vec<f32>>, sink: &mut dyn StemSink) -> Result<()> {
        let n = up.first().map_or(0, Vec::len);
        if n == 0 {
            return Ok(());
        }
        let per = up.len() / self.channels();
        let mut finished = Vec::with_capacity(self.channels());
        for c in 0..self.channels() {
            let stems = &up[c * per..c * per + self.n_stems];
            let at = self.up_pos - self.written;
            let target = &self.target[c][at..at + n];
            let sum = sum_stems(stems, n);
            self.report.unseen_max = self.report.unseen_max.max(max_abs_diff(target, &sum));
            let gaussian_reference: Vec<f32>;
            let reference: &[f32] = match self.settings.likelihood {
                // Dirac: the stems must sum to the input.
                Likelihood::Dirac { .. } => target,
                // Gaussian: keep the model's own (soft) consistency; add only what it never saw.
                Likelihood::Gaussian { .. } => {
                    let seen = &up[c * per + self.n_stems];
                    gaussian_reference = (0..n).map(|i| sum[i] + target[i] - seen[i]).collect();
                    &gaussian_reference
                }
            };
            finished.push(self.residual[c].push(stems, reference));
        }
        self.up_pos += n;
        self.write_stems(finished, sink)?;
        Ok(())
    }

    /// Writes finished stems (`[channel][stem]`, the next samples after those written),
    /// checking what they sum to.
    fn write_stems(&mut self, finished: Vec<Vec<Vec<f32>>>, sink: &mut dyn StemSink) -> Result<()> {
        let n = finished.first().and_then(|f| f.first()).map_or(0, Vec::len);
        if n == 0 {
            return Ok(());
        }
        for (c, stems) in finished.iter().enumerate() {
            let sum = sum_stems(stems, n);
            self.report.residual_max = self.report.residual_max.max(max_abs_diff(&self.target[c][..n], &sum));
        }
        self.target.iter_mut().for_each(|t| drop_front(t, n));
        self.written += n;
        let per_stem = (0..self.n_stems).map(|s| finished.iter().map(|ch| ch[s].clone()).collect()).collect();
        sink.write(per_stem)
    }
}

/// Σ stems over the first `n` samples (f32, in stem order).
fn sum_stems(stems: &[Vec<f32>], n: usize) -> Vec<f32> {
    let mut sum = vec![0f32; n];
    for s in stems {
        sum.iter_mut().zip(s).for_each(|(a, b)| *a += b);
    }
    sum
}

fn drop_front(v: &mut Vec<f32>, n: usize) {
    v.drain(..n.min(v.len()));
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[cfg(test)]
#[path = "separation_tests.rs"]
mod tests;
