//! Giving the stems back what the model never saw.
//!
//! The model separates a 22,050 Hz version of the mix, so once its stems are resampled back to
//! the input rate they miss the input's content above 11,025 Hz (and any resampling error).
//! [`distribute_residual`] hands that residual to the stems so that they sum to the input again.

/// Below this short-time energy a stem counts as silent in the high band (about -120 dB); it is
/// added to every stem's energy, so weights become equal where all stems are silent.
const SILENT_ENERGY: f64 = 1e-12;

/// Distributes the residual `target − Σ stems` over the stems, in place, so that afterwards
/// `Σ stems == target` at every sample (up to `f32` rounding).
///
/// **Rule.** The residual at sample `n` goes to stem `s` with weight `w_s(n)`, where the weights
/// are non-negative and sum to one. `w_s(n)` is proportional to stem `s`'s short-time energy in
/// the highest band the model produces: each stem is high-passed with the second difference
/// `h[n] = x[n] − (x[n−1] + x[n+1]) / 2` (gain `1 − cos ω`: about 0.3 at 5.5 kHz, 1 at 11 kHz,
/// 0.02 at 1 kHz for 44.1 kHz audio), its mean square is taken over frames of `frame` samples,
/// and that energy is interpolated linearly between frame centres so the weights change
/// smoothly, with no steps. A tiny floor (1e-12) is added to every stem's energy, so where all
/// stems are silent in that band the residual is split equally. The idea: the missing top octave
/// (cymbals, hi-hats, string noise) most likely belongs to the stems that are already bright at
/// that moment.
///
/// All stems and `target` must have the same length; `frame` is raised to at least 1.
/// With no stems there is nothing to distribute and nothing changes.
///
/// # Panics
/// If a stem's length differs from `target`'s.
pub fn distribute_residual(stems: &mut [Vec<f32>], target: &[f32], frame: usize) {
    if stems.is_empty() {
        return;
    }
    assert!(
        stems.iter().all(|s| s.len() == target.len()),
        "distribute_residual: stems and target must have the same length"
    );
    let mut stream = ResidualStream::new(stems.len(), frame);
    let mut done = stream.push(stems, target);
    for (d, rest) in done.iter_mut().zip(stream.finish()) {
        d.extend(rest);
    }
    for (s, d) in stems.iter_mut().zip(done) {
        *s = d;
    }
}

/// [`distribute_residual`] for audio that arrives in pieces: [`push`](Self::push) stems and
/// target as they come and [`finish`](Self::finish) at the end. The concatenated output is
/// bit-identical to [`distribute_residual`] on the whole signal; the stream holds about three
/// frames of audio.
pub struct ResidualStream {
    frame: usize,
    /// Buffered stems and target from absolute sample `base` on.
    stems: Vec<Vec<f32>>,
    target: Vec<f32>,
    base: usize,
    /// Per-stem energies of frames `energy_base..energy_base + energy[s].len()`.
    energy: Vec<Vec<f64>>,
    energy_base: usize,
    /// Next sample to hand out.
    out_pos: usize,
}

impl ResidualStream {
    pub fn new(stems: usize, frame: usize) -> Self {
        Self {
            frame: frame.max(1),
            stems: vec![Vec::new(); stems],
            target: Vec::new(),
            base: 0,
            energy: vec![Vec::new(); stems],
            energy_base: 0,
            out_pos: 0,
        }
    }

    /// Feeds the next samples of every stem and of the target (all the same length) and returns
    /// the stems' samples that are now final, with the residual handed out.
    ///
    /// # Panics
    /// If the lengths differ or the stem count is not the one given to [`new`](Self::new).
    pub fn push(&mut self, stems: &[Vec<f32>], target: &[f32]) -> Vec<Vec<f32>> {
        assert_eq!(stems.len(), self.stems.len(), "ResidualStream: wrong number of stems");
        assert!(
            stems.iter().all(|s| s.len() == target.len()),
            "ResidualStream: stems and target must have the same length"
        );
        for (b, s) in self.stems.iter_mut().zip(stems) {
            b.extend_from_slice(s);
        }
        self.target.extend_from_slice(target);
        let end = self.base + self.target.len();
        // A frame's energy is final once the sample after it has arrived.
        while (self.next_frame() + 1) * self.frame < end {
            self.add_frame_energy(None);
        }
        // Samples of frame f need the energies of frames f - 1 ..= f + 1.
        let computed = self.next_frame();
        let upto = computed.saturating_sub(1) * self.frame;
        self.emit(upto, None)
    }

    /// Ends the signal: returns the remaining samples.
    pub fn finish(mut self) -> Vec<Vec<f32>> {
        let n = self.base + self.target.len();
        let n_frames = n.div_ceil(self.frame).max(1);
        while self.next_frame() < n_frames {
            self.add_frame_energy(Some(n));
        }
        self.emit(n, Some(n_frames))
    }

