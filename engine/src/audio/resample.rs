//! Offline sample-rate conversion (rubato's synchronous FFT resampler: a long windowed-sinc
//! low-pass applied by FFT convolution), delay-compensated so output sample `k` is the signal at
//! time `k / to`, exactly as input sample `j` is the signal at `j / from`.

use anyhow::{bail, Result};
use rubato::{FftFixedInOut, Resampler};

/// Approximate input chunk length (frames). The anti-aliasing filter has as many taps, so longer
/// chunks give a steeper filter; 2048 taps keep the pass band flat to ~98.6 % of Nyquist.
const CHUNK: usize = 2048;

/// Resamples planar audio from `from` Hz to `to` Hz.
///
/// Returns exactly `round(len * to / from)` frames per channel, aligned in time with the input
/// (the resampler's delay is removed; the signal is taken as zero before the start and after the
/// end). Equal rates return a copy. All channels must have the same length.
pub fn resample(channels: &[Vec<f32>], from: u32, to: u32) -> Result<Vec<Vec<f32>>> {
    let mut stream = StreamResampler::new(from, to, channels.len())?;
    let mut out = stream.push(channels)?;
    for (o, rest) in out.iter_mut().zip(stream.finish()?) {
        o.extend(rest);
    }
    Ok(out)
}

/// The length [`resample`] gives `n_in` frames at `from` Hz: `round(n_in * to / from)`, in
/// integers (every job plans its windows with this, so plans and runs agree to the frame).
pub fn resampled_len(n_in: usize, from: u32, to: u32) -> usize {
    ((n_in as u128 * to as u128 + from.max(1) as u128 / 2) / from.max(1) as u128) as usize
}

/// [`resample`] for audio that arrives in pieces: [`push`](Self::push) each piece as it comes,
/// then [`finish`](Self::finish). The concatenated output is bit-identical to [`resample`] of the
/// concatenated input, whatever the pieces' lengths, and the resampler holds at most one filter
/// chunk (about 2,048 frames) per channel.
pub struct StreamResampler {
    inner: Option<Fft>,
    channels: usize,
    from: u32,
    to: u32,
    /// Frames pushed so far.
    n_in: usize,
    /// Frames handed out so far.
    n_out: usize,
}

struct Fft {
    resampler: FftFixedInOut<f64>,
    chunk_in: usize,
    chunk_out: usize,
    delay: usize,
    /// Input not yet processed (less than one chunk), per channel.
    pending: Vec<Vec<f64>>,
    output: Vec<Vec<f64>>,
    /// Output frames produced so far, delay included.
    produced: usize,
}

impl StreamResampler {
    pub fn new(from: u32, to: u32, channels: usize) -> Result<Self> {
        if from == 0 || to == 0 {
            bail!("cannot resample from {from} Hz to {to} Hz: sample rates must be positive");
        }
        let inner = if from == to || channels == 0 {
            None
        } else {
            // Chunks of an even number of the smallest whole-ratio blocks, so both chunk lengths
            // are even and the filter's centre (half a chunk) falls exactly on an output sample.
            let g = gcd(from as usize, to as usize);
            let (unit_in, unit_out) = (from as usize / g, to as usize / g);
            let units = 2 * CHUNK.div_ceil(2 * unit_in);
            let resampler = FftFixedInOut::<f64>::new(from as usize, to as usize, units * unit_in, channels)?;
            let (chunk_in, chunk_out) = (resampler.input_frames_next(), resampler.output_frames_next());
            debug_assert_eq!((chunk_in, chunk_out), (units * unit_in, units * unit_out));
            let delay = resampler.output_delay();
            debug_assert_eq!(delay * 2, chunk_out);
            Some(Fft {
                resampler,
                chunk_in,
                chunk_out,
                delay,
                pending: vec![Vec::with_capacity(chunk_in); channels],
                output: vec![vec![0.0; chunk_out]; channels],
                produced: 0,
            })
        };
        Ok(Self { inner, channels, from, to, n_in: 0, n_out: 0 })
    }

    /// The output length for `n_in` input frames: `round(n_in * to / from)`.
    pub fn output_len(&self, n_in: usize) -> usize {
        resampled_len(n_in, self.from, self.to)
    }

