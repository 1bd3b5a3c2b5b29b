//! The whole transcriber on synthetic plucked bass lines (the synthesiser-rendered songs are in
//! engine/tests/transcribe_synth.rs).

use super::*;
use crate::audio::{AudioBuffer, OutputPolicy};

/// A plucked-string tone: harmonics 1–6 with the 2nd loudest, decaying, a 3 ms attack and a
/// 15 ms release, added into `out` (interleaving handled by the caller).
fn pluck(out: &mut [f32], rate: u32, note: &Note) {
    let f0 = 440.0 * 2f64.powf((note.key as f64 - 69.0) / 12.0);
    let amp = (note.velocity as f64 / 127.0).powi(2) * 0.4;
    let start = (note.onset_s * rate as f64) as usize;
    let end = ((note.offset_s * rate as f64) as usize).min(out.len());
    let release = (0.015 * rate as f64) as usize;
    for i in start..(end + release).min(out.len()) {
        let t = (i - start) as f64 / rate as f64;
        let attack = (t / 0.003).min(1.0);
        let tail = if i >= end { 1.0 - (i - end) as f64 / release as f64 } else { 1.0 };
        let w = 2.0 * std::f64::consts::PI * f0 * t;
        let harmonics: f64 = [0.6, 1.0, 0.5, 0.3, 0.2, 0.1].iter().enumerate().map(|(h, a)| a * ((h + 1) as f64 * w).sin()).sum();
        out[i] += (amp * attack * tail * (-t * 2.5).exp() * harmonics) as f32;
    }
}

/// A line of eighths and quarters at 100 bpm with repeated notes, a rest, octave jumps and
/// velocity changes.
fn line() -> Vec<Note> {
    let eighth = 0.3;
    let keys = [28u8, 28, 28, 35, 40, 40, 0, 33, 45, 33, 31, 31, 43, 38, 26, 26];
    let mut notes = Vec::new();
    for (i, &k) in keys.iter().enumerate() {
        if k == 0 {
            continue;
        }
        let onset = 0.2 + i as f64 * eighth;
        let velocity = if i % 4 == 0 { 115 } else { 80 };
        notes.push(Note { onset_s: onset, offset_s: onset + eighth * 0.85, key: k, velocity });
    }
    notes
}

fn render(notes: &[Note], rate: u32, channels: usize) -> AudioBuffer {
    let len = ((notes.last().unwrap().offset_s + 0.5) * rate as f64) as usize;
    let mut mono = vec![0f32; len];
    for n in notes {
        pluck(&mut mono, rate, n);
    }
    // Stereo: the same line, slightly quieter on the right.
    let chans = (0..channels).map(|c| mono.iter().map(|v| v * (1.0 - 0.2 * c as f32)).collect()).collect();
    AudioBuffer::new(rate, chans)
}

#[test]
fn a_synthetic_bass_line_comes_back_note_for_note_at_any_rate() {
    let reference = line();
    for (rate, channels) in [(22_050, 1), (44_100, 2), (48_000, 1), (11_025, 1)] {
        let audio = render(&reference, rate, channels);
        let notes = transcribe(&audio, &TranscribeOptions::default()).unwrap();
        let s = score(&reference, &notes, &Tolerance::default());
        assert_eq!(s.matched, reference.len(), "{rate} Hz x {channels}: {notes:?}");
        assert_eq!(s.estimated, reference.len(), "{rate} Hz x {channels}: {notes:?}");
        // and with exact pitches and offsets too
        let exact = Tolerance { pitch_semitones: 0.0, ..Tolerance::default().with_offsets() };
        let strict = score(&reference, &notes, &exact);
        assert!(strict.f1() > 0.9, "{rate} Hz: strict F1 {} {notes:?}", strict.f1());
        // The default onset latency (tuned on GM bass samples, whose attack takes a while) puts
        // these instant attacks about 20 ms early, well inside the tolerance.
        assert!(s.mean_onset_error_s().abs() < 0.03, "onset bias {}", s.mean_onset_error_s());
        // louder notes get higher velocities
        let loud: Vec<u8> = notes.iter().zip(&reference).filter(|(_, r)| r.velocity == 115).map(|(n, _)| n.velocity).collect();
        let soft: Vec<u8> = notes.iter().zip(&reference).filter(|(_, r)| r.velocity == 80).map(|(n, _)| n.velocity).collect();
        assert!(loud.iter().min() > soft.iter().max(), "loud {loud:?} soft {soft:?}");
    }
}

