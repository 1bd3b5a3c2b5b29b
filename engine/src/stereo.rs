//! Stereo separation in one network pass: the network separates the mid (the mean of the
//! channels), and each channel's own mix is then shared out to the stems by a Wiener filter that
//! knows where each stem sits between the channels.
//!
//! Why: the model is mono, so separating each channel on its own costs one network pass per
//! channel, and the two passes may put a note in the guitar on the left and in the piano on the
//! right. The mid holds every source; what differs between channels is mostly how loud each
//! source is in each (a producer pans mono tracks). So each stem's image in channel c is modelled
//! as a gain per frequency band times the stem separated from the mid, the gains are fitted to
//! the channel's mix by least squares (pulled towards 1, the centre), and the channel's
//! mix is shared out in proportion to (gain · |stem|)^p, exactly as the mono post-filter does.
//! Each channel's stems sum to that channel's mix. A centred source gets gains of 1, so a mix
//! whose channels are equal gets the mono filter's stems in both. Measured on panned test songs
//! (model card, `tools/eval/stereo.py`).

use anyhow::{bail, Result};
use realfft::num_complex::Complex;
use serde::{Deserialize, Serialize};

use crate::wiener::{take_rounding, Spectra, Stft, WienerFilter};

/// How a mix of two or more channels is separated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StereoMode {
    /// Each channel on its own (one network pass per channel): the released behaviour.
    #[default]
    Each,
    /// The mid once, then each channel shared out by [`share_channels`] with the settings'
    /// Wiener post-filter (or [`WienerFilter::DEFAULT`] where they have none).
    Mid,
}

impl StereoMode {
    /// Items the network separates per window for a mix of `channels` channels.
    pub fn network_channels(self, channels: usize) -> usize {
        match self {
            StereoMode::Mid => channels.min(1),
            StereoMode::Each => channels,
        }
    }
}

/// How strongly the gains are pulled towards 1, relative to the stem's energy in the band: a stem
/// alone in a band gets its gain halfway between the fitted one and 1. Chosen on the validation
/// songs panned (`tools/eval/stereo.py`, model card): SI-SDRi All 6.85 / 6.88 / 6.94 / 7.00 /
/// 7.04 dB at 0.002 / 0.02 / 0.1 / 0.3 / 1, and 7.03 with the gains held at 1 (the other
/// points from a throwaway build that read this from the environment). The separation
/// of the mid is not exact, and gains fitted to it closely follow its errors; held at 1, two
/// sources with the same spectrum panned apart cannot be told apart at all.
const PULL: f64 = 1.0;

/// Bins per band whose gain is fitted together: about 21.5 Hz at any frame length, so a band of a
/// 16,384-sample frame pools 16 bins × every frame of the window.
fn band_bins(frame: usize) -> usize {
    (frame / 1024).max(1)
}

/// `stems` (C stems of T samples, separated from the mean of `mixes`) shared out to every channel
/// of `mixes` (each T samples): `[channel][stem]`, each channel's stems summing to its mix
/// (`residual_to` takes the f32 rounding, as in [`WienerFilter::apply`]).
pub fn share_channels(
    filter: &WienerFilter,
    stems: &[Vec<f32>],
    mixes: &[Vec<f32>],
    residual_to: Option<usize>,
) -> Result<Vec<Vec<Vec<f32>>>> {
    filter.validate()?;
    let t = mixes.first().map_or(0, Vec::len);
    if stems.is_empty() || stems.iter().chain(mixes).any(|s| s.len() != t) {
        bail!("sharing out the channels needs stems and channels of equal length ({t} samples)");
    }
    if t == 0 {
        return Ok(vec![stems.to_vec(); mixes.len()]);
    }
    let stft = Stft::new(filter.frame, t);
    let specs: Vec<Spectra> = stems.iter().map(|s| stft.analyse(s)).collect();
    let band = band_bins(filter.frame);
    Ok(mixes
        .iter()
        .map(|mix| {
            let x = stft.analyse(mix);
            let gains = band_gains(&specs, &x, band);
            let mut out = filter.share(&stft, &specs, Some(&gains), &x);
            if let Some(r) = residual_to {
                take_rounding(&mut out, mix, r);
            }
            out
        })
        .collect())
}

/// |h_i| per stem and bin: the complex gains h (one per stem and band of `band` bins) that best
/// give the channel's spectra `x` as Σ_i h_i · S_i over every frame and bin of the band, each
/// pulled towards 1 by [`PULL`] × the stem's energy there (ridge regression). Since the channels
/// average to the mid the stems were separated from, the gains of all channels average to 1.
fn band_gains(specs: &[Spectra], x: &Spectra, band: usize) -> Vec<Vec<f32>> {
    let (c, bins) = (specs.len(), x.first().map_or(0, Vec::len));
    let mut gains = vec![vec![1f32; bins]; c];
    let mut a = vec![Complex::<f64>::default(); c * c];
    let mut r = vec![Complex::<f64>::default(); c];
    for lo in (0..bins).step_by(band) {
        let hi = (lo + band).min(bins);
        a.iter_mut().chain(r.iter_mut()).for_each(|v| *v = Complex::default());
        for (k, frame) in x.iter().enumerate() {
            for j in lo..hi {
                let xj = frame[j].to_f64();
                for p in 0..c {
                    let sp = specs[p][k][j].to_f64().conj();
                    r[p] += sp * xj;
                    for q in 0..c {
                        a[p * c + q] += sp * specs[q][k][j].to_f64();
                    }
                }
            }
        }
        let scale: f64 = (0..c).map(|p| a[p * c + p].re).sum::<f64>() / c as f64;
        for p in 0..c {
            let pull = PULL * a[p * c + p].re + 1e-12 * scale + f64::MIN_POSITIVE;
            a[p * c + p] += pull;
            r[p] += pull;
        }
        if let Some(h) = solve(&mut a, &mut r, c) {
            for (g, hp) in gains.iter_mut().zip(h) {
                g[lo..hi].iter_mut().for_each(|v| *v = hp.norm() as f32);
            }
        }
    }
    gains
}

trait ToF64 {
    fn to_f64(self) -> Complex<f64>;
}

impl ToF64 for Complex<f32> {
    fn to_f64(self) -> Complex<f64> {
        Complex::new(self.re as f64, self.im as f64)
    }
}

/// Solves the n × n system `a` h = `r` (row-major) by Gaussian elimination with partial
/// pivoting; `None` if it is singular (the gains then stay 1).
fn solve(a: &mut [Complex<f64>], r: &mut [Complex<f64>], n: usize) -> Option<Vec<Complex<f64>>> {
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i * n + col].norm().total_cmp(&a[j * n + col].norm()))?;
        if !(a[pivot * n + col].norm() > 0.0) {
            return None;
        }
        if pivot != col {
            for k in 0..n {
                a.swap(pivot * n + k, col * n + k);
            }
            r.swap(pivot, col);
        }
        for row in col + 1..n {
            let f = a[row * n + col] / a[col * n + col];
            for k in col..n {
                let v = a[col * n + k];
                a[row * n + k] -= f * v;
            }
            let v = r[col];
            r[row] -= f * v;
        }
    }
    let mut h = vec![Complex::default(); n];
    for row in (0..n).rev() {
        let s: Complex<f64> = (row + 1..n).map(|k| a[row * n + k] * h[k]).sum();
        h[row] = (r[row] - s) / a[row * n + row];
    }
    h.iter().all(|v| v.re.is_finite() && v.im.is_finite()).then_some(h)
}

#[cfg(test)]
#[path = "stereo_tests.rs"]
mod tests;
