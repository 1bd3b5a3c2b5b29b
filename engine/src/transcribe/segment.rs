//! Note segmentation: frames of pitch and loudness into notes (onset, offset, key, velocity).
//!
//! A note starts at an onset (a steep rise of the attack envelope), where voicing starts after
//! silence, or where the pitch moves to another semitone and stays there; it ends where the sound
//! stops being pitched (or falls below the silence gate) for longer than a short gap, or where the
//! next note starts. Its key is the median pitch of its voiced frames, skipping the attack, where
//! YIN's window still straddles the previous note.

use super::note::Note;
use super::onsets;
use super::pitch::{Frames, FLOOR_DB};
use super::tuning::Tuning;

/// The loudest note gets this velocity; the others scale with the GM convention that a velocity
/// ratio v/127 sounds 40·log10(v/127) dB, so level differences come back as velocity differences.
pub const LOUDEST_VELOCITY: f32 = 110.0;
/// Window after the onset in which a note's level is measured, seconds.
const VELOCITY_WINDOW_S: f64 = 0.06;

/// MIDI note number of a frequency (A4 = 440 Hz = 69), fractional.
pub fn hz_to_midi(hz: f32) -> f32 {
    69.0 + 12.0 * (hz / 440.0).log2()
}

/// Frames into notes. Velocities follow the notes' levels relative to the loudest note.
pub fn segment(fr: &Frames, tuning: &Tuning) -> Vec<Note> {
    let n = fr.len();
    if n == 0 {
        return Vec::new();
    }
    let frames = |s: f64| ((s / fr.hop_s).round() as usize).max(1);
    let loudest = fr.level_db.iter().cloned().fold(FLOOR_DB, f32::max);
    let gate = (loudest - tuning.gate_db).max(tuning.floor_dbfs);
    let voiced: Vec<bool> =
        (0..n).map(|t| fr.level_db[t] > gate && fr.aperiodicity[t] <= tuning.voicing && fr.f0_hz[t] > 0.0).collect();
    let pitch: Vec<f32> = fr.f0_hz.iter().map(|&f| if f > 0.0 { hz_to_midi(f) } else { 0.0 }).collect();
    let onsets = onsets::detect(fr, gate, tuning);

    let confirm = frames(tuning.pitch_confirm_s);
    let max_gap = frames(tuning.max_gap_s);
    let min_frames = frames(tuning.min_note_s);
    let skip = (tuning.attack_skip_s / fr.hop_s).round() as usize;
    let settle = (tuning.pitch_settle_s / fr.hop_s).round() as usize;
    let max_attack = frames(tuning.max_unpitched_attack_s);
    let mut notes = Vec::new();
    let mut cur: Option<Building> = None;
    let mut next_onset = onsets.iter().peekable();
    for t in 0..n {
        if let Some(o) = next_onset.next_if(|o| o.frame == t) {
            if let Some(b) = cur.take() {
                b.close(fr, min_frames, skip, tuning, &mut notes);
            }
            cur = Some(Building { onset_s: Some(o.time_s), ..Building::new(t) });
        }
        if voiced[t] {
            let split = match &cur {
                Some(b) if b.pitches.len() > skip + 1 => {
                    let reference = b.median_pitch(skip);
                    let lasts = (t..(t + confirm).min(n)).all(|k| voiced[k] && (pitch[k] - reference).abs() >= tuning.pitch_change);
                    lasts && t + confirm <= n && same_semitone(&pitch[t..t + confirm])
                }
                _ => false,
            };
            if split {
                let b = cur.take().expect("split implies a note");
                if t < b.start + settle || b.pitches.len() < min_frames + skip {
                    // Too soon after the start to be a note of its own: the attack's first frames;
                    // start the pitch over.
                    cur = Some(Building { pitches: Vec::new(), ..b });
                } else {
                    b.close(fr, min_frames, skip, tuning, &mut notes);
                }
            }
            let b = cur.get_or_insert_with(|| Building::new(t));
            b.pitches.push(pitch[t]);
            b.last_voiced = Some(t);
        } else if let Some(b) = &cur {
            // A note whose pitch stopped (or that never became pitched) ends after the gap.
            let since = t - b.last_voiced.unwrap_or(b.start);
            if since > if b.last_voiced.is_none() { max_attack } else { max_gap } {
                if let Some(b) = cur.take() {
                    b.close(fr, min_frames, skip, tuning, &mut notes);
                }
            }
        }
    }
    if let Some(b) = cur.take() {
        b.close(fr, min_frames, skip, tuning, &mut notes);
    }
    with_velocities(notes)
}

