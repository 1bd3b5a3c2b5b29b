//! Music theory for the procedural songs: keys, diatonic chords and chord progressions.

use rand::Rng;
use serde::Serialize;

/// Pitch-class names (sharps).
pub const PITCH_NAMES: [&str; 12] = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];

/// Major or (natural/harmonic) minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Major,
    Minor,
}

/// A key: tonic pitch class (0 = C) and mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub tonic: u8,
    pub mode: Mode,
}

impl Key {
    /// Semitone offsets of the 7 scale degrees from the tonic.
    pub fn scale(&self) -> [u8; 7] {
        match self.mode {
            Mode::Major => [0, 2, 4, 5, 7, 9, 11],
            Mode::Minor => [0, 2, 3, 5, 7, 8, 10],
        }
    }

    /// Pitch classes of the scale.
    pub fn pitch_classes(&self) -> [u8; 7] {
        self.scale().map(|s| (self.tonic + s) % 12)
    }

    pub fn name(&self) -> String {
        let m = match self.mode {
            Mode::Major => "major",
            Mode::Minor => "minor",
        };
        format!("{} {}", PITCH_NAMES[self.tonic as usize], m)
    }

    /// The diatonic triad (or seventh chord) on scale degree `degree` (0-based, 0..7).
    /// In minor, the dominant (degree 4) is made major (harmonic minor), as is common practice.
    pub fn chord(&self, degree: usize, seventh: bool) -> Chord {
        let sc = self.scale();
        let d = degree % 7;
        let root = sc[d];
        let third = (sc[(d + 2) % 7] + 12 - root) % 12;
        let fifth = (sc[(d + 4) % 7] + 12 - root) % 12;
        let sev = (sc[(d + 6) % 7] + 12 - root) % 12;
        let mut quality = match (third, fifth) {
            (4, 7) => Quality::Major,
            (3, 7) => Quality::Minor,
            (3, 6) => Quality::Diminished,
            _ => Quality::Major,
        };
        let mut seventh_iv = sev;
        if self.mode == Mode::Minor && d == 4 {
            quality = Quality::Major;
            seventh_iv = 10;
        }
        if seventh {
            quality = match (quality, seventh_iv) {
                (Quality::Major, 11) => Quality::Major7,
                (Quality::Major, 10) => Quality::Dominant7,
                (Quality::Minor, 10) => Quality::Minor7,
                (Quality::Diminished, 10) => Quality::HalfDiminished7,
                (q, _) => q,
            };
        }
        Chord { root: (self.tonic + root) % 12, quality }
    }
}

/// Chord qualities used by the arranger.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    Major,
    Minor,
    Diminished,
    Major7,
    Minor7,
    Dominant7,
    HalfDiminished7,
    Sus4,
}

impl Quality {
    /// Intervals (semitones above the root) of the chord tones.
    pub fn intervals(&self) -> &'static [u8] {
        match self {
            Quality::Major => &[0, 4, 7],
            Quality::Minor => &[0, 3, 7],
            Quality::Diminished => &[0, 3, 6],
            Quality::Major7 => &[0, 4, 7, 11],
            Quality::Minor7 => &[0, 3, 7, 10],
            Quality::Dominant7 => &[0, 4, 7, 10],
            Quality::HalfDiminished7 => &[0, 3, 6, 10],
            Quality::Sus4 => &[0, 5, 7],
        }
    }

    fn suffix(&self) -> &'static str {
        match self {
            Quality::Major => "",
            Quality::Minor => "m",
            Quality::Diminished => "dim",
            Quality::Major7 => "maj7",
            Quality::Minor7 => "m7",
            Quality::Dominant7 => "7",
            Quality::HalfDiminished7 => "m7b5",
            Quality::Sus4 => "sus4",
        }
    }
}

/// A chord: root pitch class and quality.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chord {
    pub root: u8,
    pub quality: Quality,
}

