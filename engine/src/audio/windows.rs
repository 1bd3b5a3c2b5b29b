//! Splitting long audio into the model's fixed-length windows and joining the results.
//!
//! Windows start every `window - overlap` samples; the last one may run past the end of the
//! signal (the caller zero-pads, see [`WindowPlan::extract`]). Where two windows overlap, their
//! outputs are cross-faded with raised-cosine weights `w` and `1 - w`, which sum to one at every
//! sample. Hence the join is seamless, and it is linear: if each window's output channels sum to
//! that window's input, the joined channels sum to the whole input.

use std::f64::consts::PI;

/// Where the windows of a long signal start, and how they overlap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowPlan {
    /// Window length in samples.
    pub window: usize,
    /// Samples shared by consecutive windows (at most `window / 2`).
    pub overlap: usize,
    /// Start sample of each window, in order.
    pub starts: Vec<usize>,
}

/// Plans windows of `window` samples over `total` samples, consecutive windows sharing
/// `overlap` samples. `window` is raised to at least 1 and `overlap` limited to `window / 2`
/// (so at most two windows meet at any sample). A signal no longer than one window (including an
/// empty one) gets a single window.
pub fn plan(total: usize, window: usize, overlap: usize) -> WindowPlan {
    let window = window.max(1);
    let overlap = overlap.min(window / 2);
    let hop = window - overlap;
    let count = if total <= window {
        1
    } else {
        1 + (total - window).div_ceil(hop)
    };
    WindowPlan {
        window,
        overlap,
        starts: (0..count).map(|i| i * hop).collect(),
    }
}

impl WindowPlan {
    /// Same as [`plan`].
    pub fn new(total: usize, window: usize, overlap: usize) -> Self {
        plan(total, window, overlap)
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Always false: a plan has at least one window.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Window `i` of `signal`: `window` samples from `starts[i]`, zero-padded past the end.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn extract(&self, signal: &[f32], i: usize) -> Vec<f32> {
        let start = self.starts[i].min(signal.len());
        let end = (start + self.window).min(signal.len());
        let mut out = signal[start..end].to_vec();
        out.resize(self.window, 0.0);
        out
    }

    /// Joins per-window outputs `outputs[window][channel][sample]` into `total` samples per
    /// channel, cross-fading overlaps with complementary raised-cosine weights.
    ///
    /// # Panics
    /// If `outputs` does not hold one entry per window, or the windows disagree on the channel
    /// count.
    pub fn overlap_add(&self, outputs: &[Vec<Vec<f32>>], total: usize) -> Vec<Vec<f32>> {
        assert_eq!(outputs.len(), self.len(), "overlap_add: need one output per window");
        let mut join = OverlapJoin::new(self.window, self.overlap, outputs[0].len());
        let mut joined = vec![Vec::with_capacity(total); outputs[0].len()];
        for (w, out) in outputs.iter().enumerate() {
            let last = w + 1 == self.len();
            for (j, part) in joined.iter_mut().zip(join.add(out, last)) {
                j.extend(part);
            }
        }
        for (j, part) in joined.iter_mut().zip(join.finish(total)) {
            j.extend(part);
        }
        joined
    }
}

/// [`WindowPlan::overlap_add`] for window outputs that arrive one at a time, in order: each
/// sample is handed out as soon as no later window touches it, so only one window is held.
/// The concatenated output is bit-identical to [`WindowPlan::overlap_add`].
pub struct OverlapJoin {
    window: usize,
    overlap: usize,
    fade_in: Vec<f32>,
    /// Running sums from absolute sample `base` on, per channel.
    acc: Vec<Vec<f32>>,
    base: usize,
    /// Index of the next window.
    next: usize,
}

impl OverlapJoin {
    /// A join of `channels` channels for windows of `window` samples sharing `overlap` samples
    /// (limited to `window / 2`, as in [`plan`]).
    pub fn new(window: usize, overlap: usize, channels: usize) -> Self {
        let window = window.max(1);
        let overlap = overlap.min(window / 2);
        // Raised-cosine fade-in over the overlap; the fade-out is 1 − fade-in, so the two weights
        // meeting at any sample sum to one (up to one f32 rounding).
        let fade_in = (0..overlap)
            .map(|k| (0.5 - 0.5 * (PI * (k as f64 + 0.5) / overlap as f64).cos()) as f32)
            .collect();
        Self { window, overlap, fade_in, acc: vec![Vec::new(); channels], base: 0, next: 0 }
    }

