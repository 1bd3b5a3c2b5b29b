//! The model-rate half of regeneration: where the model's windows go, and the imputation run over
//! them with a mask that frees only the chosen stems inside the range.
//!
//! Windows run in sequence, as generation and imputation do in [`crate::tasks`]: a window after
//! the first takes what the previous one generated in their overlap as given, so a range longer
//! than a window is one continuous take. Everything else in a window (the other stems everywhere,
//! the chosen stems outside the range) is given from the input.

use std::ops::Range;

use anyhow::Result;
use candle_core::{Device, Tensor};

use crate::audio;
use crate::model_file::Model;
use crate::noise::{window_seed, DeviceNoise};
use crate::sampler::{self, Posterior, SamplerConfig};
use crate::seams;

/// Window starts (model-rate samples) for regenerating `range` of a clip of `len` samples with
/// windows of `window` samples, keeping `context` given samples on each side of the range where
/// the clip has them.
///
/// A range that fits with its context gets one window centred on it (more context on both
/// sides). A longer range gets the fewest windows that `audio::plan` needs for consecutive
/// windows to share at least `context` samples, spread evenly from `context` before the range
/// to `context` after it, so the first and last windows see exactly that much surrounding audio
/// and every window has something of its own to generate.
pub(crate) fn plan(range: &Range<usize>, len: usize, window: usize, context: usize) -> Vec<usize> {
    let s0 = range.start.saturating_sub(context);
    let s1 = (range.end + context).min(len.max(range.end));
    let span = s1 - s0;
    if span <= window {
        let centre = (range.start + range.end) / 2;
        // moved inside the clip where the centred window would cross its start or end
        return vec![centre.saturating_sub(window / 2).min(len.saturating_sub(window))];
    }
    let k = audio::plan(span, window, context).len();
    let stride = (span - window) as f64 / (k - 1) as f64;
    (0..k).map(|j| s0 + (j as f64 * stride).round() as usize).collect()
}

/// The stems at the model's rate around the range: `signals[stem][channel][i]` is model-rate
/// sample `offset + i`. Samples past the end of `signals` are past the end of the clip.
pub(crate) struct Clip {
    pub signals: Vec<Vec<Vec<f32>>>,
    pub offset: usize,
}

