//! Frame-wise fundamental frequency with YIN (de Cheveigné & Kawahara, *YIN, a fundamental
//! frequency estimator for speech and music*, JASA 2002), plus the two loudness envelopes the
//! note segmenter needs.
//!
//! Everything runs on a mono signal at [`ANALYSIS_RATE`]: a bass fundamental is below 400 Hz and
//! its attack transients are well inside 5.5 kHz, and a fixed rate keeps the cost of YIN (which
//! grows with the square of the rate) the same for 22,050 Hz stems and 96 kHz recordings.

use rayon::prelude::*;

/// Sample rate of the analysis signal.
pub const ANALYSIS_RATE: u32 = 11_025;
/// Frame hop in analysis samples: 5.8 ms, fine enough to place onsets well inside the 50 ms
/// tolerance notes are judged by.
pub const HOP: usize = 64;
/// Level assigned to digital silence, dB.
pub const FLOOR_DB: f32 = -120.0;

/// YIN settings.
#[derive(Clone, Copy, Debug)]
pub struct YinParams {
    /// Lowest fundamental searched, Hz.
    pub min_hz: f64,
    /// Highest fundamental searched, Hz.
    pub max_hz: f64,
    /// The absolute threshold on the cumulative-mean-normalised difference: the first dip below it
    /// is taken as the period (the paper's step 4), which avoids the sub-octave dips further out.
    pub threshold: f32,
    /// A dip at half the chosen period wins when it is at most this much higher: some attacks
    /// (a slapped string) repeat only every second period for a while, which reads an octave low.
    pub octave_margin: f32,
}

/// Per-frame analysis; frame `t` is centred on analysis sample `t * HOP`.
#[derive(Clone, Debug, Default)]
pub struct Frames {
    /// Seconds between frames.
    pub hop_s: f64,
    /// Fundamental in Hz from YIN (interpolated period), whether or not the frame is voiced.
    pub f0_hz: Vec<f32>,
    /// YIN's aperiodicity at the chosen period: near 0 for a clean periodic tone, near 1 for noise.
    pub aperiodicity: Vec<f32>,
    /// RMS level over one longest period, dBFS (for the silence gate and velocities).
    pub level_db: Vec<f32>,
    /// Power of the first difference under a triangular window two longest periods wide, dB.
    /// The difference emphasises the broadband attack of a plucked or struck note over its
    /// sustained low harmonics, so a repeated note shows as a rise; the triangular window (two
    /// boxes of one period in a row) keeps the ripple of a low note's waveform out of it, and being
    /// symmetric it puts half the rise of a sudden note at the note's true start.
    pub onset_db: Vec<f32>,
}

impl Frames {
    pub fn len(&self) -> usize {
        self.f0_hz.len()
    }
    pub fn is_empty(&self) -> bool {
        self.f0_hz.is_empty()
    }
    /// Time of frame `t`'s centre, seconds.
    pub fn time(&self, t: usize) -> f64 {
        t as f64 * self.hop_s
    }
}

/// The longest period searched, in samples at `rate`.
pub fn max_lag(rate: u32, p: &YinParams) -> usize {
    (rate as f64 / p.min_hz).ceil() as usize
}

