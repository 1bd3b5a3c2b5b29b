//! Export of the current stems as WAV files (never overwriting a file).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Worker;

impl Worker {
    pub(super) fn export(&mut self, dir: &Path) -> Result<String> {
        let Some(r) = &self.rendered else { anyhow::bail!("there are no stems yet: process a clip first") };
        let rate = if self.host_rate > 0 { self.host_rate } else { r.take.rate };
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
        let mut written = Vec::new();
        for (k, stem) in crate::STEMS.iter().enumerate() {
            let channels = msdm::audio::resample(&r.stems[k], r.take.rate, rate)?;
            let path = unique_path(dir, stem);
            msdm::audio::write_wav(
                &path,
                &msdm::audio::AudioBuffer { rate, channels },
                msdm::audio::SampleFormat::F32,
            )?;
            written.push(path.file_name().unwrap_or_default().to_string_lossy().into_owned());
        }
        self.shared.params.session.update(|s| s.export_dir = Some(dir.display().to_string()));
        Ok(format!("Exported {} at {} Hz to {}.", written.join(", "), rate, dir.display()))
    }
}

/// `dir/<stem>.wav`, or `dir/<stem>-2.wav`, ... if that exists (never overwrite silently).
fn unique_path(dir: &Path, stem: &str) -> PathBuf {
    let first = dir.join(format!("{stem}.wav"));
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|i| dir.join(format!("{stem}-{i}.wav")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

#[cfg(test)]
mod tests {
    use super::unique_path;

    #[test]
    fn export_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unique_path(dir.path(), "bass"), dir.path().join("bass.wav"));
        std::fs::write(dir.path().join("bass.wav"), b"x").unwrap();
        assert_eq!(unique_path(dir.path(), "bass"), dir.path().join("bass-2.wav"));
        std::fs::write(dir.path().join("bass-2.wav"), b"x").unwrap();
        assert_eq!(unique_path(dir.path(), "bass"), dir.path().join("bass-3.wav"));
    }
}
