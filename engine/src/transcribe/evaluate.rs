//! Measuring the transcriber on a mini-Slakh split: every track's true bass stem (`bass.wav`) is
//! transcribed and scored against the bass track of the MIDI the synthesiser rendered it from
//! (`song.mid`), and the time it takes is recorded.

use super::entry::{transcribe, TranscribeOptions};
use super::midi_file;
use super::note::Note;
use super::score::{score, NoteScore, Tolerance};
use crate::audio::{read_audio, AudioBuffer};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Length of the excerpt each song's timing is also measured on (issue 16's budget: 12 s of
/// audio in at most 1 s).
pub const EXCERPT_S: f64 = 12.0;

/// One song's scores and timing.
#[derive(Clone, Debug, Serialize)]
pub struct SongResult {
    pub track: String,
    pub audio_s: f64,
    /// Wall time to transcribe the whole song, seconds.
    pub transcribe_s: f64,
    /// Wall time to transcribe its first [`EXCERPT_S`] seconds (None when it is shorter).
    pub excerpt_s: Option<f64>,
    /// Onset (and pitch) matching.
    pub notes: NoteScore,
    /// Onset, pitch and offset matching.
    pub notes_with_offsets: NoteScore,
}

/// The whole split's result.
#[derive(Clone, Debug, Serialize)]
pub struct SplitReport {
    pub split_dir: PathBuf,
    pub tolerance: Tolerance,
    pub songs: Vec<SongResult>,
    /// Tracks left out and why (e.g. a track without a bass part).
    pub skipped: Vec<(String, String)>,
}

impl SplitReport {
    /// Counts over all songs added up (every note weighs the same).
    pub fn pooled(&self) -> (NoteScore, NoteScore) {
        let mut a = NoteScore::default();
        let mut b = NoteScore::default();
        for s in &self.songs {
            a.add(&s.notes);
            b.add(&s.notes_with_offsets);
        }
        (a, b)
    }

    /// Mean over songs of (precision, recall, F1) (every song weighs the same).
    pub fn song_means(&self) -> (f64, f64, f64) {
        let n = self.songs.len().max(1) as f64;
        let sum = |f: &dyn Fn(&NoteScore) -> f64| self.songs.iter().map(|s| f(&s.notes)).sum::<f64>() / n;
        (sum(&|s| s.precision()), sum(&|s| s.recall()), sum(&|s| s.f1()))
    }

    /// Median and largest time to transcribe a 12 s excerpt, seconds.
    pub fn excerpt_times(&self) -> Option<(f64, f64)> {
        let mut t: Vec<f64> = self.songs.iter().filter_map(|s| s.excerpt_s).collect();
        if t.is_empty() {
            return None;
        }
        t.sort_by(f64::total_cmp);
        Some((t[t.len() / 2], t[t.len() - 1]))
    }

    /// Seconds of transcription per second of audio, over all songs.
    pub fn real_time_factor(&self) -> f64 {
        let audio: f64 = self.songs.iter().map(|s| s.audio_s).sum();
        self.songs.iter().map(|s| s.transcribe_s).sum::<f64>() / audio.max(1e-9)
    }
}

/// The reference notes of a synthesised track: the track named "bass" of its `song.mid`.
pub fn reference_bass(midi: &Path) -> Result<Vec<Note>> {
    let tracks = midi_file::read_midi(midi)?;
    match tracks.into_iter().find(|t| t.name == "bass") {
        Some(t) => Ok(t.notes),
        None => bail!("{} has no track named \"bass\"; is it a mini-Slakh song.mid?", midi.display()),
    }
}

/// Transcribes and scores every track of `split_dir` (`<split_dir>/<Track>/{bass.wav,song.mid}`),
/// at most `limit` of them in name order; tracks without a bass stem are skipped and listed.
/// `progress(done, total)` after each track.
pub fn evaluate_split(
    split_dir: &Path,
    limit: Option<usize>,
    opts: &TranscribeOptions,
    tolerance: &Tolerance,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<SplitReport> {
    opts.validate()?;
    if !split_dir.is_dir() {
        bail!(
            "{} is not a folder of tracks: make the split first with `msdm data synth -o DATA --split NAME`, \
             or pass --render N to render it",
            split_dir.display()
        );
    }
    let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(split_dir)
        .with_context(|| format!("listing {}", split_dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("song.mid").is_file())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!("no track folder with a song.mid in {}: is it a mini-Slakh split?", split_dir.display());
    }
    let mut report =
        SplitReport { split_dir: split_dir.to_path_buf(), tolerance: *tolerance, songs: Vec::new(), skipped: Vec::new() };
    let mut chosen = Vec::new();
    for (name, dir) in dirs {
        if chosen.len() == limit.unwrap_or(usize::MAX) {
            break;
        }
        if dir.join("bass.wav").is_file() {
            chosen.push((name, dir));
        } else {
            report.skipped.push((name, "no bass stem (the song has no bass part)".into()));
        }
    }
    progress(0, chosen.len());
    for (i, (name, dir)) in chosen.iter().enumerate() {
        let song = evaluate_track(name, dir, opts, tolerance).with_context(|| format!("evaluating {name}"))?;
        report.songs.push(song);
        progress(i + 1, chosen.len());
    }
    Ok(report)
}

fn evaluate_track(name: &str, dir: &Path, opts: &TranscribeOptions, tolerance: &Tolerance) -> Result<SongResult> {
    let reference = reference_bass(&dir.join("song.mid"))?;
    let audio = read_audio(&dir.join("bass.wav"))?;
    let started = Instant::now();
    let notes = transcribe(&audio, opts)?;
    let transcribe_s = started.elapsed().as_secs_f64();
    let excerpt_len = (EXCERPT_S * audio.rate as f64).round() as usize;
    let excerpt_s = if audio.frames() >= excerpt_len {
        let excerpt = AudioBuffer::new(audio.rate, audio.channels.iter().map(|c| c[..excerpt_len].to_vec()).collect());
        let started = Instant::now();
        transcribe(&excerpt, opts)?;
        Some(started.elapsed().as_secs_f64())
    } else {
        None
    };
    Ok(SongResult {
        track: name.to_string(),
        audio_s: audio.duration_s(),
        transcribe_s,
        excerpt_s,
        notes: score(&reference, &notes, tolerance),
        notes_with_offsets: score(&reference, &notes, &tolerance.with_offsets()),
    })
}
