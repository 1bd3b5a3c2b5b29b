//! The entry points for the shells: [`transcribe`] (audio to notes) and [`transcribe_to_midi`]
//! (audio to a MIDI file), with their options and validation.

use super::midi_file::{self, write_midi, MidiOptions};
use super::note::Note;
use super::quantize::{self, quantize};
use super::tuning::Tuning;
use super::{pitch, segment};
use crate::audio::{resample, validate_samples, AudioBuffer, OutputPolicy, MAX_SAMPLE_RATE};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Lowest input rate accepted: below it a bass's pitch and attacks are not in the signal.
pub const MIN_SAMPLE_RATE: u32 = 4_000;

/// Settings of [`transcribe`] and [`transcribe_to_midi`].
#[derive(Clone, Debug)]
pub struct TranscribeOptions {
    /// Lowest fundamental searched, Hz (30: a five-string bass's low B is 30.9 Hz).
    pub min_hz: f64,
    /// Highest fundamental searched, Hz.
    pub max_hz: f64,
    /// Tempo in quarter notes per minute: written to the MIDI file, and notes are snapped to a
    /// grid of `grid` steps per quarter note. `None`: the notes keep their exact times, written
    /// at 120 bpm.
    pub bpm: Option<f64>,
    /// Grid steps per quarter note when `bpm` is given (4 = sixteenths); 0 writes the tempo but
    /// keeps exact times.
    pub grid: u32,
    /// Name of the MIDI track.
    pub track_name: String,
    /// GM program of the MIDI track, 0-based (33 = Electric Bass (finger)).
    pub program: u8,
    /// Whether [`transcribe_to_midi`] may replace an existing file.
    pub output: OutputPolicy,
    /// The segmenter's thresholds.
    pub tuning: Tuning,
}

impl Default for TranscribeOptions {
    fn default() -> Self {
        TranscribeOptions {
            min_hz: 30.0,
            max_hz: 400.0,
            bpm: None,
            grid: 4,
            track_name: "bass".into(),
            program: 33,
            output: OutputPolicy::Refuse,
            tuning: Tuning::default(),
        }
    }
}

/// The tempo a file without `bpm` is written at (MIDI's own default).
pub const DEFAULT_BPM: f64 = 120.0;

impl TranscribeOptions {
    /// Checks the settings, naming the bad one and its valid range.
    pub fn validate(&self) -> Result<()> {
        let nyquist_guard = pitch::ANALYSIS_RATE as f64 / 4.0;
        if !(self.min_hz.is_finite() && self.max_hz.is_finite() && self.min_hz >= 20.0 && self.max_hz > self.min_hz * 1.5) {
            bail!(
                "pitch range {}–{} Hz is invalid: need 20 Hz <= lowest and highest > 1.5 x lowest (e.g. 30–400 Hz for bass)",
                self.min_hz,
                self.max_hz
            );
        }
        if self.max_hz > nyquist_guard {
            bail!("highest pitch {} Hz is above the {nyquist_guard} Hz this transcriber analyses; it is meant for bass lines", self.max_hz);
        }
        if let Some(bpm) = self.bpm {
            if !(bpm.is_finite() && (20.0..=400.0).contains(&bpm)) {
                bail!("tempo {bpm} bpm is out of range: use 20 to 400 quarter notes per minute");
            }
        }
        if self.grid > 32 {
            bail!("grid of {} steps per quarter note is too fine: use 1 to 32 (4 = sixteenths), or 0 for no quantisation", self.grid);
        }
        if self.program > 127 {
            bail!("GM program {} is out of range: use 0 to 127", self.program);
        }
        Ok(())
    }

    fn yin(&self) -> pitch::YinParams {
        pitch::YinParams {
            min_hz: self.min_hz,
            max_hz: self.max_hz,
            threshold: self.tuning.yin_threshold,
            octave_margin: self.tuning.yin_octave_margin,
        }
    }

    /// The MIDI file settings these options imply.
    pub fn midi_options(&self) -> MidiOptions {
        MidiOptions {
            bpm: self.bpm.unwrap_or(DEFAULT_BPM),
            track_name: self.track_name.clone(),
            program: self.program,
            channel: 0,
        }
    }
}

/// Checks that `audio` can be transcribed: a rate in range, at least one channel, channels of
/// equal length, finite samples.
fn validate_audio(audio: &AudioBuffer) -> Result<()> {
    if audio.rate < MIN_SAMPLE_RATE || audio.rate > MAX_SAMPLE_RATE {
        bail!(
            "sample rate {} Hz is out of range: the transcriber reads {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz audio",
            audio.rate
        );
    }
    if audio.channels.is_empty() {
        bail!("the audio has no channels; give a mono or stereo bass stem");
    }
    let frames = audio.frames();
    if audio.channels.iter().any(|c| c.len() != frames) {
        bail!("the audio's channels have different lengths; give planar channels of equal length");
    }
    validate_samples(audio)
}

/// Transcribes the bass line in `audio` (any rate, mono or several channels, which are averaged)
/// into notes sorted by onset, one at a time. Silence gives no notes. With `opts.bpm` the notes
/// are snapped to the grid.
pub fn transcribe(audio: &AudioBuffer, opts: &TranscribeOptions) -> Result<Vec<Note>> {
    opts.validate()?;
    validate_audio(audio)?;
    let mono = audio.to_mono();
    let x = if audio.rate == pitch::ANALYSIS_RATE {
        mono
    } else {
        resample(&[mono], audio.rate, pitch::ANALYSIS_RATE)?.remove(0)
    };
    let frames = pitch::analyse(&x, pitch::ANALYSIS_RATE, &opts.yin());
    let mut notes = segment::segment(&frames, &opts.tuning);
    quantize::make_monophonic(&mut notes);
    Ok(match opts.bpm {
        Some(bpm) if opts.grid > 0 => quantize(&notes, bpm, opts.grid),
        _ => notes,
    })
}

/// What [`transcribe_to_midi`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub path: PathBuf,
    pub notes: usize,
    /// Length of the audio, seconds.
    pub audio_s: f64,
    /// Time spent transcribing (not writing), seconds.
    pub transcribe_s: f64,
    /// The tempo written.
    pub bpm: f64,
    /// Whether notes were snapped to the grid.
    pub quantized: bool,
    pub lowest_key: Option<u8>,
    pub highest_key: Option<u8>,
}

/// Transcribes `bass` and writes the notes to `path` as a Standard MIDI File (format 0, one track
/// named `opts.track_name`, tempo `opts.bpm` or 120). An existing `path` is refused unless
/// `opts.output` is [`OutputPolicy::Overwrite`], and that is checked before any work; the file is
/// written atomically.
pub fn transcribe_to_midi(bass: &AudioBuffer, opts: &TranscribeOptions, path: &Path) -> Result<Summary> {
    midi_file::check_output(path, opts.output)?;
    let started = Instant::now();
    let notes = transcribe(bass, opts)?;
    let transcribe_s = started.elapsed().as_secs_f64();
    write_midi(&notes, &opts.midi_options(), path, opts.output)?;
    Ok(Summary {
        path: path.to_path_buf(),
        notes: notes.len(),
        audio_s: bass.duration_s(),
        transcribe_s,
        bpm: opts.bpm.unwrap_or(DEFAULT_BPM),
        quantized: opts.bpm.is_some() && opts.grid > 0,
        lowest_key: notes.iter().map(|n| n.key).min(),
        highest_key: notes.iter().map(|n| n.key).max(),
    })
}

