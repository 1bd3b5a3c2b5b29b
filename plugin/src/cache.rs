//! Content-addressed cache of captured clips and rendered stems, in the user's data folder
//! (`MSDM_CACHE_DIR` overrides it). The plugin state only stores the keys.
//!
//! Layout: `clips/<hash>.wav` (all capture channels, f32) and `stems/<key>/<stem>.wav`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::STEM_COUNT;

pub struct Cache {
    root: PathBuf,
}

/// Content hash of planar audio at a sample rate.
pub fn content_hash(rate: u32, channels: &[Vec<f32>]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"msdm-clip-v1");
    h.update(&rate.to_le_bytes());
    h.update(&(channels.len() as u64).to_le_bytes());
    for ch in channels {
        h.update(&(ch.len() as u64).to_le_bytes());
        for x in ch {
            h.update(&x.to_le_bytes());
        }
    }
    h.finalize().to_hex()[..32].to_string()
}

/// Cache key of a render: the hash of everything that determines its output.
pub fn render_key(parts: &[&str]) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"msdm-stems-v1");
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().to_hex()[..32].to_string()
}

impl Cache {
    /// The cache folder: `$MSDM_CACHE_DIR`, else `<data dir>/msdm-stems/cache`.
    pub fn open() -> Result<Cache> {
        let root = match std::env::var_os("MSDM_CACHE_DIR") {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => data_dir()?.join("cache"),
        };
        Ok(Cache { root })
    }

    pub fn at(root: PathBuf) -> Cache {
        Cache { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn clip_path(&self, hash: &str) -> PathBuf {
        self.root.join("clips").join(format!("{hash}.wav"))
    }

    fn stem_path(&self, key: &str, stem: &str) -> PathBuf {
        self.root.join("stems").join(key).join(format!("{stem}.wav"))
    }

    pub fn put_clip(&self, hash: &str, rate: u32, channels: &[Vec<f32>]) -> Result<()> {
        let path = self.clip_path(hash);
        if path.is_file() {
            return Ok(());
        }
        write_f32(&path, rate, channels)
    }

    pub fn get_clip(&self, hash: &str) -> Result<(u32, Vec<Vec<f32>>)> {
        read_f32(&self.clip_path(hash))
    }

    pub fn has_stems(&self, key: &str) -> bool {
        crate::STEMS.iter().all(|s| self.stem_path(key, s).is_file())
    }

    pub fn put_stems(&self, key: &str, rate: u32, stems: &[Vec<Vec<f32>>]) -> Result<()> {
        for (stem, audio) in crate::STEMS.iter().zip(stems) {
            write_f32(&self.stem_path(key, stem), rate, audio)?;
        }
        Ok(())
    }

    /// The four stems of a render, each planar stereo at `rate`.
    pub fn get_stems(&self, key: &str) -> Result<(u32, Vec<Vec<Vec<f32>>>)> {
        let mut out = Vec::with_capacity(STEM_COUNT);
        let mut rate = 0;
        for stem in crate::STEMS {
            let (r, audio) = read_f32(&self.stem_path(key, stem))?;
            rate = r;
            out.push(audio);
        }
        Ok((rate, out))
    }
}

/// The plugin's per-user data folder (`~/.local/share/msdm-stems` on Linux).
pub fn data_dir() -> Result<PathBuf> {
    match directories::ProjectDirs::from("", "", "msdm-stems") {
        Some(d) => Ok(d.data_dir().to_path_buf()),
        None => bail!("cannot find the user's data folder (no home directory); set MSDM_CACHE_DIR"),
    }
}

fn write_f32(path: &Path, rate: u32, channels: &[Vec<f32>]) -> Result<()> {
    let dir = path.parent().context("cache path has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create cache folder {}", dir.display()))?;
    let spec = hound::WavSpec {
        channels: channels.len() as u16,
        sample_rate: rate,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    // Write under a temporary name and rename, so a crash never leaves a truncated file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut w = hound::WavWriter::create(&tmp, spec)
            .with_context(|| format!("cannot write cache file {}", tmp.display()))?;
        let frames = channels.first().map_or(0, Vec::len);
        for i in 0..frames {
            for ch in channels {
                w.write_sample(ch[i])?;
            }
        }
        w.finalize()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot move cache file into {}", path.display()))?;
    Ok(())
}

fn read_f32(path: &Path) -> Result<(u32, Vec<Vec<f32>>)> {
    let mut r = hound::WavReader::open(path).with_context(|| format!("cache file {} is missing", path.display()))?;
    let spec = r.spec();
    if spec.sample_format != hound::SampleFormat::Float || spec.bits_per_sample != 32 {
        bail!("cache file {} is not 32-bit float; delete it", path.display());
    }
    let n = spec.channels as usize;
    let mut channels = vec![Vec::with_capacity(r.len() as usize / n.max(1)); n];
    for (i, s) in r.samples::<f32>().enumerate() {
        channels[i % n].push(s.with_context(|| format!("cache file {} is damaged", path.display()))?);
    }
    Ok((spec.sample_rate, channels))
}