/// Analyses `x` (mono, at `rate`, normally [`ANALYSIS_RATE`]). Frames run in parallel.
pub fn analyse(x: &[f32], rate: u32, p: &YinParams) -> Frames {
    let tau_max = max_lag(rate, p);
    let tau_min = ((rate as f64 / p.max_hz).floor() as usize).max(2);
    // The integration window is one longest period, the paper's recommendation: shorter windows
    // cannot tell a low note from its own harmonics.
    let w = tau_max;
    let n_frames = if x.is_empty() { 0 } else { x.len().div_ceil(HOP) };
    // Zero padding on both sides, so every frame sees a full window.
    let pad = 2 * w + tau_max;
    let mut padded = vec![0f32; x.len() + 2 * pad];
    padded[pad..pad + x.len()].copy_from_slice(x);
    let squares = prefix_sums(padded.iter().map(|&v| v as f64 * v as f64));
    let diff_power = prefix_sums(std::iter::once(0.0).chain(padded.windows(2).map(|d| ((d[1] - d[0]) as f64).powi(2))));
    // b[i]: mean difference power over samples i..i+w; its prefix sums give the second box.
    let boxed = prefix_sums((0..padded.len() - w).map(|i| (diff_power[i + w] - diff_power[i]) / w as f64));
    let per_frame: Vec<(f32, f32, f32, f32)> = (0..n_frames)
        .into_par_iter()
        .map_init(
            || (vec![0f32; tau_max + 1], vec![0f32; tau_max + 1]),
            |(d, cmnd), t| {
                let centre = pad + t * HOP;
                let start = centre - (w + tau_max) / 2;
                let (f0, ap) = yin_frame(&padded[start..start + w + tau_max], (w, tau_min, tau_max), rate, p, d, cmnd);
                let level = rms_db(&squares, centre - w / 2, w);
                let onset = rms_db(&boxed, centre + 1 - w, w);
                (f0, ap, level, onset)
            },
        )
        .collect();
    Frames {
        hop_s: HOP as f64 / rate as f64,
        f0_hz: per_frame.iter().map(|f| f.0).collect(),
        aperiodicity: per_frame.iter().map(|f| f.1).collect(),
        level_db: per_frame.iter().map(|f| f.2).collect(),
        onset_db: per_frame.iter().map(|f| f.3).collect(),
    }
}

fn prefix_sums(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut out = vec![0.0];
    let mut acc = 0.0;
    for v in values {
        acc += v;
        out.push(acc);
    }
    out
}

/// RMS in dB of samples `start..start + len`, from prefix sums of their squares.
fn rms_db(prefix: &[f64], start: usize, len: usize) -> f32 {
    let energy = (prefix[start + len] - prefix[start]).max(0.0) / len as f64;
    if energy <= 1e-12 {
        FLOOR_DB
    } else {
        (10.0 * energy.log10()) as f32
    }
}

/// YIN on one frame (`seg` holds `w + tau_max` samples; `lags` is (w, tau_min, tau_max)):
/// returns (f0 Hz, aperiodicity). `d` and `cmnd` are scratch buffers of `tau_max + 1`.
fn yin_frame(seg: &[f32], lags: (usize, usize, usize), rate: u32, p: &YinParams, d: &mut [f32], cmnd: &mut [f32]) -> (f32, f32) {
    let (w, tau_min, tau_max) = lags;
    let head = &seg[..w];
    for (tau, slot) in d.iter_mut().enumerate().skip(1) {
        *slot = squared_distance(head, &seg[tau..tau + w]);
    }
    // Cumulative mean normalised difference (step 3): d'(τ) = d(τ) τ / Σ_{k≤τ} d(k).
    cmnd[0] = 1.0;
    let mut running = 0f64;
    for tau in 1..=tau_max {
        running += d[tau] as f64;
        cmnd[tau] = if running > 0.0 { (d[tau] as f64 * tau as f64 / running) as f32 } else { 1.0 };
    }
    // Absolute threshold (step 4): the first dip below it, followed down to its bottom; the
    // global minimum when nothing dips that low.
    let mut best = None;
    let mut tau = tau_min;
    while tau <= tau_max {
        if cmnd[tau] < p.threshold {
            while tau < tau_max && cmnd[tau + 1] < cmnd[tau] {
                tau += 1;
            }
            best = Some(tau);
            break;
        }
        tau += 1;
    }
    let mut tau = best.unwrap_or_else(|| {
        (tau_min..=tau_max).min_by(|&a, &b| cmnd[a].total_cmp(&cmnd[b])).unwrap_or(tau_min)
    });
    // Octave check: the best dip within two samples of half the period, if nearly as deep.
    while tau / 2 >= tau_min + 2 {
        let half = (tau / 2 - 2..=tau / 2 + 2).min_by(|&a, &b| cmnd[a].total_cmp(&cmnd[b])).unwrap_or(tau / 2);
        if cmnd[half] < cmnd[tau] + p.octave_margin {
            tau = half;
        } else {
            break;
        }
    }
    // Parabolic interpolation of the dip (step 5) for a sub-sample period.
    let refined = if tau > tau_min && tau < tau_max {
        let (a, b, c) = (cmnd[tau - 1] as f64, cmnd[tau] as f64, cmnd[tau + 1] as f64);
        let denom = a - 2.0 * b + c;
        if denom.abs() > 1e-12 {
            tau as f64 + (0.5 * (a - c) / denom).clamp(-0.5, 0.5)
        } else {
            tau as f64
        }
    } else {
        tau as f64
    };
    ((rate as f64 / refined) as f32, cmnd[tau].clamp(0.0, 1.0))
}

