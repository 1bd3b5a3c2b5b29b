//! Snapping notes to a tempo grid, and keeping a line monophonic.

use super::note::Note;

/// Sorts notes by onset and cuts each one where the next starts, so the line never has two notes
/// at once (a bass line is one voice, and a MIDI note-off must not end the next note of the same key).
pub fn make_monophonic(notes: &mut Vec<Note>) {
    notes.sort_by(|a, b| a.onset_s.total_cmp(&b.onset_s).then(a.key.cmp(&b.key)));
    for i in 1..notes.len() {
        let next_onset = notes[i].onset_s;
        let prev = &mut notes[i - 1];
        if prev.offset_s > next_onset {
            prev.offset_s = next_onset;
        }
    }
    notes.retain(|n| n.offset_s > n.onset_s);
}

/// Moves onsets and offsets to the nearest step of a grid of `steps_per_beat` steps per quarter
/// note at `bpm` (4 = sixteenths). A note keeps at least one step; of two notes landing on the
/// same step the longer one stays. The result is monophonic.
pub fn quantize(notes: &[Note], bpm: f64, steps_per_beat: u32) -> Vec<Note> {
    let step = 60.0 / bpm / steps_per_beat as f64;
    let snap = |t: f64| (t / step).round() * step;
    let mut out: Vec<Note> = Vec::with_capacity(notes.len());
    let mut sorted = notes.to_vec();
    sorted.sort_by(|a, b| a.onset_s.total_cmp(&b.onset_s));
    for n in sorted {
        let onset = snap(n.onset_s);
        let offset = snap(n.offset_s).max(onset + step);
        let q = Note { onset_s: onset, offset_s: offset, ..n };
        match out.last_mut() {
            Some(last) if (last.onset_s - onset).abs() < step / 2.0 => {
                if n.offset_s - n.onset_s > last.offset_s - last.onset_s {
                    *last = q;
                }
            }
            _ => out.push(q),
        }
    }
    make_monophonic(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(on: f64, off: f64, key: u8) -> Note {
        Note { onset_s: on, offset_s: off, key, velocity: 90 }
    }

    #[test]
    fn notes_land_on_sixteenths_at_120_bpm() {
        // sixteenth = 0.125 s
        let q = quantize(&[note(0.01, 0.23, 40), note(0.26, 0.30, 43), note(0.49, 0.51, 45)], 120.0, 4);
        let got: Vec<(f64, f64, u8)> = q.iter().map(|n| (n.onset_s, n.offset_s, n.key)).collect();
        assert_eq!(got, [(0.0, 0.25, 40), (0.25, 0.375, 43), (0.5, 0.625, 45)]);
    }

    #[test]
    fn two_notes_on_one_step_keep_the_longer_and_overlaps_are_cut() {
        let q = quantize(&[note(0.99, 1.02, 40), note(1.03, 1.6, 41), note(1.5, 2.0, 43)], 120.0, 4);
        let got: Vec<(f64, f64, u8)> = q.iter().map(|n| (n.onset_s, n.offset_s, n.key)).collect();
        assert_eq!(got, [(1.0, 1.5, 41), (1.5, 2.0, 43)]);
        let mut m = vec![note(0.5, 0.9, 40), note(0.0, 0.6, 38), note(0.9, 0.9, 41)];
        make_monophonic(&mut m);
        let got: Vec<(f64, f64)> = m.iter().map(|n| (n.onset_s, n.offset_s)).collect();
        assert_eq!(got, [(0.0, 0.5), (0.5, 0.9)]);
    }
}