#[test]
fn silence_gives_no_notes_and_quantisation_snaps_to_the_grid() {
    let silent = AudioBuffer::new(44_100, vec![vec![0.0; 44_100]; 2]);
    assert!(transcribe(&silent, &TranscribeOptions::default()).unwrap().is_empty());

    // At 100 bpm a sixteenth is 0.15 s; the line's onsets sit at 0.2 + k·0.3, so they snap to 0.15 + k·0.3.
    let reference = line();
    let audio = render(&reference, 22_050, 1);
    let opts = TranscribeOptions { bpm: Some(100.0), ..Default::default() };
    let notes = transcribe(&audio, &opts).unwrap();
    assert_eq!(notes.len(), reference.len());
    for n in &notes {
        let steps = n.onset_s / 0.15;
        assert!((steps - steps.round()).abs() < 1e-9, "{n:?} is off the grid");
        let len = (n.offset_s - n.onset_s) / 0.15;
        assert!((len - len.round()).abs() < 1e-9 && len >= 1.0, "{n:?}");
    }
    let s = score(&reference, &notes, &Tolerance::default());
    assert_eq!(s.matched, reference.len());
}

#[test]
fn transcribe_to_midi_writes_a_file_that_reads_back_and_guards_existing_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bass.mid");
    let reference = line();
    let audio = render(&reference, 44_100, 2);
    let opts = TranscribeOptions { bpm: Some(100.0), grid: 0, track_name: "Bass line".into(), ..Default::default() };
    let summary = transcribe_to_midi(&audio, &opts, &path).unwrap();
    assert_eq!(summary.notes, reference.len());
    assert_eq!((summary.lowest_key, summary.highest_key), (Some(26), Some(45)));
    assert!(!summary.quantized && summary.bpm == 100.0);
    assert!((summary.audio_s - audio.duration_s()).abs() < 1e-9);
    let tracks = read_midi(&path).unwrap();
    assert_eq!(tracks[0].name, "Bass line");
    let s = score(&reference, &tracks[0].notes, &Tolerance::default());
    assert_eq!(s.matched, reference.len());

    // an existing file is refused before any work, and left alone
    let before = std::fs::read(&path).unwrap();
    let err = transcribe_to_midi(&audio, &opts, &path).unwrap_err().to_string();
    assert!(err.contains("refusing") && err.contains("bass.mid"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
    let opts = TranscribeOptions { output: OutputPolicy::Overwrite, bpm: None, ..opts };
    transcribe_to_midi(&audio, &opts, &path).unwrap();
    assert_ne!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn bad_audio_and_settings_get_clear_errors() {
    let ok = AudioBuffer::new(22_050, vec![vec![0.0; 100]]);
    let err = |audio: &AudioBuffer, opts: &TranscribeOptions| format!("{:#}", transcribe(audio, opts).unwrap_err());
    let d = TranscribeOptions::default();
    assert!(err(&AudioBuffer::new(0, vec![vec![0.0; 10]]), &d).contains("sample rate 0 Hz"));
    assert!(err(&AudioBuffer::new(22_050, vec![]), &d).contains("no channels"));
    assert!(err(&AudioBuffer::new(22_050, vec![vec![0.0; 10], vec![0.0; 9]]), &d).contains("different lengths"));
    assert!(err(&AudioBuffer::new(22_050, vec![vec![0.0, f32::NAN]]), &d).contains("not a finite number"));
    assert!(err(&ok, &TranscribeOptions { bpm: Some(0.0), ..Default::default() }).contains("bpm"));
    assert!(err(&ok, &TranscribeOptions { bpm: Some(f64::NAN), ..Default::default() }).contains("bpm"));
    assert!(err(&ok, &TranscribeOptions { min_hz: 200.0, max_hz: 100.0, ..Default::default() }).contains("pitch range"));
    assert!(err(&ok, &TranscribeOptions { max_hz: 5000.0, ..Default::default() }).contains("bass"));
    assert!(err(&ok, &TranscribeOptions { grid: 1000, ..Default::default() }).contains("grid"));
    assert!(err(&ok, &TranscribeOptions { program: 200, ..Default::default() }).contains("program"));
}
