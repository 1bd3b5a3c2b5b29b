//! The paper's separation metric (spec §8): SI-SNR improvement over the mixture, on 4 s windows with
//! a 2 s hop, skipping windows where at most one ground-truth stem is non-silent.

use crate::STEMS;
use serde::Serialize;

/// ε of the reference SI-SNR.
pub const EPS: f64 = 1e-8;
/// Window length: 4.0 s at 22,050 Hz.
pub const WINDOW: usize = 88_200;
/// Hop: 2.0 s at 22,050 Hz (windows overlap by 2 s).
pub const HOP: usize = 44_100;
/// A stem is silent in a window when ‖s‖₂ / n < this.
pub const SILENCE_THRESHOLD: f64 = 1.5e-5;

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum()
}

/// SI-SNR (dB) of `est` against `reference`, exactly as the reference evaluation writes it:
/// α = (⟨ŝ,s⟩ + ε)/(⟨s,s⟩ + ε), SI-SNR = 10·log10((‖αs‖² + ε)/(‖αs − ŝ‖² + ε)), ε = 1e-8.
/// Computed in f64 over the common length.
pub fn si_snr(est: &[f32], reference: &[f32]) -> f64 {
    let n = est.len().min(reference.len());
    let (est, reference) = (&est[..n], &reference[..n]);
    let ss = dot(reference, reference);
    let alpha = (dot(est, reference) + EPS) / (ss + EPS);
    let target = alpha * alpha * ss;
    let noise: f64 = est
        .iter()
        .zip(reference)
        .map(|(&e, &s)| {
            let d = alpha * s as f64 - e as f64;
            d * d
        })
        .sum();
    10.0 * ((target + EPS) / (noise + EPS)).log10()
}

/// Whether a window of a ground-truth stem counts as silent (‖s‖₂ / n < 1.5e-5).
pub fn is_silent(x: &[f32]) -> bool {
    if x.is_empty() {
        return true;
    }
    dot(x, x).sqrt() / (x.len() as f64) < SILENCE_THRESHOLD
}

/// Number of evaluation windows for a track of `t` samples: ceil((T − HOP)/HOP), 0 when T <= HOP.
pub fn num_windows(t: usize) -> usize {
    if t <= HOP {
        0
    } else {
        (t - HOP).div_ceil(HOP)
    }
}

/// One scored window.
#[derive(Clone, Debug, Serialize)]
pub struct WindowScore {
    pub start: usize,
    /// Samples in the window (the last one may be shorter than 4 s).
    pub len: usize,
    /// SI-SNRi per stem (dB).
    pub si_snri: [f64; 4],
    /// SI-SNR of the estimate per stem (dB).
    pub si_snr: [f64; 4],
}

/// Per-window scores of one track.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TrackScores {
    pub windows: Vec<WindowScore>,
    /// Windows left out because at most one ground-truth stem was non-silent.
    pub skipped: usize,
}

/// Scores a separated track: `est` and `refs` hold the 4 stems (bass, drums, guitar, piano); both
/// are cropped to the shortest of them (in the protocol, the references are cropped to the separated
/// length), and the mixture is the sum of the references. Missing stems count as zeros.
pub fn track_scores(est: &[Vec<f32>], refs: &[Vec<f32>]) -> TrackScores {
    let n_stems = est.len().min(refs.len()).min(4);
    let t = est[..n_stems].iter().chain(&refs[..n_stems]).map(|x| x.len()).min().unwrap_or(0);
    let crop = |xs: &[Vec<f32>]| -> Vec<Vec<f32>> {
        (0..4).map(|s| if s < n_stems { xs[s][..t].to_vec() } else { vec![0.0; t] }).collect()
    };
    let (est, refs) = (crop(est), crop(refs));
    let mix: Vec<f32> = (0..t).map(|i| refs.iter().map(|r| r[i]).sum()).collect();
    let mut out = TrackScores::default();
    for w in 0..num_windows(t) {
        let start = w * HOP;
        let end = (start + WINDOW).min(t);
        let active = refs.iter().filter(|r| !is_silent(&r[start..end])).count();
        if active <= 1 {
            out.skipped += 1;
            continue;
        }
        let mut si_snri = [0f64; 4];
        let mut sis = [0f64; 4];
        for s in 0..4 {
            let r = &refs[s][start..end];
            sis[s] = si_snr(&est[s][start..end], r);
            si_snri[s] = sis[s] - si_snr(&mix[start..end], r);
        }
        out.windows.push(WindowScore { start, len: end - start, si_snri, si_snr: sis });
    }
    out
}

