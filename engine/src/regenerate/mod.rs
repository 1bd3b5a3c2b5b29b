//! Regenerating a time range of one stem (or several), keeping everything else as given.
//!
//! This is source imputation (spec §7.2) with a mask over stems *and* time: the mask is 1
//! everywhere except for the chosen stems inside the range, so the sampler conditions on the
//! other stems and on the chosen stems' own audio before and after the range. The work runs at
//! the model's rate on a piece of the clip around the range ([`windows`]); the new part comes back
//! at the stems' rate and is faded in at the range's edges ([`edges`]). Outside the range every
//! output sample is a copy of the input sample, never a round trip through the resampler.

mod edges;
mod windows;

use std::ops::Range;
use std::time::Instant;

use anyhow::{bail, Result};

pub use edges::EdgeStep;

use crate::audio::{self, AudioBuffer};
use crate::model_file::Model;
use crate::tasks::{self, Job, Progress, Settings, StemSet};
use crate::MODEL_RATE;

/// Fade at each edge of the range, inside it, unless asked otherwise (see [`edges`]). Without a
/// fade the bundled model's new part stepped up to 2.9x the stem's nearby 99th-percentile step at
/// an edge; with 10 ms no edge stepped above 0.34x (docs/regenerate.md), and 10 ms is short
/// against a bar.
pub const DEFAULT_CROSSFADE_S: f64 = 0.010;

/// Frames (at the stems' rate) the piece of the clip that is resampled reaches beyond the
/// model's windows: four times the resampler's 2,048-tap filter, so the filter's start-up at the
/// piece's ends never reaches audio the model sees.
const RESAMPLE_MARGIN: usize = 4 * 2048;

/// What to regenerate.
#[derive(Clone, Debug, PartialEq)]
pub struct Regeneration {
    /// The stems to regenerate, as indices in the model's stem order.
    pub stems: Vec<usize>,
    /// The range in frames at the stems' rate: `start` is the first regenerated frame, `end` the
    /// first frame kept again.
    pub range: Range<usize>,
    /// Fade length at each edge, inside the range, in seconds (0: none).
    pub crossfade: f64,
}

/// The stems' indices for stem names (`bass`, `piano`...), in the order given, without repeats.
pub fn stem_indices(model_stems: &[String], names: &[String]) -> Result<Vec<usize>> {
    if names.is_empty() {
        bail!("choose the stem(s) to regenerate, e.g. --stem bass (one of {})", model_stems.join(", "));
    }
    let mut out = Vec::new();
    for name in names {
        let i = crate::stem_index(model_stems, name)?;
        if !out.contains(&i) {
            out.push(i);
        }
    }
    Ok(out)
}

/// Seconds to a frame range of a clip of `frames` frames at `rate`, with errors that name the
/// problem: a range that is empty or reversed, or starts before or ends after the clip.
pub fn frame_range(from_s: f64, to_s: f64, rate: u32, frames: usize) -> Result<Range<usize>> {
    let length = frames as f64 / rate.max(1) as f64;
    if !from_s.is_finite() || !to_s.is_finite() {
        bail!("the range {from_s} s to {to_s} s is not a pair of numbers");
    }
    if from_s < 0.0 {
        bail!("the range starts at {from_s} s, before the start of the stems: start at 0 or later");
    }
    if from_s >= to_s {
        bail!("the range starts at {from_s} s and ends at {to_s} s: the start must come before the end");
    }
    let (from, to) = ((from_s * rate as f64).round() as usize, (to_s * rate as f64).round() as usize);
    if from >= frames || to > frames {
        bail!("the range {from_s} s to {to_s} s reaches past the end of the stems ({length:.3} s): end it at {length:.3} s or earlier");
    }
    if from >= to {
        bail!("the range {from_s} s to {to_s} s is shorter than one sample at {rate} Hz");
    }
    Ok(from..to)
}

/// Bar positions to seconds: bar `bars` (counted from 0 at the clip's start, so bar 4.0 is where
/// the fifth bar begins) at `bpm` quarter-note beats per minute and `beats_per_bar` beats a bar.
pub fn bars_to_seconds(bars: f64, bpm: f64, beats_per_bar: f64) -> Result<f64> {
    if !(bpm.is_finite() && bpm > 0.0 && bpm <= 1000.0) {
        bail!("a tempo of {bpm} bpm: give the beats per minute, between 0 and 1000");
    }
    if !(beats_per_bar.is_finite() && beats_per_bar > 0.0 && beats_per_bar <= 64.0) {
        bail!("{beats_per_bar} beats per bar: give a number between 0 and 64");
    }
    Ok(bars * beats_per_bar * 60.0 / bpm)
}

