//! Data: the multi-source training/evaluation datasets (Slakh2100 layout, spec §3) and a procedural
//! multitrack song generator ("mini-Slakh") for training and testing without Slakh.
//!
//! - [`synth`]: procedural songs rendered through a GM SoundFont, one synthesizer per stem;
//! - [`dataset`]: [`MultiSourceDataset`] (training items of L samples with random shift) and
//!   [`ChunkedTracks`] (non-overlapping evaluation chunks);
//! - [`wav`]: header probing and windowed mono reads of the 22,050 Hz stem files.

pub mod dataset;
pub mod synth;
pub mod wav;

pub use dataset::{Chunk, ChunkedTracks, MultiSourceDataset, TrackEntry};
pub use synth::{synthesize, SynthOptions, SynthReport};
