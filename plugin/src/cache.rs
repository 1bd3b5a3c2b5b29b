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

    fn clip_path(&self, hash: &str) -> Result<PathBuf> {
        Ok(self.root.join("clips").join(format!("{}.wav", checked_name(hash)?)))
    }

    fn stem_path(&self, key: &str, stem: &str) -> Result<PathBuf> {
        Ok(self.root.join("stems").join(checked_name(key)?).join(format!("{stem}.wav")))
    }

    pub fn put_clip(&self, hash: &str, rate: u32, channels: &[Vec<f32>]) -> Result<()> {
        let path = self.clip_path(hash)?;
        if path.is_file() {
            return Ok(());
        }
        write_f32(&path, rate, channels)
    }

    pub fn get_clip(&self, hash: &str) -> Result<(u32, Vec<Vec<f32>>)> {
        read_f32(&self.clip_path(hash)?)
    }

    pub fn has_stems(&self, key: &str) -> bool {
        crate::STEMS.iter().all(|s| self.stem_path(key, s).is_ok_and(|p| p.is_file()))
    }

    pub fn put_stems(&self, key: &str, rate: u32, stems: &[Vec<Vec<f32>>]) -> Result<()> {
        for (stem, audio) in crate::STEMS.iter().zip(stems) {
            write_f32(&self.stem_path(key, stem)?, rate, audio)?;
        }
        Ok(())
    }

    /// The four stems of a render, each planar stereo at `rate`.
    pub fn get_stems(&self, key: &str) -> Result<(u32, Vec<Vec<Vec<f32>>>)> {
        let mut out = Vec::with_capacity(STEM_COUNT);
        let mut rate = 0;
        for stem in crate::STEMS {
            let (r, audio) = read_f32(&self.stem_path(key, stem)?)?;
            rate = r;
            out.push(audio);
        }
        Ok((rate, out))
    }
}

/// A clip hash or render key as the cache uses it: 8 to 64 lowercase hex digits. Keys come back
/// from saved plugin state, which a damaged or hostile project can hold; anything else (a path,
/// `..`) would reach outside the cache folder.
fn checked_name(name: &str) -> Result<&str> {
    if (8..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(name)
    } else {
        bail!("the project names a cache entry '{}' that is not a cache key (damaged project state?)", name.escape_debug())
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
    let mut r = hound::WavReader::open(path).with_context(|| format!("cannot read cache file {} (missing or damaged)", path.display()))?;
    let spec = r.spec();
    if spec.sample_format != hound::SampleFormat::Float || spec.bits_per_sample != 32 {
        bail!("cache file {} is not 32-bit float; delete it", path.display());
    }
    let n = spec.channels as usize;
    if n == 0 {
        bail!("cache file {} has no channels; delete it", path.display());
    }
    // The header's sample count is only a claim: reserve no more than the file can hold.
    let on_disk = std::fs::metadata(path).map(|m| m.len() / 4).unwrap_or(0);
    let claimed = (r.len() as u64).min(on_disk) as usize;
    let mut channels = vec![Vec::with_capacity(claimed / n); n];
    for (i, s) in r.samples::<f32>().enumerate() {
        channels[i % n].push(s.with_context(|| format!("cache file {} is damaged", path.display()))?);
    }
    Ok((spec.sample_rate, channels))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys from saved state never reach outside the cache folder.
    #[test]
    fn keys_that_are_not_cache_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::at(dir.path().join("cache"));
        let key = render_key(&["a"]);
        cache.put_stems(&key, 48_000, &vec![vec![vec![0.5f32; 10]; 2]; 4]).unwrap();
        assert!(cache.has_stems(&key) && cache.get_stems(&key).is_ok());
        for bad in ["../../etc", "/etc", "", "0123456789abcdeg", "ABCDEF0123", &"a".repeat(65), "abcd\u{0}efgh"] {
            assert!(!cache.has_stems(bad));
            let e = cache.get_stems(bad).unwrap_err().to_string();
            assert!(e.contains("not a cache key"), "{bad:?}: {e}");
            assert!(cache.get_clip(bad).is_err() && cache.put_clip(bad, 48_000, &[vec![0.0]]).is_err());
        }
    }

    /// A cache file whose header claims far more samples than it holds is read without
    /// reserving what the header claims (4 GiB here), and one without channels is refused.
    #[test]
    fn damaged_cache_files_are_bounded_by_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let wav = |channels: u16, data_len: u32, samples: usize| {
            let mut b = Vec::new();
            b.extend(b"RIFF");
            b.extend(&(36 + data_len).to_le_bytes());
            b.extend(b"WAVEfmt ");
            b.extend(&16u32.to_le_bytes());
            b.extend(&3u16.to_le_bytes());
            b.extend(&channels.to_le_bytes());
            b.extend(&48_000u32.to_le_bytes());
            b.extend(&(48_000 * 4 * channels.max(1) as u32).to_le_bytes());
            b.extend(&(4 * channels.max(1)).to_le_bytes());
            b.extend(&32u16.to_le_bytes());
            b.extend(b"data");
            b.extend(&data_len.to_le_bytes());
            for i in 0..samples {
                b.extend(&(i as f32).to_le_bytes());
            }
            b
        };
        let path = dir.path().join("lying.wav");
        std::fs::write(&path, wav(2, (u32::MAX - 64) & !7, 8)).unwrap();
        match read_f32(&path) {
            Ok((_, ch)) => assert!(ch.iter().all(|c| c.capacity() <= 16), "reserved {:?}", ch.iter().map(Vec::capacity).collect::<Vec<_>>()),
            Err(e) => assert!(format!("{e:#}").contains("damaged"), "{e:#}"),
        }
        let path = dir.path().join("none.wav");
        std::fs::write(&path, wav(0, 32, 8)).unwrap();
        assert!(read_f32(&path).is_err());
    }
}
