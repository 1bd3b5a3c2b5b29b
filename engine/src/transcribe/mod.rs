//! Bass line to MIDI: monophonic transcription of a bass stem (separated, imputed, generated or
//! recorded) into notes and a Standard MIDI File.
//!
//! - [`entry`]: [`transcribe`] and [`transcribe_to_midi`], their options and input checks;
//! - [`note`]: the [`Note`] (seconds, key, velocity);
//! - [`tuning`]: the thresholds below, in one place;
//! - [`pitch`]: the audio as frames of YIN pitch, aperiodicity and two loudness envelopes;
//! - [`onsets`]: where the attack envelope rises (a new note, even on the same key);
//! - [`segment`]: frames into notes (onsets, offsets, key, velocity from loudness);
//! - [`quantize`](mod@quantize): optional snapping to a tempo grid;
//! - [`midi_file`]: writing the notes (midly), and reading any MIDI file's notes back in seconds;
//! - [`score`](mod@score): note precision, recall and F1 the mir_eval way, to measure all this
//!   against the MIDI the mini-Slakh synthesiser renders from;
//! - [`evaluate`](mod@evaluate): all of that over a mini-Slakh split's true bass stems.
//!
//! Files only import leaf-wards (entry → segment → onsets → pitch, all → note/tuning); this file
//! only declares and re-exports. The method and its measured accuracy and speed: docs/midi.md.

pub mod entry;
pub mod evaluate;
pub mod midi_file;
pub mod note;
pub mod onsets;
pub mod pitch;
pub mod quantize;
pub mod score;
pub mod segment;
pub mod tuning;

pub use entry::{transcribe, transcribe_to_midi, Summary, TranscribeOptions, DEFAULT_BPM, MIN_SAMPLE_RATE};
pub use midi_file::{read_midi, write_midi, MidiOptions, MidiTrackNotes};
pub use note::Note;
pub use quantize::quantize;
pub use score::{score, NoteScore, Tolerance};
pub use tuning::Tuning;

#[cfg(test)]
mod tests;
