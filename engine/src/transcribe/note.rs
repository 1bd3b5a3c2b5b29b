//! The note, the unit everything in this module produces or compares.

use serde::{Deserialize, Serialize};

/// One note, in seconds from the start of the audio.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Note {
    pub onset_s: f64,
    pub offset_s: f64,
    /// MIDI note number (60 = middle C; a bass's open E string is 28).
    pub key: u8,
    /// MIDI velocity, 1–127.
    pub velocity: u8,
}