/// Σ (a_i − b_i)², with independent accumulators so the compiler can vectorise the reduction.
#[inline]
fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0f32; LANES];
    let chunks = a.len() / LANES;
    for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for k in 0..LANES {
            let diff = ca[k] - cb[k];
            acc[k] += diff * diff;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * LANES..a.len() {
        let diff = a[i] - b[i];
        sum += diff * diff;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> YinParams {
        YinParams { min_hz: 35.0, max_hz: 400.0, threshold: 0.4, octave_margin: 0.3 }
    }

    /// A bass-like tone: a fundamental with strong 2nd and 3rd harmonics (the 2nd louder than the
    /// fundamental, the classic trap for octave errors).
    fn tone(f0: f64, seconds: f64, rate: u32) -> Vec<f32> {
        let n = (seconds * rate as f64) as usize;
        (0..n)
            .map(|i| {
                let t = i as f64 / rate as f64;
                let w = 2.0 * std::f64::consts::PI * f0 * t;
                (0.3 * w.sin() + 0.4 * (2.0 * w).sin() + 0.2 * (3.0 * w).sin()) as f32
            })
            .collect()
    }

    #[test]
    fn finds_the_fundamental_of_bass_tones_across_the_range() {
        for f0 in [41.2, 55.0, 73.4, 98.0, 146.8, 220.0, 329.6] {
            let x = tone(f0, 0.5, ANALYSIS_RATE);
            let fr = analyse(&x, ANALYSIS_RATE, &params());
            // frames well inside the tone
            let mid: Vec<usize> = (10..fr.len() - 10).collect();
            for &t in &mid {
                let cents = 1200.0 * (fr.f0_hz[t] as f64 / f0).log2();
                assert!(cents.abs() < 10.0, "{f0} Hz: frame {t} reads {} Hz", fr.f0_hz[t]);
                assert!(fr.aperiodicity[t] < 0.05, "{f0} Hz: aperiodicity {}", fr.aperiodicity[t]);
            }
        }
    }

    #[test]
    fn noise_is_aperiodic_and_silence_is_at_the_floor() {
        let mut state = 12345u32;
        let noise: Vec<f32> = (0..ANALYSIS_RATE as usize / 2)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        let fr = analyse(&noise, ANALYSIS_RATE, &params());
        let mean_ap: f32 = fr.aperiodicity[10..fr.len() - 10].iter().sum::<f32>() / (fr.len() - 20) as f32;
        assert!(mean_ap > 0.3, "noise reads as periodic: aperiodicity {mean_ap}");
        let silent = analyse(&vec![0.0; 4000], ANALYSIS_RATE, &params());
        assert!(silent.level_db.iter().all(|&l| l == FLOOR_DB));
        assert!(analyse(&[], ANALYSIS_RATE, &params()).is_empty());
    }

    #[test]
    fn the_onset_envelope_rises_at_a_new_note_and_the_level_follows_loudness() {
        let rate = ANALYSIS_RATE;
        let mut x = tone(55.0, 0.4, rate);
        let quiet: Vec<f32> = x.iter().map(|v| v * 0.1).collect();
        let n = x.len();
        x[..n / 2].copy_from_slice(&quiet[..n / 2]);
        let fr = analyse(&x, rate, &params());
        let change = (n / 2) / HOP;
        // 20 dB louder in the second half (the level ripples by a dB or two with a low note's
        // waveform, so frames are averaged)
        let mean = |r: std::ops::Range<usize>| fr.level_db[r.clone()].iter().sum::<f32>() / r.len() as f32;
        let (before, after) = (mean(change - 25..change - 10), mean(change + 10..change + 25));
        assert!((after - before - 20.0).abs() < 1.0, "{before} -> {after}");
        assert!(fr.onset_db[change + 12] - fr.onset_db[change - 12] > 15.0);
        assert!((fr.hop_s - HOP as f64 / rate as f64).abs() < 1e-12);
    }
}
