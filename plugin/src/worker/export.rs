//! Export of the current stems as WAV files and of the bass line as a MIDI file (never
//! overwriting a file).

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

    /// The current take's bass stem as `dir/bass.mid` (or `bass-2.mid`, ...), quantised to the
    /// host tempo the clip was captured at, if the host gave one.
    pub(super) fn export_midi(&mut self, dir: &Path) -> Result<String> {
        let Some(r) = &self.rendered else { anyhow::bail!("there are no stems yet: process a clip first") };
        let tempo = self.clip.as_ref().and_then(|c| c.info.tempo);
        let (path, notes) = write_bass_midi(&r.stems[0], r.take.rate, tempo, dir)?;
        self.shared.params.session.update(|s| s.export_dir = Some(dir.display().to_string()));
        let grid = tempo.map_or("exact times".to_string(), |t| format!("on a {t:.1} BPM sixteenth grid"));
        Ok(format!("Exported {notes} bass notes ({grid}) to {}.", path.display()))
    }
}

/// Transcribes a stereo bass stem at `rate` into a new MIDI file in `dir`; returns the file and
/// its note count.
fn write_bass_midi(bass: &[Vec<f32>], rate: u32, tempo: Option<f64>, dir: &Path) -> Result<(PathBuf, usize)> {
    use msdm::transcribe::{transcribe_to_midi, TranscribeOptions};
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))?;
    let path = unique_path_ext(dir, "bass", "mid");
    let audio = msdm::audio::AudioBuffer { rate, channels: bass.to_vec() };
    // Hosts report tempos outside the transcriber's 20-400 BPM range only when misconfigured.
    let bpm = tempo.filter(|t| (20.0..=400.0).contains(t));
    let summary = transcribe_to_midi(&audio, &TranscribeOptions { bpm, ..TranscribeOptions::default() }, &path)?;
    Ok((path, summary.notes))
}

/// `dir/<stem>.wav`, or `dir/<stem>-2.wav`, ... if that exists (never overwrite silently).
fn unique_path(dir: &Path, stem: &str) -> PathBuf {
    unique_path_ext(dir, stem, "wav")
}

fn unique_path_ext(dir: &Path, stem: &str, ext: &str) -> PathBuf {
    let first = dir.join(format!("{stem}.{ext}"));
    if !first.exists() {
        return first;
    }
    (2..)
        .map(|i| dir.join(format!("{stem}-{i}.{ext}")))
        .find(|p| !p.exists())
        .unwrap_or(first)
}

#[cfg(test)]
mod tests {
    use super::{unique_path, write_bass_midi};

    #[test]
    fn export_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(unique_path(dir.path(), "bass"), dir.path().join("bass.wav"));
        std::fs::write(dir.path().join("bass.wav"), b"x").unwrap();
        assert_eq!(unique_path(dir.path(), "bass"), dir.path().join("bass-2.wav"));
        std::fs::write(dir.path().join("bass-2.wav"), b"x").unwrap();
        assert_eq!(unique_path(dir.path(), "bass"), dir.path().join("bass-3.wav"));
    }

    /// A bass line of two notes (A1 then D2, 0.5 s each at 44.1 kHz) comes back as those notes,
    /// and a second export does not replace the first file.
    #[test]
    fn bass_midi_export_transcribes_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let rate = 44_100u32;
        // plucked notes: 5 ms attack, then an exponential decay (a hard cut would be a click)
        let tone = |hz: f64, n: usize| {
            (0..n).map(move |i| {
                let t = i as f64 / rate as f64;
                let env = (t / 0.005).min(1.0) * (-t * 4.0).exp() * (((n - i) as f64 / rate as f64) / 0.02).min(1.0);
                (0.5 * env * (2.0 * std::f64::consts::PI * hz * t).sin()) as f32
            })
        };
        let half = rate as usize / 2;
        let mono: Vec<f32> = tone(55.0, half).chain(tone(73.416, half)).chain(std::iter::repeat(0.0).take(half / 2)).collect();
        let bass = vec![mono.clone(), mono];
        let (path, notes) = write_bass_midi(&bass, rate, Some(120.0), dir.path()).unwrap();
        assert_eq!(path, dir.path().join("bass.mid"));
        let tracks = msdm::transcribe::read_midi(&path).unwrap();
        let keys: Vec<u8> = tracks.iter().flat_map(|t| t.notes.iter().map(|n| n.key)).collect();
        assert_eq!(notes, keys.len());
        assert_eq!(keys, vec![33, 38], "A1 then D2");
        let (second, _) = write_bass_midi(&bass, rate, None, dir.path()).unwrap();
        assert_eq!(second, dir.path().join("bass-2.mid"));
    }
}