    fn next_frame(&self) -> usize {
        self.energy_base + self.energy[0].len()
    }

    /// Mean square of the second-difference high-pass of each stem over the next frame; `end`
    /// is the signal's length once known (samples clamp to it at the end).
    fn add_frame_energy(&mut self, end: Option<usize>) {
        let f = self.next_frame();
        let n = end.unwrap_or(usize::MAX);
        let last = (self.base + self.target.len()).max(1) - 1;
        let (lo, hi) = (f * self.frame, ((f + 1) * self.frame).min(n));
        for (s, e) in self.stems.iter().zip(&mut self.energy) {
            let at = |i: isize| s[(i.clamp(0, last as isize) as usize) - self.base] as f64;
            let mut sum = 0.0f64;
            for i in lo..hi {
                let i = i as isize;
                let h = at(i) - 0.5 * (at(i - 1) + at(i + 1));
                sum += h * h;
            }
            e.push(sum / hi.saturating_sub(lo).max(1) as f64);
        }
    }

    /// Hands out samples `out_pos..upto`; `n_frames` is the frame count once the end is known.
    fn emit(&mut self, upto: usize, n_frames: Option<usize>) -> Vec<Vec<f32>> {
        let k = self.stems.len();
        let count = upto.saturating_sub(self.out_pos);
        let mut out = vec![Vec::with_capacity(count); k];
        let last_frame = n_frames.map_or(f64::INFINITY, |n| (n - 1) as f64);
        let mut e = vec![0.0f64; k];
        for i in self.out_pos..upto {
            // Position in frames, frame f's centre at f; clamp at the ends; interpolate linearly.
            let pos = ((i as f64 + 0.5) / self.frame as f64 - 0.5).clamp(0.0, last_frame);
            let (f0, frac) = (pos.floor() as usize, pos.fract());
            let f1 = n_frames.map_or(f0 + 1, |n| (f0 + 1).min(n - 1));
            for (s, es) in e.iter_mut().enumerate() {
                let en = &self.energy[s];
                *es = en[f0 - self.energy_base] * (1.0 - frac) + en[f1 - self.energy_base] * frac + SILENT_ENERGY;
            }
            let total: f64 = e.iter().sum();
            let j = i - self.base;
            let sum: f64 = self.stems.iter().map(|s| s[j] as f64).sum();
            let residual = self.target[j] as f64 - sum;
            let mut others = 0.0f64;
            for (s, o) in out[..k - 1].iter_mut().enumerate() {
                let w = (e[s] / total) as f32;
                let v = (self.stems[s][j] as f64 + w as f64 * residual) as f32;
                others += v as f64;
                o.push(v);
            }
            // The last stem takes exactly what is left (its weight is 1 − Σ others ≥ 0), so the
            // sum is exact up to one rounding.
            out[k - 1].push((self.target[j] as f64 - others) as f32);
        }
        self.out_pos = self.out_pos.max(upto);
        self.trim();
        out
    }

