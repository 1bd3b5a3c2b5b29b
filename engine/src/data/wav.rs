//! Minimal WAV access for the dataset layout (22,050 Hz stems): header probing and windowed,
//! mono-mixed reads with `hound`. General decoding (other formats, resampling) lives in `msdm::audio`.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// What a WAV header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WavInfo {
    pub sample_rate: u32,
    pub channels: u16,
    /// Samples per channel.
    pub frames: usize,
}

fn open(path: &Path) -> Result<hound::WavReader<std::io::BufReader<std::fs::File>>> {
    hound::WavReader::open(path).with_context(|| format!("{}: not a readable WAV file", path.display()))
}

/// Reads a WAV header.
pub fn probe(path: &Path) -> Result<WavInfo> {
    let r = open(path)?;
    let spec = r.spec();
    Ok(WavInfo { sample_rate: spec.sample_rate, channels: spec.channels, frames: r.duration() as usize })
}

/// Fails with a clear message unless the file is at `rate` Hz.
pub fn require_rate(path: &Path, info: &WavInfo, rate: u32) -> Result<()> {
    if info.sample_rate != rate {
        bail!(
            "{} is at {} Hz, but the dataset must be {} Hz mono (the model's rate). Convert it first, \
             e.g. `ffmpeg -i in.wav -ar {rate} -ac 1 -c:a pcm_f32le out.wav` or `sox in.wav -r {rate} -c 1 out.wav`",
            path.display(),
            info.sample_rate,
            rate
        );
    }
    Ok(())
}

/// Reads `len` frames starting at frame `offset`, averaging channels to mono; frames past the end
/// of the file read as zeros.
pub fn read_mono(path: &Path, offset: usize, len: usize) -> Result<Vec<f32>> {
    let mut r = open(path)?;
    let spec = r.spec();
    let ch = spec.channels.max(1) as usize;
    let frames = r.duration() as usize;
    let mut out = vec![0f32; len];
    if offset >= frames || len == 0 {
        return Ok(out);
    }
    let n = len.min(frames - offset);
    r.seek(offset as u32).with_context(|| format!("{}: seeking to frame {offset}", path.display()))?;
    let inv_ch = 1.0 / ch as f32;
    let ctx = || format!("{}: reading samples", path.display());
    match spec.sample_format {
        hound::SampleFormat::Float => {
            for (i, s) in r.samples::<f32>().take(n * ch).enumerate() {
                out[i / ch] += s.with_context(ctx)? * inv_ch;
            }
        }
        hound::SampleFormat::Int => {
            let scale = inv_ch / (1u64 << (spec.bits_per_sample.max(1) - 1)) as f32;
            for (i, s) in r.samples::<i32>().take(n * ch).enumerate() {
                out[i / ch] += s.with_context(ctx)? as f32 * scale;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stereo_int16_is_averaged_and_padded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.wav");
        let spec = hound::WavSpec { channels: 2, sample_rate: 22050, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
        let mut w = hound::WavWriter::create(&p, spec).unwrap();
        for i in 0..10i16 {
            w.write_sample(i * 1000).unwrap();
            w.write_sample(-i * 500).unwrap();
        }
        w.finalize().unwrap();
        let info = probe(&p).unwrap();
        assert_eq!(info, WavInfo { sample_rate: 22050, channels: 2, frames: 10 });
        let x = read_mono(&p, 8, 4).unwrap();
        assert!((x[0] - (8000.0 - 4000.0) / 2.0 / 32768.0).abs() < 1e-6);
        assert!((x[1] - (9000.0 - 4500.0) / 2.0 / 32768.0).abs() < 1e-6);
        assert_eq!(&x[2..], &[0.0, 0.0]);
        let err = require_rate(&p, &WavInfo { sample_rate: 44100, ..info }, 22050).unwrap_err().to_string();
        assert!(err.contains("44100") && err.contains("ffmpeg"), "{err}");
    }
}
