//! The seams of sequential generation and imputation ([`crate::tasks`], and regeneration of a long
//! range): a clip longer than one window is made window by window, each window after the first
//! given the previous window's last quarter for every generated stem.
//!
//! The sampler pastes the given samples back unchanged, and nothing forces the first sample a
//! window makes to continue them: with a hard switch, the bundled model's generated bass jumped at
//! 37 of 40 seams, by a median 22 times the file's 99.9th-percentile step (`tools/eval/seams.py`),
//! a click every 2.2 s. So the given part ends [`fade`] samples before the window's own part, the
//! window makes those samples as well, and its version is faded in over the previous one there.

/// Samples each generation/imputation window takes from the previous one: 1/4 of a window.
pub(crate) fn overlap(window: usize) -> usize {
    window / 4
}

/// The windows generation and imputation run, one after another, over `len22` model-rate frames.
pub(crate) fn windows(len22: usize, window: usize) -> crate::audio::WindowPlan {
    crate::audio::plan(len22.max(1), window, overlap(window))
}

/// Samples over which a window's own part is faded in: 1/8 of the overlap (2,048 samples, 93 ms at
/// 22,050 Hz, two periods of the lowest bass note), leaving the rest of the overlap given.
pub(crate) fn fade(overlap: usize) -> usize {
    overlap / 8
}

/// The weight of the new window's sample `k` of a fade of `fade` samples (raised cosine, 0 to 1).
pub(crate) fn fade_in(k: usize, fade: usize) -> f64 {
    0.5 - 0.5 * (std::f64::consts::PI * (k as f64 + 0.5) / fade as f64).cos()
}

/// Writes `new` over `out` (as far as both reach), fading it in over the first `fade` samples;
/// after them `out` becomes `new` exactly.
pub(crate) fn fade_into(out: &mut [f32], new: &[f32], fade: usize) {
    for (k, (o, &n)) in out.iter_mut().zip(new).enumerate() {
        *o = if k < fade { (*o as f64 + (n as f64 - *o as f64) * fade_in(k, fade)) as f32 } else { n };
    }
}

/// The fade at both ends of a stem the model made, in seconds: a window starts and ends wherever
/// its waveform happens to be, so a generated bass played alone clicked at 0 s and stopped dead
/// at the end. 5 ms is about a DAW's default clip fade, short enough to keep an attack.
pub(crate) const EDGE_FADE_S: f64 = 0.005;

/// Fades `ch` in over its first `n` samples and out over its last `n` (raised cosine from
/// exactly 0; at most half the signal each).
pub(crate) fn fade_edges(ch: &mut [f32], n: usize) {
    let (len, n) = (ch.len(), n.min(ch.len() / 2));
    for k in 0..n {
        let w = (0.5 - 0.5 * (std::f64::consts::PI * k as f64 / n as f64).cos()) as f32;
        ch[k] *= w;
        ch[len - 1 - k] *= w;
    }
}

/// Writes one window's samples `sig` into `out` from `start`. The first window (`overlap` 0) is
/// copied; a later one leaves `out` alone before `overlap − fade`, fades in over the next `fade`
/// samples and is copied from `overlap` on. Samples past `out`'s end are dropped.
pub(crate) fn write_window(out: &mut [f32], sig: &[f32], start: usize, overlap: usize) {
    let from = overlap - fade(overlap);
    if let (Some(out), Some(sig)) = (out.get_mut(start + from..), sig.get(from..)) {
        fade_into(out, sig, fade(overlap));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_window_fades_in_without_a_step() {
        let (overlap, len) = (256, 1024);
        let fade = fade(overlap);
        // the previous window ends on a level of 1, the next one starts at −1: a hard switch would
        // step by 2 at the seam
        let mut out = vec![1f32; len];
        let sig = vec![-1f32; 600];
        write_window(&mut out, &sig, 300, overlap);
        let seam = 300 + overlap;
        assert!(out[..seam - fade].iter().all(|&x| x == 1.0), "the given part is left alone");
        assert!(out[seam..900].iter().all(|&x| x == -1.0), "the window's own part is copied");
        assert!(out[900..].iter().all(|&x| x == 1.0), "nothing written past the window");
        let steps: Vec<f32> = out.windows(2).map(|w| (w[1] - w[0]).abs()).collect();
        let biggest = steps[..899].iter().copied().fold(0.0, f32::max);
        assert!(biggest < 2.0 * std::f32::consts::PI / (2.0 * fade as f32) * 1.01, "step {biggest} over a fade of {fade}");
        assert!(out[seam - fade..seam].windows(2).all(|w| w[1] < w[0]), "the fade is monotone");
    }

    #[test]
    fn the_first_window_is_copied_and_the_end_is_cut() {
        let mut out = vec![0f32; 100];
        let sig: Vec<f32> = (0..150).map(|i| i as f32).collect();
        write_window(&mut out, &sig, 0, 0);
        assert_eq!(out, sig[..100].to_vec());
        let mut out = vec![0f32; 100];
        write_window(&mut out, &sig, 90, 0);
        assert_eq!(&out[90..], &sig[..10]);
    }
}