    /// Drops buffered samples and energies no later step needs (one sample before the next
    /// frame to measure, the frame before the next sample to hand out).
    fn trim(&mut self) {
        let keep_from = (self.next_frame() * self.frame).saturating_sub(1).min(self.out_pos);
        if keep_from > self.base {
            let d = keep_from - self.base;
            self.stems.iter_mut().for_each(|s| drop(s.drain(..d)));
            self.target.drain(..d);
            self.base = keep_from;
        }
        let keep_frame = (self.out_pos / self.frame).saturating_sub(1).min(self.next_frame());
        if keep_frame > self.energy_base {
            let d = keep_frame - self.energy_base;
            self.energy.iter_mut().for_each(|e| drop(e.drain(..d)));
            self.energy_base = keep_frame;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::TAU;

    const RATE: f64 = 44100.0;

    fn tone(freq: f64, amp: f64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (amp * (TAU * freq * i as f64 / RATE).sin()) as f32)
            .collect()
    }

    /// Deterministic white noise in [-1, 1].
    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f64 / (1u64 << 23) as f64 - 1.0) as f32
            })
            .collect()
    }

    /// The weights of the rule: what each stem gets of a unit residual.
    fn weights(stems: &[Vec<f32>], frame: usize) -> Vec<Vec<f32>> {
        let n = stems[0].len();
        let target: Vec<f32> = (0..n).map(|i| stems.iter().map(|s| s[i]).sum::<f32>() + 1.0).collect();
        let mut out = stems.to_vec();
        distribute_residual(&mut out, &target, frame);
        out.iter().zip(stems).map(|(o, s)| o.iter().zip(s).map(|(a, b)| a - b).collect()).collect()
    }

    /// Pushing in uneven pieces gives exactly the whole-signal result.
    #[test]
    fn streaming_matches_whole_signal() {
        for (n, frame) in [(10_000usize, 512usize), (5, 512), (4096, 1024), (1, 7), (3000, 1)] {
            let target = noise(n, 3);
            let stems: Vec<Vec<f32>> = (0..3).map(|s| noise(n, 20 + s).iter().map(|x| x * 0.3).collect()).collect();
            let mut whole = stems.clone();
            distribute_residual(&mut whole, &target, frame);
            for piece in [1usize, 333, 512, 5000] {
                let mut st = ResidualStream::new(3, frame);
                let mut got = vec![Vec::new(); 3];
                let mut i = 0;
                while i < n {
                    let j = (i + piece).min(n);
                    let part: Vec<Vec<f32>> = stems.iter().map(|s| s[i..j].to_vec()).collect();
                    for (g, o) in got.iter_mut().zip(st.push(&part, &target[i..j])) {
                        g.extend(o);
                    }
                    i = j;
                }
                for (g, o) in got.iter_mut().zip(st.finish()) {
                    g.extend(o);
                }
                assert_eq!(got, whole, "{n} samples, frame {frame}, pieces of {piece}");
            }
        }
    }

    fn max_sum_error(stems: &[Vec<f32>], target: &[f32]) -> f64 {
        (0..target.len())
            .map(|i| (stems.iter().map(|s| s[i] as f64).sum::<f64>() - target[i] as f64).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn stems_sum_to_target_exactly() {
        let n = 10_000;
        let target = noise(n, 1);
        let mut stems: Vec<Vec<f32>> = (0..4)
            .map(|s| noise(n, 10 + s).iter().map(|x| x * 0.3).collect())
            .collect();
        assert!(
            max_sum_error(&stems, &target) > 0.1,
            "test needs a real residual"
        );
        distribute_residual(&mut stems, &target, 512);
        let err = max_sum_error(&stems, &target);
        assert!(err <= 1e-6, "max |Σ stems − target| = {err}");
    }

    /// A hi-hat-like residual (bright noise bursts) goes mostly to the stem that is bright.
    #[test]
    fn bright_residual_goes_to_the_bright_stem() {
        let n = 44_100;
        let bass = tone(55.0, 0.5, n);
        let hats = tone(8000.0, 0.2, n); // the drum stem's top band
        let drums: Vec<f32> = tone(100.0, 0.3, n)
            .iter()
            .zip(&hats)
            .map(|(a, b)| a + b)
            .collect();
        let guitar = tone(330.0, 0.3, n);
        let piano = tone(523.0, 0.3, n);
        // Residual: noise high-passed twice (mostly above 11 kHz), in bursts of 2048 samples.
        let w = noise(n + 2, 7);
        let residual: Vec<f32> = (0..n)
            .map(|i| {
                let hp = w[i + 1] - 0.5 * (w[i] + w[i + 2]);
                if (i / 2048) % 2 == 0 {
                    0.05 * hp
                } else {
                    0.0
                }
            })
            .collect();
        let mut stems = vec![bass.clone(), drums.clone(), guitar, piano];
        let target: Vec<f32> = (0..n)
            .map(|i| stems.iter().map(|s| s[i]).sum::<f32>() + residual[i])
            .collect();
        distribute_residual(&mut stems, &target, 1024);
        assert!(max_sum_error(&stems, &target) <= 1e-5);
        let got: f64 = stems[1]
            .iter()
            .zip(&drums)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let all: f64 = residual.iter().map(|&r| (r as f64).powi(2)).sum();
        assert!(
            got / all > 0.9,
            "drums got {:.3} of the residual energy",
            got / all
        );
        let to_bass: f64 = stems[0]
            .iter()
            .zip(&bass)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        assert!(
            to_bass / all < 0.01,
            "bass got {:.4} of the residual energy",
            to_bass / all
        );
    }

    /// Silent stems share equally; weights move smoothly from one bright stem to another.
    #[test]
    fn weights_are_equal_in_silence_and_smooth() {
        let n = 8192;
        let silent = vec![vec![0.0f32; n]; 4];
        let w = weights(&silent, 1024);
        assert!(w.iter().flatten().all(|&x| (x - 0.25).abs() < 1e-6));

        let bright = tone(9000.0, 0.3, n);
        let first_half: Vec<f32> = (0..n)
            .map(|i| if i < n / 2 { bright[i] } else { 0.0 })
            .collect();
        let second_half: Vec<f32> = (0..n)
            .map(|i| if i >= n / 2 { bright[i] } else { 0.0 })
            .collect();
        let w = weights(&[first_half, second_half], 1024);
        assert!(w[0][100] > 0.99 && w[1][n - 100] > 0.99);
        for i in 1..n {
            assert!((w[0][i] + w[1][i] - 1.0).abs() < 1e-6);
            assert!(w[0][i] >= 0.0 && w[1][i] >= 0.0);
            assert!((w[0][i] - w[0][i - 1]).abs() <= 2.0 / 1024.0, "step at {i}");
        }
    }
}