/// Mean SI-SNRi per stem over all kept windows of all tracks; "All" is the mean of the 4 stem means.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Summary {
    pub per_stem: [f64; 4],
    pub all: f64,
    pub windows: usize,
    /// Windows skipped by the single-source filter.
    #[serde(default)]
    pub skipped_windows: usize,
    #[serde(default)]
    pub tracks: usize,
}

impl Summary {
    /// Aggregates per-track scores (NaN means when no window was kept).
    pub fn from_tracks(tracks: &[TrackScores]) -> Summary {
        let mut sums = [0f64; 4];
        let mut n = 0usize;
        for t in tracks {
            for w in &t.windows {
                for (acc, v) in sums.iter_mut().zip(w.si_snri) {
                    *acc += v;
                }
                n += 1;
            }
        }
        let per_stem = sums.map(|x| if n > 0 { x / n as f64 } else { f64::NAN });
        Summary {
            per_stem,
            all: per_stem.iter().sum::<f64>() / 4.0,
            windows: n,
            skipped_windows: tracks.iter().map(|t| t.skipped).sum(),
            tracks: tracks.len(),
        }
    }

    /// A plain-text table: one row, per-stem SI-SNRi (dB) and All.
    pub fn to_table(&self) -> String {
        let mut head = String::from("| ");
        let mut row = String::from("| ");
        for (s, name) in STEMS.iter().enumerate() {
            head += &format!("{:>8} | ", name);
            row += &format!("{:>8.2} | ", self.per_stem[s]);
        }
        head += &format!("{:>8} |", "All");
        row += &format!("{:>8.2} |", self.all);
        let rule: String = head.chars().map(|c| if c == '|' { '|' } else { '-' }).collect();
        format!(
            "SI-SNRi (dB), {} windows of 4 s (2 s hop) from {} tracks; {} single-source windows skipped\n{head}\n{rule}\n{row}\n",
            self.windows, self.tracks, self.skipped_windows
        )
    }