impl Chord {
    pub fn name(&self) -> String {
        format!("{}{}", PITCH_NAMES[self.root as usize], self.quality.suffix())
    }

    /// Pitch classes of the chord tones, root first.
    pub fn pitch_classes(&self) -> Vec<u8> {
        self.quality.intervals().iter().map(|i| (self.root + i) % 12).collect()
    }

    /// The fifth above the root (perfect, or diminished for dim chords).
    pub fn fifth(&self) -> u8 {
        (self.root + self.quality.intervals()[2]) % 12
    }

    /// The lowest MIDI note >= `low` with pitch class `pc`.
    pub fn note_at_or_above(pc: u8, low: u8) -> u8 {
        let mut n = low;
        while n % 12 != pc {
            n += 1;
        }
        n
    }

    /// A close voicing: chord tones stacked upwards from the first chord tone >= `low`,
    /// starting at inversion `inversion`, `count` notes.
    pub fn voicing(&self, low: u8, inversion: usize, count: usize) -> Vec<u8> {
        let pcs = self.pitch_classes();
        let mut out = Vec::with_capacity(count);
        let mut prev = low.saturating_sub(1);
        for i in 0..count {
            let pc = pcs[(inversion + i) % pcs.len()];
            let n = Chord::note_at_or_above(pc, prev + 1);
            out.push(n);
            prev = n;
        }
        out
    }
}

/// Chord progressions as scale degrees (0-based), per mode. Each entry is one chord slot.
const MAJOR_PROGRESSIONS: &[&[usize]] = &[
    &[0, 4, 5, 3], // I V vi IV
    &[0, 3, 4, 3], // I IV V IV
    &[0, 5, 3, 4], // I vi IV V
    &[1, 4, 0, 5], // ii V I vi
    &[5, 3, 0, 4], // vi IV I V
    &[0, 3, 0, 4], // I IV I V
    &[0, 2, 3, 4], // I iii IV V
    &[3, 0, 4, 5], // IV I V vi
];
const MINOR_PROGRESSIONS: &[&[usize]] = &[
    &[0, 5, 2, 6], // i VI III VII
    &[0, 3, 4, 0], // i iv V i
    &[0, 6, 5, 6], // i VII VI VII
    &[0, 3, 6, 2], // i iv VII III
    &[0, 5, 3, 4], // i VI iv V
    &[3, 0, 6, 4], // iv i VII V
];

/// Draws a progression (list of degrees) for a mode.
pub fn draw_progression<R: Rng>(rng: &mut R, mode: Mode) -> Vec<usize> {
    let list = match mode {
        Mode::Major => MAJOR_PROGRESSIONS,
        Mode::Minor => MINOR_PROGRESSIONS,
    };
    list[rng.random_range(0..list.len())].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diatonic_chords_of_c_major_and_a_minor() {
        let c = Key { tonic: 0, mode: Mode::Major };
        let names: Vec<String> = (0..7).map(|d| c.chord(d, false).name()).collect();
        assert_eq!(names, ["C", "Dm", "Em", "F", "G", "Am", "Bdim"]);
        assert_eq!(c.chord(4, true).name(), "G7");
        assert_eq!(c.chord(0, true).name(), "Cmaj7");
        let a = Key { tonic: 9, mode: Mode::Minor };
        assert_eq!(a.chord(0, false).name(), "Am");
        assert_eq!(a.chord(4, false).name(), "E"); // harmonic-minor dominant
        assert_eq!(a.chord(5, false).name(), "F");
    }

    #[test]
    fn voicings_are_ascending_chord_tones() {
        let ch = Chord { root: 7, quality: Quality::Dominant7 };
        let v = ch.voicing(52, 1, 4);
        assert_eq!(v.len(), 4);
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        assert!(v[0] >= 52);
        for n in v {
            assert!(ch.pitch_classes().contains(&(n % 12)));
        }
    }
}
