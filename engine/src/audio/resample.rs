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
    if from == 0 || to == 0 {
        bail!("cannot resample from {from} Hz to {to} Hz: sample rates must be positive");
    }
    let n_in = channels.first().map_or(0, Vec::len);
    if channels.iter().any(|c| c.len() != n_in) {
        bail!("cannot resample: channels have different lengths");
    }
    if from == to {
        return Ok(channels.to_vec());
    }
    let n_out = ((n_in as u128 * to as u128 + from as u128 / 2) / from as u128) as usize;
    if n_in == 0 || channels.is_empty() {
        return Ok(vec![Vec::new(); channels.len()]);
    }

    // Chunks of an even number of the smallest whole-ratio blocks, so both chunk lengths are even
    // and the filter's centre (half a chunk) falls exactly on an output sample.
    let g = gcd(from as usize, to as usize);
    let (unit_in, unit_out) = (from as usize / g, to as usize / g);
    let units = 2 * CHUNK.div_ceil(2 * unit_in);
    let mut resampler =
        FftFixedInOut::<f64>::new(from as usize, to as usize, units * unit_in, channels.len())?;
    let (chunk_in, chunk_out) = (
        resampler.input_frames_next(),
        resampler.output_frames_next(),
    );
    debug_assert_eq!((chunk_in, chunk_out), (units * unit_in, units * unit_out));
    let delay = resampler.output_delay();
    debug_assert_eq!(delay * 2, chunk_out);

    let n_chunks = (delay + n_out).div_ceil(chunk_out);
    let mut input = vec![vec![0.0f64; chunk_in]; channels.len()];
    let mut output = vec![vec![0.0f64; chunk_out]; channels.len()];
    let mut result = vec![Vec::with_capacity(n_out); channels.len()];
    for k in 0..n_chunks {
        let start = k * chunk_in;
        for (buf, ch) in input.iter_mut().zip(channels) {
            buf.fill(0.0);
            if start < n_in {
                let end = (start + chunk_in).min(n_in);
                for (b, &x) in buf.iter_mut().zip(&ch[start..end]) {
                    *b = x as f64;
                }
            }
        }
        resampler.process_into_buffer(&input, &mut output, None)?;
        // Output frame `k * chunk_out + i` is the signal at output time `k * chunk_out + i - delay`.
        let skip = delay.saturating_sub(k * chunk_out).min(chunk_out);
        for (res, out) in result.iter_mut().zip(&output) {
            let take = (n_out - res.len()).min(chunk_out - skip);
            res.extend(out[skip..skip + take].iter().map(|&y| y as f32));
        }
    }
    Ok(result)
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

    /// Content above the new Nyquist frequency is removed, not aliased.
    #[test]
    fn downsampling_removes_content_above_nyquist() {
        let x = sine(15000.0, 44100, 44100);
        let y = resample(&[x], 44100, 22050).unwrap().remove(0);
        let rms = rms_diff_middle(&y, &vec![0.0; y.len()], 2048);
        assert!(rms < 1e-3, "15 kHz leaked into 22.05 kHz output: rms {rms}");
    }
}