    /// Adds the next window's output (`[channel][sample]`, at most a window long); `last` says
    /// no window follows it. Returns the samples that are now final (those before the next
    /// window's start).
    ///
    /// # Panics
    /// If the channel count differs from the one given to [`new`](Self::new).
    pub fn add(&mut self, out: &[Vec<f32>], last: bool) -> Vec<Vec<f32>> {
        assert_eq!(out.len(), self.acc.len(), "OverlapJoin: channel counts differ");
        let hop = self.window - self.overlap;
        let start = self.next * hop;
        let mut weight = vec![1.0f32; self.window];
        if self.next > 0 {
            weight[..self.overlap].copy_from_slice(&self.fade_in);
        }
        if !last {
            let tail = &mut weight[self.window - self.overlap..];
            tail.iter_mut().zip(&self.fade_in).for_each(|(x, f)| *x = 1.0 - f);
        }
        for (acc, src) in self.acc.iter_mut().zip(out) {
            acc.resize(start + self.window - self.base, 0.0);
            let dst = &mut acc[start - self.base..];
            for ((d, &x), &g) in dst.iter_mut().zip(src).zip(&weight) {
                *d += g * x;
            }
        }
        self.next += 1;
        if last {
            return vec![Vec::new(); self.acc.len()];
        }
        self.take_until(start + hop)
    }

    /// Ends the join: returns the remaining samples up to `total` (zeros where no window
    /// reached).
    pub fn finish(mut self, total: usize) -> Vec<Vec<f32>> {
        for acc in &mut self.acc {
            acc.resize(total.saturating_sub(self.base), 0.0);
        }
        self.take_until(total)
    }

    fn take_until(&mut self, end: usize) -> Vec<Vec<f32>> {
        let n = end.saturating_sub(self.base);
        self.base += n;
        self.acc.iter_mut().map(|a| a.drain(..n.min(a.len())).collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.37).sin() + 0.3 * (i as f32 * 0.011).cos()) * 0.6)
            .collect()
    }

    #[test]
    fn plan_covers_the_signal() {
        let p = plan(1000, 256, 64);
        assert_eq!(p.starts, vec![0, 192, 384, 576, 768]);
        assert!(p.starts.last().unwrap() + 256 >= 1000);
        assert_eq!(plan(100, 256, 64).starts, vec![0]);
        assert_eq!(plan(0, 256, 64).starts, vec![0]);
        assert_eq!(plan(256, 256, 64).starts, vec![0]);
        assert_eq!(plan(257, 256, 64).starts, vec![0, 192]);
        assert_eq!(plan(1000, 256, 200).overlap, 128);
        let short = plan(3, 8, 2);
        assert_eq!(
            short.extract(&[1.0, 2.0, 3.0], 0),
            vec![1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    /// Identity windows reproduce the input exactly: no seam.
    #[test]
    fn identity_windows_join_without_seam() {
        for (total, window, overlap) in [
            (1000, 256, 64),
            (1000, 256, 0),
            (5000, 512, 256),
            (100, 256, 64),
        ] {
            let x = signal(total);
            let p = plan(total, window, overlap);
            let outs: Vec<Vec<Vec<f32>>> = (0..p.len()).map(|i| vec![p.extract(&x, i)]).collect();
            let y = p.overlap_add(&outs, total);
            let err = x
                .iter()
                .zip(&y[0])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-6, "{total}/{window}/{overlap}: max error {err}");
        }
    }

    /// Windows whose stems sum to the window input join into stems that sum to the whole input,
    /// even when each window splits its input differently (and a constant window output
    /// cross-fades smoothly, with no step).
    #[test]
    fn sum_property_holds_across_windows() {
        let total = 3000;
        let x = signal(total);
        let p = plan(total, 512, 128);
        let outs: Vec<Vec<Vec<f32>>> = (0..p.len())
            .map(|i| {
                let win = p.extract(&x, i);
                let share = 0.1 + 0.2 * i as f32; // a different split in every window
                let a: Vec<f32> = win.iter().map(|v| v * share).collect();
                let b: Vec<f32> = win.iter().zip(&a).map(|(v, a)| v - a - 0.25).collect();
                let c = vec![0.25f32; win.len()];
                vec![a, b, c]
            })
            .collect();
        let y = p.overlap_add(&outs, total);
        for t in 0..total {
            let s = y[0][t] + y[1][t] + y[2][t];
            assert!((s - x[t]).abs() < 1e-5, "sample {t}: {s} vs {}", x[t]);
            assert!(
                (y[2][t] - 0.25).abs() < 1e-6,
                "constant stem has a seam at {t}"
            );
        }
        // The cross-fade is smooth: the share of stem `a` changes gradually between windows.
        let ratio: Vec<f32> = (0..total)
            .filter(|&t| x[t].abs() > 0.3)
            .map(|t| y[0][t] / x[t])
            .collect();
        let max_step = ratio
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max);
        assert!(
            max_step < 0.02,
            "abrupt change of {max_step} in a stem's share"
        );
    }
}
