//! The edges of a regenerated range: how the new part is faded in, and how large a step it leaves.

/// Writes `new` over `out` (both the range's samples), with raised-cosine fades of `fade` samples
/// at both ends (none when `fade` is 0); between the fades `out` becomes `new` exactly.
///
/// Why a fade: the sampler pastes the given samples back unchanged at the end, and nothing forces
/// its own samples beside them to meet them (the bundled model's stepped up to 2.9x the stem's
/// nearby 99th-percentile step, at 22,050 Hz too); and the new part lacks the band above
/// 11,025 Hz that the input keeps on the other side. A few milliseconds of fade spread the step.
pub(crate) fn blend(out: &mut [f32], new: &[f32], fade: usize) {
    let n = out.len().min(new.len());
    let fade = fade.min(n / 2);
    for i in 0..n {
        let k = i.min(n - 1 - i);
        let w = if k < fade { crate::seams::fade_in(k, fade) } else { 1.0 };
        out[i] = if w >= 1.0 { new[i] } else { out[i] + (w as f32) * (new[i] - out[i]) };
    }
}

/// The step a regenerated stem takes across one edge of its range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EdgeStep {
    /// The stem's index.
    pub stem: usize,
    pub channel: usize,
    /// The edge: the first frame of the range, or the frame after it.
    pub frame: usize,
    /// |out[frame] − out[frame − 1]|.
    pub step: f32,
    /// The 99th percentile of |out[i] − out[i − 1]| over the 50 ms around the edge, the edge's own
    /// step left out: how large the stem's own steps are there.
    pub p99: f32,
    /// The largest |out[i] − out[i − 1]| across the edge and the fade beside it: a fade hides the
    /// edge's own step (the first faded sample is nearly the input's), so a click would show here.
    pub fade_max: f32,
    /// The input stem's largest |in[i] − in[i − 1]| over the same 50 ms, to judge `fade_max` by.
    pub input_max: f32,
}

impl EdgeStep {
    /// `step / p99`: at most 1 means the edge is no larger a step than the stem takes nearby.
    /// 0 where both are 0 (silence on both sides).
    pub fn ratio(&self) -> f32 {
        if self.step == 0.0 {
            0.0
        } else {
            self.step / self.p99
        }
    }
}

/// Half the neighbourhood an edge is judged against, in seconds (50 ms in all).
const HALF_SPAN_S: f64 = 0.025;

/// The step across `frame` in one channel, against its neighbourhood (see [`EdgeStep`]). `None`
/// where there is no edge (the clip's first frame or its end).
pub(crate) fn step_at(x: &[f32], frame: usize, rate: u32) -> Option<(f32, f32)> {
    if frame == 0 || frame >= x.len() {
        return None;
    }
    let span = around(frame, rate);
    let mut diffs: Vec<f32> = (span.start.max(1)..span.end.min(x.len())).filter(|&i| i != frame).map(|i| (x[i] - x[i - 1]).abs()).collect();
    if diffs.is_empty() {
        return None;
    }
    diffs.sort_by(f32::total_cmp);
    let p99 = diffs[((diffs.len() - 1) as f64 * 0.99).round() as usize];
    Some(((x[frame] - x[frame - 1]).abs(), p99))
}

/// The largest |x[i] − x[i − 1]| for `i` in `steps` (1 ≤ i < len; 0 where there is none).
pub(crate) fn max_step(x: &[f32], steps: std::ops::Range<usize>) -> f32 {
    (steps.start.max(1)..steps.end.min(x.len())).map(|i| (x[i] - x[i - 1]).abs()).fold(0.0, f32::max)
}

/// The 50 ms around `frame` as steps `i` (|x[i] − x[i − 1]|).
pub(crate) fn around(frame: usize, rate: u32) -> std::ops::Range<usize> {
    let half = ((HALF_SPAN_S * rate as f64).round() as usize).max(1);
    frame.saturating_sub(half)..frame + half
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_fades_inside_the_range_and_leaves_the_outside_alone() {
        let mut out = vec![1.0f32; 20];
        let new = vec![3.0f32; 20];
        blend(&mut out[5..15], &new[5..15], 3);
        assert_eq!(&out[..5], &[1.0; 5]);
        assert_eq!(&out[15..], &[1.0; 5]);
        assert_eq!(&out[8..12], &[3.0; 4]);
        // rising, strictly between the two, symmetric
        assert!(out[5] > 1.0 && out[5] < out[6] && out[6] < out[7] && out[7] < 3.0, "{out:?}");
        assert_eq!((out[5], out[6], out[7]), (out[14], out[13], out[12]));
        let mut hard = vec![1.0f32; 20];
        blend(&mut hard[5..15], &new[5..15], 0);
        assert_eq!(&hard[5..15], &[3.0; 10]);
    }

    #[test]
    fn a_step_is_judged_against_its_neighbourhood() {
        let rate = 1000; // 50 ms = 50 samples
        let mut x: Vec<f32> = (0..200).map(|i| (i as f32 * 0.3).sin() * 0.1).collect();
        let (step, p99) = step_at(&x, 100, rate).unwrap();
        assert!(step <= p99 * 1.01, "a smooth signal has no outstanding step: {step} vs {p99}");
        for v in &mut x[100..] {
            *v += 0.5;
        }
        let (step, p99) = step_at(&x, 100, rate).unwrap();
        assert!(step > 10.0 * p99, "a jump stands out: {step} vs {p99}");
        assert_eq!(step_at(&x, 0, rate), None);
        assert_eq!(step_at(&x, 200, rate), None);
        assert_eq!(max_step(&[0.0, 1.0, -1.0, 0.0], 0..9), 2.0);
        assert_eq!(max_step(&[0.0, 1.0, -1.0, 0.0], 3..4), 1.0);
        assert_eq!(around(10, rate), 0..35);
    }
}