/// True when every pitch rounds to the same semitone as the first (a held new note, not a slide
/// or a glitch).
fn same_semitone(p: &[f32]) -> bool {
    p.iter().all(|&x| (x - p[0]).abs() < 0.5)
}

/// A note being collected.
struct Building {
    start: usize,
    /// The detected onset time; None when the note started with voicing or a pitch change.
    onset_s: Option<f64>,
    pitches: Vec<f32>,
    last_voiced: Option<usize>,
}

impl Building {
    fn new(start: usize) -> Self {
        Building { start, onset_s: None, pitches: Vec::new(), last_voiced: None }
    }

    /// Median of the pitches after the attack (all of them for a short note).
    fn median_pitch(&self, skip: usize) -> f32 {
        let from = if self.pitches.len() > 2 * skip { skip } else { 0 };
        let mut p = self.pitches[from..].to_vec();
        p.sort_by(f32::total_cmp);
        p[p.len() / 2]
    }

    /// Appends the finished note and its level (dB) to `out`, unless it is too short.
    fn close(self, fr: &Frames, min_frames: usize, skip: usize, tuning: &Tuning, out: &mut Vec<(Note, f32)>) {
        let Some(last) = self.last_voiced else { return };
        if self.pitches.len() < min_frames {
            return;
        }
        let key = self.median_pitch(skip).round();
        if !(0.0..=127.0).contains(&key) {
            return;
        }
        let onset = (self.onset_s.unwrap_or(fr.time(self.start)) - tuning.onset_latency_s).max(0.0);
        let offset = (release_start(fr, self.start, last, tuning) - tuning.offset_latency_s).max(onset + fr.hop_s);
        // Level: the loudest frame in the first moments of the note.
        let end = (self.start + (VELOCITY_WINDOW_S / fr.hop_s).ceil() as usize).min(last + 1).max(self.start + 1);
        let level = fr.level_db[self.start..end.min(fr.len())].iter().cloned().fold(FLOOR_DB, f32::max);
        out.push((Note { onset_s: onset, offset_s: offset, key: key as u8, velocity: 0 }, level));
    }
}

/// When the note between frames `start` and `last` (its last pitched frame) was let go: the first
/// frame after its loudest where the level has fallen `offset_drop_db` below the highest level of
/// the preceding 50 ms. A released note keeps sounding (and stays pitched) for a while as the
/// instrument's release fades, but it falls much faster than a held note decays. The end of the
/// pitched sound when no such fall comes first.
fn release_start(fr: &Frames, start: usize, last: usize, tuning: &Tuning) -> f64 {
    let lookback = ((0.05 / fr.hop_s).round() as usize).max(1);
    let peak = (start..=last).max_by(|&a, &b| fr.level_db[a].total_cmp(&fr.level_db[b])).unwrap_or(start);
    for t in peak + 1..=last {
        let recent = fr.level_db[t.saturating_sub(lookback).max(peak)..t].iter().cloned().fold(FLOOR_DB, f32::max);
        if fr.level_db[t] < recent - tuning.offset_drop_db {
            return fr.time(t);
        }
    }
    fr.time(last + 1)
}