    /// JSON (the same fields as the struct).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("summary serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    fn noise(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| scale * { let v: f64 = StandardNormal.sample(&mut rng); v as f32 }).collect()
    }

    fn sine(f: f32, n: usize, a: f32) -> Vec<f32> {
        (0..n).map(|i| a * (2.0 * std::f32::consts::PI * f * i as f32 / 22050.0).sin()).collect()
    }

    #[test]
    fn scaled_copy_scores_like_the_original() {
        let s = noise(1, 22050, 0.1);
        let n = noise(2, 22050, 0.03);
        let est: Vec<f32> = s.iter().zip(&n).map(|(a, b)| a + b).collect();
        let scaled: Vec<f32> = est.iter().map(|x| 0.37 * x).collect();
        let a = si_snr(&est, &s);
        let b = si_snr(&scaled, &s);
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        // a perfect (scaled) estimate is far above any realistic score
        let perfect: Vec<f32> = s.iter().map(|x| 2.0 * x).collect();
        assert!(si_snr(&perfect, &s) > 80.0);
    }

    #[test]
    fn known_snr_is_recovered() {
        // Make noise exactly orthogonal to s and scaled to 10 dB below it.
        let s = noise(3, 44100, 0.2);
        let mut n = noise(4, 44100, 0.05);
        let proj = dot(&n, &s) / dot(&s, &s);
        for (x, &y) in n.iter_mut().zip(&s) {
            *x -= (proj * y as f64) as f32;
        }
        let k = (dot(&s, &s) / (10.0 * dot(&n, &n))).sqrt() as f32;
        let est: Vec<f32> = s.iter().zip(&n).map(|(a, b)| a + k * b).collect();
        let v = si_snr(&est, &s);
        assert!((v - 10.0).abs() < 0.01, "SI-SNR {v}");
    }

    #[test]
    fn eps_on_silent_reference() {
        let zeros = vec![0f32; 1000];
        // 0/0 guarded by eps: α = 1, target = 0 → 10·log10(eps/eps) = 0 dB when the estimate is silent too
        assert!(si_snr(&zeros, &zeros).abs() < 1e-9);
        // any non-silent estimate against a silent reference is very negative
        let est = noise(5, 1000, 0.1);
        let expected = 10.0 * (EPS / (dot(&est, &est) + EPS)).log10();
        assert!((si_snr(&est, &zeros) - expected).abs() < 1e-9);
        assert!(si_snr(&est, &zeros) < -60.0);
    }

    #[test]
    fn window_count_and_short_last_window() {
        assert_eq!(num_windows(44100), 0);
        assert_eq!(num_windows(88200), 1);
        assert_eq!(num_windows(88201), 2);
        assert_eq!(num_windows(262144), 5); // ceil((262144-44100)/44100) = ceil(4.94)
        let t = 262144;
        let refs: Vec<Vec<f32>> = (0..4).map(|i| sine(100.0 * (i + 1) as f32, t, 0.1)).collect();
        let est: Vec<Vec<f32>> = refs.iter().map(|r| r.iter().map(|x| 0.5 * x).collect()).collect();
        let ts = track_scores(&est, &refs);
        assert_eq!(ts.windows.len(), 5);
        let last = ts.windows.last().unwrap();
        assert_eq!(last.start, 4 * HOP);
        assert_eq!(last.len, t - 4 * HOP);
        assert!(last.len < WINDOW);
    }

    #[test]
    fn silent_and_single_source_windows_are_skipped() {
        let t = 6 * HOP; // 5 windows
        let mut refs: Vec<Vec<f32>> = vec![vec![0.0; t]; 4];
        // bass everywhere, drums only in [0, 2 s) → window 0 has two sources, later windows one.
        refs[0] = sine(55.0, t, 0.2);
        refs[1][..HOP].copy_from_slice(&noise(6, HOP, 0.1));
        // piano only in the last 2 s, very quiet (below threshold) → stays "silent"
        refs[3][5 * HOP..].copy_from_slice(&sine(440.0, HOP, 1e-4));
        let est = refs.clone();
        let ts = track_scores(&est, &refs);
        assert_eq!(ts.windows.len(), 1, "{:?}", ts.windows.iter().map(|w| w.start).collect::<Vec<_>>());
        assert_eq!(ts.windows[0].start, 0);
        assert_eq!(ts.skipped, 4);
        // all-silent track: every window skipped
        let silent = vec![vec![0f32; t]; 4];
        let ts = track_scores(&silent, &silent);
        assert_eq!((ts.windows.len(), ts.skipped), (0, 5));
        assert!(Summary::from_tracks(&[ts]).all.is_nan());
    }

    #[test]
    fn threshold_is_norm_over_length() {
        let n = WINDOW;
        // ‖x‖₂/n = a·sqrt(n)/n = a/sqrt(n) for a constant signal a
        let below = vec![0.99 * SILENCE_THRESHOLD as f32 * (n as f32).sqrt(); n];
        let above = vec![1.01 * SILENCE_THRESHOLD as f32 * (n as f32).sqrt(); n];
        assert!(is_silent(&below));
        assert!(!is_silent(&above));
    }

    #[test]
    fn summary_means_and_table() {
        let mk = |v: [f64; 4]| WindowScore { start: 0, len: 1, si_snri: v, si_snr: v };
        let a = TrackScores { windows: vec![mk([1.0, 2.0, 3.0, 4.0]), mk([3.0, 2.0, 1.0, 0.0])], skipped: 1 };
        let b = TrackScores { windows: vec![mk([5.0, 5.0, 5.0, 5.0])], skipped: 0 };
        let s = Summary::from_tracks(&[a, b]);
        assert_eq!(s.windows, 3);
        assert_eq!(s.skipped_windows, 1);
        assert!((s.per_stem[0] - 3.0).abs() < 1e-12);
        assert!((s.per_stem[3] - 3.0).abs() < 1e-12);
        assert!((s.all - (3.0 + 3.0 + 3.0 + 3.0) / 4.0).abs() < 1e-12);
        let table = s.to_table();
        assert!(table.contains("bass") && table.contains("All") && table.contains("3.00"), "{table}");
        let back: Summary = serde_json::from_str(&s.to_json()).unwrap();
        assert_eq!(back, s);
    }
}
