//! Audio headers are claims: sample rates, channel counts and frame counts past the documented
//! caps are refused with a clear error before anything is sized by them (docs/fuzzing.md). See
//! fuzz_regressions.rs for what the fuzzers found.

use msdm::audio::{read_audio_bytes, ReadOptions, MAX_DECODED_SAMPLES};

/// A PCM WAV whose header says `rate`, `channels`, `bits` and a `data` chunk of `claimed` bytes,
/// followed by `actual` bytes of silence.
fn wav(rate: u32, channels: u16, bits: u16, claimed: u32, actual: usize) -> Vec<u8> {
    let align = channels * bits.div_ceil(8);
    let mut v = b"RIFF".to_vec();
    v.extend(claimed.saturating_add(36).to_le_bytes());
    v.extend(b"WAVEfmt ");
    v.extend(16u32.to_le_bytes());
    v.extend(1u16.to_le_bytes());
    v.extend(channels.to_le_bytes());
    v.extend(rate.to_le_bytes());
    v.extend((rate.wrapping_mul(align as u32)).to_le_bytes());
    v.extend(align.to_le_bytes());
    v.extend(bits.to_le_bytes());
    v.extend(b"data");
    v.extend(claimed.to_le_bytes());
    v.extend(vec![0x80u8; actual]);
    v
}

fn err(bytes: Vec<u8>) -> String {
    format!("{:#}", read_audio_bytes(bytes, "x.wav", &ReadOptions::default()).expect_err("should be refused"))
}

#[test]
fn the_helper_makes_a_readable_wav() {
    let a = read_audio_bytes(wav(8000, 2, 16, 400, 400), "ok.wav", &ReadOptions::default()).unwrap();
    assert_eq!((a.rate, a.channels.len(), a.channels[0].len()), (8000, 2, 100));
}

#[test]
fn a_header_claiming_more_samples_than_the_cap_is_refused_before_decoding() {
    // 8-bit mono at 768 kHz, a 4 GiB data chunk: 4,294,967,295 frames (93 minutes, under the
    // 3-hour duration limit) in a 1 KB file, more than MAX_DECODED_SAMPLES
    let e = err(wav(768_000, 1, 8, u32::MAX, 1000));
    assert!(e.contains("x.wav is too long: 4294967295 frames x 1 channels"), "{e}");
    assert!(e.contains(&format!("more than {MAX_DECODED_SAMPLES} samples (MAX_DECODED_SAMPLES")), "{e}");

    // the same claim at a rate within the duration limit but too many samples for stereo
    let e = err(wav(768_000, 2, 8, u32::MAX - 37, 1000));
    assert!(e.contains("MAX_DECODED_SAMPLES"), "{e}");

    // a claim under the caps in a short file: refused as truncated, without reserving the claim
    let e = err(wav(44_100, 2, 16, 400_000_000, 1000));
    assert!(e.contains("is truncated or damaged"), "{e}");
}

#[test]
fn implausible_rates_and_channel_counts_are_refused() {
    let e = err(wav(4_000_000_000, 1, 16, 1000, 1000));
    assert!(e.contains("sample rate field says 4000000000 Hz"), "{e}");
    assert!(e.contains("(MAX_SAMPLE_RATE)"), "{e}");
    // symphonia refuses many channels itself (no channel map); either way a clear error, no panic
    let e = err(wav(8000, 1000, 16, 4000, 4000));
    assert!(e.contains("channel"), "{e}");
}