/// Regenerates `targets` inside `range` (absolute model-rate samples) in place, one window per
/// entry of `starts` (absolute). `progress(done, total)` counts denoiser calls.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sample(
    model: &Model,
    clip: &mut Clip,
    targets: &[usize],
    range: &Range<usize>,
    starts: &[usize],
    config: &SamplerConfig,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<()> {
    let device = model.device().clone();
    let window = model.window();
    let n = clip.signals.len();
    let channels = clip.signals[0].len();
    let len = clip.signals[0][0].len();
    let total = starts.len() * config.calls();
    // The chosen stems are given up to here (absolute): the range's start, then the end of the
    // last window run.
    let mut generated_until = range.start;
    for (w, &start) in starts.iter().enumerate() {
        // a later window makes the last `fade` samples of the previous one again and is faded in
        // over them (see `crate::seams`)
        let fade = if w > 0 { seams::fade(generated_until.saturating_sub(start)) } else { 0 };
        let mut source = vec![0f32; channels * n * window];
        let mut mask = vec![0f32; channels * n * window];
        for c in 0..channels {
            for s in 0..n {
                let target = targets.contains(&s);
                let base = (c * n + s) * window;
                for t in 0..window {
                    let abs = start + t;
                    let Some(local) = abs.checked_sub(clip.offset).filter(|&l| l < len) else {
                        // Past the clip's end nothing is known: every stem is left free there
                        // rather than given as silence, which would pull the take towards a fade-out.
                        continue;
                    };
                    if !target || !range.contains(&abs) || abs < generated_until - fade {
                        source[base + t] = clip.signals[s][c][local];
                        mask[base + t] = 1.0;
                    }
                }
            }
        }
        let source = Tensor::from_vec(source, (channels, n, window), &device)?;
        let mask = Tensor::from_vec(mask, (channels, n, window), &device)?;
        // Every channel draws the same noise, as in `tasks` (a centred source stays centred).
        let mut noise = DeviceNoise::for_items(&device, &vec![window_seed(seed, w); channels])?;
        let mut cb = |d: usize, _t: usize| progress(w * config.calls() + d, total);
        let posterior = Posterior::Impute { source: &source, mask: &mask };
        let x = sampler::sample(model.stems_denoiser(), [channels, n, window], &device, config, &posterior, &mut *noise, &mut cb)?;
        let x: Vec<Vec<Vec<f32>>> = x.to_device(&Device::Cpu)?.to_vec3()?;
        let end = (start + window).min(range.end).min(clip.offset + len);
        let from = start.max(generated_until - fade).min(end);
        for (c, stems) in x.into_iter().enumerate() {
            for &s in targets {
                seams::fade_into(&mut clip.signals[s][c][from - clip.offset..end - clip.offset], &stems[s][from - start..end - start], fade);
            }
        }
        generated_until = generated_until.max(end);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(range: Range<usize>, len: usize, window: usize, context: usize) -> Vec<usize> {
        let starts = plan(&range, len, window, context);
        // the windows cover the range, in order, each one with something new to generate
        let mut covered = range.start;
        for (j, &s) in starts.iter().enumerate() {
            assert!(s <= covered, "window {j} at {s} leaves a gap before {covered}: {starts:?}");
            assert!(s + window > covered, "window {j} at {s} adds nothing: {starts:?}");
            if j > 0 {
                assert!(starts[j - 1] + window - s >= context, "overlap below the context: {starts:?}");
            }
            covered = s + window;
        }
        assert!(covered >= range.end, "{starts:?} do not reach {}", range.end);
        starts
    }

    /// A second window is given the first one's take up to the fade only and is faded in over
    /// the rest: before the fade the take is the one-window take, inside the fade it is not (a
    /// hard switch would keep it there and step where the second window's own part starts).
    #[test]
    fn a_later_window_fades_in_over_the_previous_take() {
        let mut model = Model::random(crate::config::ModelConfig::tiny(), 3, &Device::Cpu).unwrap();
        model.meta.window = 1024;
        let signal = |s: usize| vec![(0..3000).map(|i| 0.2 * ((i * (s + 2)) as f32 * 0.013).sin()).collect::<Vec<f32>>()];
        let clip = || Clip { signals: (0..4).map(signal).collect(), offset: 0 };
        let config = crate::tasks::Settings { steps: 3, ..crate::tasks::Settings::imputation() }.sampler_config();
        let (range, first) = (300..2000, 200);
        let run = |starts: &[usize]| {
            let mut c = clip();
            sample(&model, &mut c, &[0], &range, starts, &config, 0, &mut |_, _| true).unwrap();
            c.signals[0][0].clone()
        };
        let (one, two) = (run(&[first]), run(&[first, first + 768]));
        let until = first + 1024; // where the first window's take ends
        let fade = crate::seams::fade(until - (first + 768));
        assert_eq!(one[..until - fade], two[..until - fade]);
        let moved = (until - fade..until).filter(|&i| one[i] != two[i]).count();
        assert!(moved > fade / 2, "the fade region kept the first take ({moved} of {fade} samples moved)");
    }

    #[test]
    fn windows_cover_the_range_with_context_on_both_sides() {
        // short range in a long clip: one window, centred
        assert_eq!(check(1000..1100, 10_000, 1024, 256), vec![1050 - 512]);
        // at the clip's start and end the window is moved inside the clip
        assert_eq!(check(0..100, 10_000, 1024, 256), vec![0]);
        assert_eq!(check(9900..10_000, 10_000, 1024, 256), vec![10_000 - 1024]);
        // a clip shorter than a window: one window from its start
        assert_eq!(check(10..20, 500, 1024, 256), vec![0]);
        // a long range: the first window starts `context` before it, the last ends `context` after
        let starts = check(2000..6000, 10_000, 1024, 256);
        assert_eq!(starts[0], 2000 - 256);
        assert_eq!(starts.last().unwrap() + 1024, 6000 + 256);
        // a long range at the clip's end: the last window ends with the clip
        let starts = check(5000..10_000, 10_000, 1024, 256);
        assert_eq!(starts.last().unwrap() + 1024, 10_000);
        for a in (0..3000).step_by(97) {
            for l in [1, 300, 511, 512, 513, 700, 1023, 1024, 2500] {
                check(a..a + l, 3000 + l, 1024, 256);
            }
        }
    }
}