    /// Feeds the next frames (planar, every channel the same length) and returns the output
    /// frames that are now final.
    pub fn push(&mut self, input: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if input.len() != self.channels {
            bail!("cannot resample: expected {} channels, got {}", self.channels, input.len());
        }
        let n = input.first().map_or(0, Vec::len);
        if input.iter().any(|c| c.len() != n) {
            bail!("cannot resample: channels have different lengths");
        }
        self.n_in += n;
        let Some(fft) = &mut self.inner else {
            self.n_out += n;
            return Ok(input.to_vec());
        };
        // Output frames up to floor(n_in · to / from) never exceed the final length.
        let cap = (self.n_in as u128 * self.to as u128 / self.from as u128) as usize;
        let mut out = vec![Vec::new(); self.channels];
        let mut offset = 0;
        while offset < n {
            let take = (fft.chunk_in - fft.pending[0].len()).min(n - offset);
            for (p, ch) in fft.pending.iter_mut().zip(input) {
                p.extend(ch[offset..offset + take].iter().map(|&x| x as f64));
            }
            offset += take;
            if fft.pending[0].len() == fft.chunk_in {
                fft.run_chunk(&mut out, &mut self.n_out, cap)?;
            }
        }
        Ok(out)
    }

    /// Ends the input: returns the remaining output frames, so the total is
    /// `round(frames pushed * to / from)`.
    pub fn finish(mut self) -> Result<Vec<Vec<f32>>> {
        let total = self.output_len(self.n_in);
        let mut out = vec![Vec::new(); self.channels];
        if let Some(fft) = &mut self.inner {
            // The signal is zero after the end: pad the last chunk and run zero chunks until the
            // delayed output covers the whole length.
            while self.n_out < total {
                for p in &mut fft.pending {
                    p.resize(fft.chunk_in, 0.0);
                }
                fft.run_chunk(&mut out, &mut self.n_out, total)?;
            }
        }
        Ok(out)
    }
}

impl Fft {
    /// Resamples the full pending chunk, appending output frames to `out` up to `cap` in all.
    fn run_chunk(&mut self, out: &mut [Vec<f32>], n_out: &mut usize, cap: usize) -> Result<()> {
        self.resampler.process_into_buffer(&self.pending, &mut self.output, None)?;
        for p in &mut self.pending {
            p.clear();
        }
        // Produced frame `k` is the signal at output time `k - delay`.
        let skip = self.delay.saturating_sub(self.produced).min(self.chunk_out);
        self.produced += self.chunk_out;
        let available = self.produced.saturating_sub(self.delay);
        let take = available.min(cap).saturating_sub(*n_out).min(self.chunk_out - skip);
        for (o, y) in out.iter_mut().zip(&self.output) {
            o.extend(y[skip..skip + take].iter().map(|&v| v as f32));
        }
        *n_out += take;
        Ok(())
    }
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::TAU;