/// Velocities from levels: the loudest note gets [`LOUDEST_VELOCITY`], a note `x` dB quieter
/// `LOUDEST_VELOCITY · 10^(−x/40)`.
fn with_velocities(notes: Vec<(Note, f32)>) -> Vec<Note> {
    let loudest = notes.iter().map(|n| n.1).fold(f32::NEG_INFINITY, f32::max);
    notes
        .into_iter()
        .map(|(note, level)| {
            let v = LOUDEST_VELOCITY * 10f32.powf((level - loudest) / 40.0);
            Note { velocity: v.round().clamp(1.0, 127.0) as u8, ..note }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames by hand: each entry (f0, aperiodicity, level, onset level) repeated `k` times.
    fn frames(parts: &[(f32, f32, f32, f32, usize)]) -> Frames {
        let mut fr = Frames { hop_s: 0.005, ..Default::default() };
        for &(f0, ap, level, onset, k) in parts {
            for _ in 0..k {
                fr.f0_hz.push(f0);
                fr.aperiodicity.push(ap);
                fr.level_db.push(level);
                fr.onset_db.push(onset);
            }
        }
        fr
    }

    /// The defaults without the onset latency calibrated on GM samples, so times are exact here.
    fn exact() -> Tuning {
        Tuning { onset_latency_s: 0.0, ..Tuning::default() }
    }

    #[test]
    fn a_pitch_change_and_a_silence_make_three_notes() {
        // A2 for 100 ms, D3 for 100 ms, silence, E2 for 100 ms (quieter by 8 dB)
        let fr = frames(&[
            (0.0, 1.0, FLOOR_DB, FLOOR_DB, 10),
            (110.0, 0.05, -20.0, -30.0, 20),
            (146.83, 0.05, -20.0, -30.0, 20),
            (0.0, 1.0, FLOOR_DB, FLOOR_DB, 20),
            (82.41, 0.05, -28.0, -38.0, 20),
            (0.0, 1.0, FLOOR_DB, FLOOR_DB, 10),
        ]);
        let notes = segment(&fr, &exact());
        let keys: Vec<u8> = notes.iter().map(|n| n.key).collect();
        assert_eq!(keys, [45, 50, 40], "{notes:?}");
        assert!((notes[0].onset_s - 0.05).abs() < 0.011, "{notes:?}");
        assert!((notes[1].onset_s - 0.15).abs() < 0.011, "{notes:?}");
        assert!((notes[2].onset_s - 0.35).abs() < 0.011, "{notes:?}");
        assert!((notes[0].offset_s - 0.15).abs() < 0.011 && (notes[2].offset_s - 0.45).abs() < 0.011, "{notes:?}");
        assert_eq!(notes[0].velocity, LOUDEST_VELOCITY as u8);
        // 8 dB quieter: 110 * 10^(-8/40) = 69.4
        assert_eq!(notes[2].velocity, 69);
    }

    #[test]
    fn a_repeated_note_is_split_at_its_attack() {
        let fr = frames(&[
            (55.0, 0.05, -20.0, -20.0, 30),
            (55.0, 0.05, -24.0, -36.0, 10), // decaying
            (55.0, 0.05, -20.0, -20.0, 30), // struck again: the attack envelope jumps 16 dB
        ]);
        let notes = segment(&fr, &exact());
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(notes.iter().all(|n| n.key == 33));
        assert!((notes[1].onset_s - 0.2).abs() < 0.011, "{notes:?}");
    }

    #[test]
    fn glitches_unpitched_sound_and_quiet_hum_make_no_notes() {
        let fr = frames(&[
            (55.0, 0.05, -20.0, -20.0, 40),
            (110.0, 0.05, -20.0, -20.0, 2), // a two-frame octave glitch inside a note
            (55.0, 0.05, -20.0, -20.0, 40),
            (0.0, 1.0, FLOOR_DB, FLOOR_DB, 10),
            (300.0, 0.8, -20.0, -20.0, 40), // noise
            (0.0, 1.0, FLOOR_DB, FLOOR_DB, 10),
            (55.0, 0.05, -90.0, -90.0, 40), // below the absolute floor
        ]);
        let notes = segment(&fr, &exact());
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!(notes[0].key, 33);
        assert!(segment(&Frames::default(), &Tuning::default()).is_empty());
    }
}