/// Checks the stems can be regenerated together: one per model stem, all with audio, of one
/// rate, channel count and length, every sample finite. [`regenerate`] checks this too; callers
/// that read the stems themselves can check before they do anything else.
pub fn check_stems(model: &Model, stems: &[AudioBuffer]) -> Result<()> {
    let names = &model.meta.stems;
    if stems.len() != names.len() {
        bail!("regeneration needs all {} stems ({}), got {}", names.len(), names.join(", "), stems.len());
    }
    for (name, s) in names.iter().zip(stems) {
        tasks::check_audio(&format!("the {name} stem"), s)?;
    }
    let first = &stems[0];
    let describe = |f: &dyn Fn(&AudioBuffer) -> String| names.iter().zip(stems).map(|(n, s)| format!("{n} {}", f(s))).collect::<Vec<_>>().join(", ");
    if stems.iter().any(|s| s.rate != first.rate) {
        bail!("the stems have different sample rates ({}): give stems of one separation or take, at one rate", describe(&|s| format!("{} Hz", s.rate)));
    }
    if stems.iter().any(|s| s.num_channels() != first.num_channels()) {
        bail!("the stems have different channel counts ({}): give stems of one separation or take", describe(&|s| format!("{} ch", s.num_channels())));
    }
    if stems.iter().any(|s| s.frames() != first.frames()) {
        bail!(
            "the stems have different lengths ({}): give stems of one separation or take, all of one length",
            describe(&|s| format!("{} frames", s.frames()))
        );
    }
    Ok(())
}

/// The settings regeneration uses unless told otherwise: the model's imputation defaults.
pub fn default_settings(model: &Model) -> Settings {
    Settings::for_job(&Job::Impute { given: Vec::new() }, model)
}

/// The work at the model's rate: the range (rounded outwards, so it holds every regenerated
/// frame) and the window starts.
struct Plan {
    range: Range<usize>,
    starts: Vec<usize>,
}

fn plan(model: &Model, rate: u32, frames: usize, range: &Range<usize>) -> Plan {
    let to22 = |f: usize| f as f64 * MODEL_RATE as f64 / rate as f64;
    let start = to22(range.start).floor() as usize;
    let range22 = start..(to22(range.end).ceil() as usize).max(start + 1);
    let len = (to22(frames).round() as usize).max(range22.end);
    let window = model.window();
    let starts = windows::plan(&range22, len, window, crate::seams::overlap(window));
    Plan { range: range22, starts }
}

/// Denoiser calls a regeneration will make (for progress and time estimates).
pub fn planned_calls(model: &Model, rate: u32, frames: usize, what: &Regeneration, settings: &Settings) -> usize {
    plan(model, rate, frames, &what.range).starts.len() * settings.steps * settings.resamples
}

/// Regenerates `what.stems` inside `what.range` of `stems` (all of the model's stems, stem order,
/// one rate, channel count and length). Returns all stems: outside the range each is a copy of
/// its input; inside, the chosen stems hold the new part and the others their input. `progress`
/// is called after every denoiser call; returning `false` cancels (the error says `cancelled`).
pub fn regenerate(
    model: &Model,
    stems: &[AudioBuffer],
    what: &Regeneration,
    settings: &Settings,
    progress: &mut dyn FnMut(Progress) -> bool,
) -> Result<StemSet> {
    let started = Instant::now();
    settings.validate()?;
    check_stems(model, stems)?;
    let (rate, frames, channels) = (stems[0].rate, stems[0].frames(), stems[0].num_channels());
    if what.range.start >= what.range.end || what.range.end > frames {
        bail!("the range {:?} is not inside the stems' {frames} frames", what.range);
    }
    if let Some(&s) = what.stems.iter().find(|&&s| s >= stems.len()) {
        bail!("stem index {s}: the model has stems 0..{}", stems.len() - 1);
    }
    if what.stems.is_empty() {
        bail!("no stem chosen to regenerate");
    }
    if !(what.crossfade >= 0.0 && what.crossfade.is_finite()) {
        bail!("the crossfade must be 0 seconds or more, got {}", what.crossfade);
    }
    let plan = plan(model, rate, frames, &what.range);
    let window = model.window();
    let extent = plan.starts[0]..plan.starts[plan.starts.len() - 1] + window;
    let (mut clip, lo, hi) = cut(stems, &extent, settings.mono && channels > 1)?;
    let config = settings.sampler_config();
    let mut cb = |done: usize, total: usize| progress(Progress { done, total });
    windows::sample(model, &mut clip, &what.stems, &plan.range, &plan.starts, &config, settings.seed, &mut cb)?;
    let mut out: Vec<AudioBuffer> = stems.to_vec();
    let fade = (what.crossfade * rate as f64).round() as usize;
    for &s in &what.stems {
        let mut back = audio::resample(&clip.signals[s], MODEL_RATE, rate)?;
        for c in &mut back {
            c.resize(hi - lo, 0.0);
        }
        for (c, out_c) in out[s].channels.iter_mut().enumerate() {
            // a mono run (`settings.mono`) gives every channel the same new part
            let b = &back[c.min(back.len() - 1)];
            edges::blend(&mut out_c[what.range.clone()], &b[what.range.start - lo..what.range.end - lo], fade);
        }
    }
    Ok(StemSet { names: model.meta.stems.clone(), stems: out, residual_max: 0.0, unseen_max: 0.0, seconds: started.elapsed().as_secs_f64() })
}

