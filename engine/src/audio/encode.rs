//! Writing WAV files safely.
//!
//! [`write_wav`] writes to a temporary file in the destination directory and renames it into
//! place, so a crash or a full disk never leaves a half-written file under the final name.
//! [`ensure_output_dir`] creates the output directory and, unless told to overwrite, refuses to
//! touch stem files that already exist, so nothing the user made is lost.

use super::AudioBuffer;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Sample encoding of written WAV files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SampleFormat {
    /// 32-bit IEEE float (lossless for our `f32` samples; values beyond ±1 are kept).
    #[default]
    F32,
    /// 16-bit integer, rounded, values beyond ±1 clipped.
    I16,
    /// 24-bit integer, rounded, values beyond ±1 clipped.
    I24,
}

/// What to do when an output file already exists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutputPolicy {
    /// Refuse with an error that lists the existing files (default).
    #[default]
    Refuse,
    /// Replace existing files.
    Overwrite,
}

/// Creates `dir` (and parents) if needed and returns `dir/name` for each name.
///
/// With [`OutputPolicy::Refuse`], fails before anything is written if any of those files
/// already exists, naming them and suggesting how to proceed.
pub fn ensure_output_dir(dir: &Path, names: &[&str], policy: OutputPolicy) -> Result<Vec<PathBuf>> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "output path {} exists and is not a directory; choose a folder",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let paths: Vec<PathBuf> = names.iter().map(|n| dir.join(n)).collect();
    if policy == OutputPolicy::Refuse {
        let existing: Vec<String> = paths
            .iter()
            .filter(|p| p.exists())
            .map(|p| {
                p.file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        if !existing.is_empty() {
            bail!(
                "refusing to overwrite existing file(s) {} in {}; choose another output folder \
                 or ask to replace them (`msdm ... --force`)",
                existing.join(", "),
                dir.display()
            );
        }
    }
    Ok(paths)
}

/// Writes `audio` as a WAV file, atomically (temporary file + rename in the same directory).
///
/// Refuses empty channel lists, channels of different lengths and non-finite samples.
/// An existing file at `path` is replaced: guard stem files with [`ensure_output_dir`] first.
pub fn write_wav(path: &Path, audio: &AudioBuffer, format: SampleFormat) -> Result<()> {
    let frames = audio.frames();
    if audio.channels.iter().any(|c| c.len() != frames) {
        bail!("cannot write {}: channels have different lengths", path.display());
    }
    let mut w = WavStreamWriter::create(path, audio.num_channels(), audio.rate, format)?;
    w.write(&audio.channels)?;
    w.finish()
}

/// A WAV file written piece by piece, atomically: samples go to a hidden temporary file in the
/// destination directory, which [`finish`](Self::finish) renames into place. Dropped unfinished
/// (an error, a cancel), it deletes the temporary file and leaves `path` untouched.
pub struct WavStreamWriter {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<hound::WavWriter<std::io::BufWriter<std::fs::File>>>,
    format: SampleFormat,
    channels: usize,
    rate: u32,
    frames: usize,
}

impl WavStreamWriter {
    /// Starts `path` with `channels` channels at `rate` Hz.
    pub fn create(path: &Path, channels: usize, rate: u32, format: SampleFormat) -> Result<Self> {
        let shown = path.display();
        if channels == 0 || channels > u16::MAX as usize {
            bail!("cannot write {shown}: {channels} channels (need 1 to 65535)");
        }
        if rate == 0 {
            bail!("cannot write {shown}: sample rate is 0");
        }
        let (bits, sample_format) = match format {
            SampleFormat::F32 => (32, hound::SampleFormat::Float),
            SampleFormat::I16 => (16, hound::SampleFormat::Int),
            SampleFormat::I24 => (24, hound::SampleFormat::Int),
        };
        let spec = hound::WavSpec { channels: channels as u16, sample_rate: rate, bits_per_sample: bits, sample_format };
        let tmp = temp_path(path);
        let writer = hound::WavWriter::create(&tmp, spec)
            .with_context(|| format!("cannot write {shown}: cannot create {}", tmp.display()))?;
        Ok(Self { path: path.to_path_buf(), tmp, writer: Some(writer), format, channels, rate, frames: 0 })
    }

    /// Appends planar frames (one slice per channel, all the same length, finite).
    pub fn write(&mut self, planar: &[Vec<f32>]) -> Result<()> {
        let shown = self.path.display();
        let n = planar.first().map_or(0, Vec::len);
        if planar.len() != self.channels || planar.iter().any(|c| c.len() != n) {
            bail!("cannot write {shown}: expected {} channels of equal length", self.channels);
        }
        super::validate_chunk(planar, self.frames, self.rate).with_context(|| format!("cannot write {shown}"))?;
        let writer = self.writer.as_mut().context("writer already finished")?;
        // Same scale as the decoder (full scale = 2^(bits-1)), so integer samples round-trip exactly.
        let int = |x: f32, scale: f32| (x * scale).round().clamp(-scale, scale - 1.0) as i32;
        let result: Result<(), hound::Error> = (|| {
            for i in 0..n {
                for ch in planar {
                    let x = ch[i];
                    match self.format {
                        SampleFormat::F32 => writer.write_sample(x)?,
                        SampleFormat::I16 => writer.write_sample(int(x, 32768.0) as i16)?,
                        SampleFormat::I24 => writer.write_sample(int(x, 8_388_608.0))?,
                    }
                }
            }
            Ok(())
        })();
        result.with_context(|| format!("cannot write {shown} (is the disk full?)"))?;
        self.frames += n;
        Ok(())
    }

    /// Completes the file and moves it to its final name.
    pub fn finish(mut self) -> Result<()> {
        let shown = self.path.display().to_string();
        let writer = self.writer.take().context("writer already finished")?;
        writer.finalize().with_context(|| format!("cannot write {shown} (is the disk full?)"))?;
        std::fs::rename(&self.tmp, &self.path)
            .with_context(|| format!("cannot write {shown}: cannot move the finished file in place"))
    }
}

impl Drop for WavStreamWriter {
    fn drop(&mut self) {
        if self.writer.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` atomically (temporary file in the same folder, then rename), so a
/// crash or a full disk never leaves a half-written file under the final name. Replaces an
/// existing file: guard user files first.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_path(path);
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {} (is the disk full?)", path.display()));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::from(e).context(format!("cannot write {}: cannot move the finished file in place", path.display()))
    })
}

/// `dir/.name.tmp-<pid>`: same directory (so rename is atomic), hidden, unique per process.
fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
