//! The song's form vocabulary, shared by the arranger and the bar patterns: styles, meters,
//! section kinds, stem indices and the MIDI clock. A leaf: the arranger and the patterns both use
//! it, neither is used by it.

use serde::Serialize;

/// MIDI ticks per quarter note.
pub const PPQ: u16 = 480;

/// Stem indices, in `crate::STEMS` order.
pub const BASS: usize = 0;
pub const DRUMS: usize = 1;
pub const GUITAR: usize = 2;
pub const PIANO: usize = 3;

/// Musical styles; each sets the meter, tempo range, grooves and preferred instruments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    Rock,
    Funk,
    Ballad,
    Shuffle,
    Bossa,
    Reggae,
    Disco,
    Waltz,
}

impl Style {
    pub const ALL: [Style; 8] =
        [Style::Rock, Style::Funk, Style::Ballad, Style::Shuffle, Style::Bossa, Style::Reggae, Style::Disco, Style::Waltz];

    /// Tempo range in beats per minute (the beat is a dotted quarter in 12/8).
    pub fn tempo_range(&self, meter: Meter) -> (f64, f64) {
        match (self, meter) {
            (Style::Rock, _) => (100.0, 140.0),
            (Style::Funk, _) => (88.0, 112.0),
            (Style::Ballad, Meter::TwelveEight) => (48.0, 62.0),
            (Style::Ballad, _) => (62.0, 80.0),
            (Style::Shuffle, _) => (70.0, 100.0),
            (Style::Bossa, _) => (120.0, 145.0),
            (Style::Reggae, _) => (70.0, 88.0),
            (Style::Disco, _) => (112.0, 128.0),
            (Style::Waltz, _) => (100.0, 160.0),
        }
    }
}

/// Meters: 4/4, 3/4 (waltz), 12/8 (shuffle feel: four dotted-quarter beats of three eighths).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Meter {
    #[serde(rename = "4/4")]
    FourFour,
    #[serde(rename = "3/4")]
    ThreeFour,
    #[serde(rename = "12/8")]
    TwelveEight,
}

impl Meter {
    pub fn beats(&self) -> u32 {
        match self {
            Meter::FourFour | Meter::TwelveEight => 4,
            Meter::ThreeFour => 3,
        }
    }
    /// Grid steps per beat: sixteenths in 4/4 and 3/4, eighths in 12/8.
    pub fn steps_per_beat(&self) -> u32 {
        match self {
            Meter::TwelveEight => 3,
            _ => 4,
        }
    }
    pub fn steps_per_bar(&self) -> u32 {
        self.beats() * self.steps_per_beat()
    }
    pub fn step_ticks(&self) -> u32 {
        match self {
            Meter::TwelveEight => PPQ as u32 / 2,
            _ => PPQ as u32 / 4,
        }
    }
    pub fn beat_ticks(&self) -> u32 {
        self.step_ticks() * self.steps_per_beat()
    }
    pub fn bar_ticks(&self) -> u32 {
        self.beat_ticks() * self.beats()
    }
    /// MIDI time signature (numerator, log2 denominator).
    pub fn time_signature(&self) -> (u8, u8) {
        match self {
            Meter::FourFour => (4, 2),
            Meter::ThreeFour => (3, 2),
            Meter::TwelveEight => (12, 3),
        }
    }
}

/// Song sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SectionKind {
    Intro,
    Verse,
    Chorus,
    Bridge,
    Outro,
}

/// GM percussion keys used by the drum patterns.
pub mod gm {
    pub const KICK: u8 = 36;
    pub const SIDE_STICK: u8 = 37;
    pub const SNARE: u8 = 38;
    pub const CLAP: u8 = 39;
    pub const FLOOR_TOM: u8 = 43;
    pub const CLOSED_HAT: u8 = 42;
    pub const PEDAL_HAT: u8 = 44;
    pub const LOW_TOM: u8 = 45;
    pub const OPEN_HAT: u8 = 46;
    pub const MID_TOM: u8 = 47;
    pub const HIGH_TOM: u8 = 50;
    pub const CRASH: u8 = 49;
    pub const RIDE: u8 = 51;
    pub const TAMBOURINE: u8 = 54;
    pub const COWBELL: u8 = 56;
    pub const SHAKER: u8 = 70;
}