    fn sine(freq: f64, rate: u32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (0.5 * (TAU * freq * i as f64 / rate as f64).sin()) as f32)
            .collect()
    }

    /// RMS difference over the middle of the signals (edges excluded: zero outside the signal).
    fn rms_diff_middle(a: &[f32], b: &[f32], edge: usize) -> f64 {
        let (a, b) = (&a[edge..a.len() - edge], &b[edge..b.len() - edge]);
        let s: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
            .sum();
        (s / a.len() as f64).sqrt()
    }

    #[test]
    fn lengths_are_rounded_ratio() {
        for (n, from, to) in [
            (1000, 44100, 22050),
            (1001, 44100, 22050),
            (4410, 48000, 22050),
            (1, 22050, 48000),
            (7, 8000, 44100),
        ] {
            let x = vec![vec![0.25f32; n], vec![0.0; n]];
            let y = resample(&x, from, to).unwrap();
            let expect = (n as f64 * to as f64 / from as f64).round() as usize;
            assert_eq!(y.len(), 2);
            assert_eq!(y[0].len(), expect, "{n} frames {from}->{to}");
            assert_eq!(y[1].len(), expect);
        }
        assert_eq!(
            resample(&[vec![0.5, 0.25]], 22050, 22050).unwrap(),
            vec![vec![0.5, 0.25]]
        );
        assert!(resample(&[vec![0.0; 4]], 0, 22050).is_err());
        assert!(resample(&[vec![0.0; 4], vec![0.0; 3]], 44100, 22050).is_err());
    }

    /// A 1 kHz sine resampled to 22.05 kHz matches the analytic sine there (so no time shift),
    /// and resampled back matches the original.
    #[test]
    fn sine_round_trips_accurately_and_without_shift() {
        for rate in [44100u32, 48000] {
            let n = rate as usize; // 1 s
            let x = sine(1000.0, rate, n);
            let down = resample(std::slice::from_ref(&x), rate, 22050)
                .unwrap()
                .remove(0);
            assert_eq!(down.len(), 22050);
            let want = sine(1000.0, 22050, 22050);
            let e_down = rms_diff_middle(&down, &want, 2048);
            assert!(e_down < 1e-6, "{rate}->22050: rms error {e_down}");
            let back = resample(&[down], 22050, rate).unwrap().remove(0);
            assert_eq!(back.len(), n);
            let e_back = rms_diff_middle(&back, &x, 4096);
            eprintln!("{rate} Hz: 1 kHz sine rms error down {e_down:.2e}, round trip {e_back:.2e}");
            assert!(e_back < 1e-6, "{rate}->22050->{rate}: rms error {e_back}");
            // A 9 kHz tone, near the top of the model's band, survives the round trip too.
            let hi = sine(9000.0, rate, n);
            let down = resample(std::slice::from_ref(&hi), rate, 22050).unwrap();
            let back = resample(&down, 22050, rate).unwrap().remove(0);
            let e_hi = rms_diff_middle(&back, &hi, 4096);
            eprintln!("{rate} Hz: 9 kHz sine round trip rms error {e_hi:.2e}");
            assert!(e_hi < 1e-5, "9 kHz {rate}->22050->{rate}: rms error {e_hi}");
        }
    }

    /// An impulse stays at the same time (its peak lands on the matching output sample).
    #[test]
    fn impulse_is_not_shifted() {
        let mut x = vec![0.0f32; 44100];
        x[20000] = 1.0;
        let y = resample(&[x], 44100, 22050).unwrap().remove(0);
        let peak = (0..y.len())
            .max_by(|&a, &b| y[a].abs().total_cmp(&y[b].abs()))
            .unwrap();
        assert_eq!(peak, 10000);
    }

    /// Pushing the input in uneven pieces gives exactly the whole-signal result.
    #[test]
    fn streaming_matches_whole_signal() {
        for (n, from, to) in [(30_001, 44100, 22050), (9_000, 22050, 48000), (5, 48000, 22050), (4_000, 22050, 22050)] {
            let x = vec![sine(440.0, from, n), sine(3000.0, from, n)];
            let whole = resample(&x, from, to).unwrap();
            for piece in [1usize, 777, 4096, n + 1] {
                let mut s = StreamResampler::new(from, to, 2).unwrap();
                let mut got = vec![Vec::new(); 2];
                let mut i = 0;
                while i < n {
                    let j = (i + piece).min(n);
                    let part: Vec<Vec<f32>> = x.iter().map(|c| c[i..j].to_vec()).collect();
                    for (g, o) in got.iter_mut().zip(s.push(&part).unwrap()) {
                        g.extend(o);
                    }
                    i = j;
                }
                for (g, o) in got.iter_mut().zip(s.finish().unwrap()) {
                    g.extend(o);
                }
                assert_eq!(got, whole, "{n} frames {from}->{to} in pieces of {piece}");
            }
        }
    }

    /// Content above the new Nyquist frequency is removed, not aliased.
    #[test]
    fn downsampling_removes_content_above_nyquist() {
        let x = sine(15000.0, 44100, 44100);
        let y = resample(&[x], 44100, 22050).unwrap().remove(0);
        let rms = rms_diff_middle(&y, &vec![0.0; y.len()], 2048);
        assert!(rms < 1e-3, "15 kHz leaked into 22.05 kHz output: rms {rms}");
    }
}
