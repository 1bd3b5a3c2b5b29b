//! Bytes → the audio decoder (WAV/FLAC/MP3/OGG and whatever symphonia probes), with the default
//! limits. The format is found by probing, as for a file without an extension.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msdm::audio::{read_audio_bytes, ReadOptions};

fuzz_target!(|data: &[u8]| {
    let _ = read_audio_bytes(data.to_vec(), "fuzz-input", &ReadOptions::default());
});