/// The piece of the clip the model-rate samples `extent` need, at the model's rate, and the frames
/// `lo..hi` it was cut from. It is cut where its model-rate samples line up with the whole
/// clip's (at a multiple of `unit` frames, which is `unit22` model-rate samples), so sample `i`
/// of the piece is sample `offset + i` of the whole clip resampled; and with a margin, so the
/// resampler's start-up at the piece's ends stays away from what the model sees.
fn cut(stems: &[AudioBuffer], extent: &Range<usize>, mono: bool) -> Result<(windows::Clip, usize, usize)> {
    let (rate, frames) = (stems[0].rate, stems[0].frames());
    let g = gcd(rate as u64, MODEL_RATE as u64);
    let (unit, unit22) = ((rate as u64 / g) as usize, (MODEL_RATE as u64 / g) as usize);
    let first = extent.start * unit / unit22;
    let last = (extent.end * unit).div_ceil(unit22);
    let lo = first.saturating_sub(RESAMPLE_MARGIN) / unit * unit;
    let hi = (last + RESAMPLE_MARGIN).min(frames);
    let piece = |s: &AudioBuffer| -> Vec<Vec<f32>> {
        let channels: Vec<Vec<f32>> = s.channels.iter().map(|c| c[lo..hi].to_vec()).collect();
        if mono {
            vec![AudioBuffer::new(rate, channels).to_mono()]
        } else {
            channels
        }
    };
    let signals = stems.iter().map(|s| audio::resample(&piece(s), rate, MODEL_RATE)).collect::<Result<Vec<_>>>()?;
    Ok((windows::Clip { signals, offset: lo / unit * unit22 }, lo, hi))
}

/// The steps the regenerated stems of `output` take across the range's edges (see [`EdgeStep`]),
/// for each regenerated stem and channel; `input` is what was regenerated from. Edges at the clip's
/// start or end are left out.
pub fn edge_steps(input: &[AudioBuffer], output: &[AudioBuffer], what: &Regeneration) -> Vec<EdgeStep> {
    let mut steps = Vec::new();
    for &stem in &what.stems {
        let (Some(i), Some(o)) = (input.get(stem), output.get(stem)) else { continue };
        // the fade as `regenerate` made it: at most half the range at each end
        let fade = ((what.crossfade * o.rate as f64).round() as usize).min(what.range.len() / 2);
        for (channel, (x, y)) in i.channels.iter().zip(&o.channels).enumerate() {
            for frame in [what.range.start, what.range.end] {
                let Some((step, p99)) = edges::step_at(y, frame, o.rate) else { continue };
                let join = if frame == what.range.start { frame..frame + fade + 1 } else { frame - fade..frame + 1 };
                let (fade_max, input_max) = (edges::max_step(y, join), edges::max_step(x, edges::around(frame, o.rate)));
                steps.push(EdgeStep { stem, channel, frame, step, p99, fade_max, input_max });
            }
        }
    }
    steps
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_piece_lines_up_with_the_whole_clip_resampled() {
        for rate in [44_100u32, 48_000, 22_050, 32_000] {
            let frames = rate as usize * 2;
            let x: Vec<f32> = (0..frames).map(|i| ((i as f32 * 0.0031).sin() + (i as f32 * 0.071).sin()) * 0.3).collect();
            let stems = vec![AudioBuffer::new(rate, vec![x.clone()])];
            let whole = audio::resample(&[x], rate, MODEL_RATE).unwrap();
            let (clip, lo, hi) = cut(&stems, &(20_000..22_000), false).unwrap();
            assert!(lo > 0 && hi < frames, "{rate}: the piece is a piece ({lo}..{hi})");
            let piece = &clip.signals[0][0];
            assert!(clip.offset <= 20_000 && clip.offset + piece.len() >= 22_000, "{rate}: the piece holds the extent");
            let worst = (20_000..22_000).map(|i| (piece[i - clip.offset] - whole[0][i]).abs()).fold(0f32, f32::max);
            // off by one sample, the two would differ by up to ~0.02 here
            assert!(worst < 1e-4, "{rate} Hz: the piece is {worst} away from the whole clip resampled");
        }
    }
}
