//! A look at a WAV or AIFF header before symphonia reads it. symphonia 0.5 asserts (panics) on a
//! sample rate of 0 in these headers (`TimeBase::new`, found by fuzzing), so the rate is checked
//! here first and refused with a clear message; anything this does not understand is left to
//! symphonia's own checks.

use anyhow::{bail, Result};

/// How much of the file's start is looked at: symphonia's probe searches the start of a stream
/// for a format's marker (a WAV may start after junk bytes), so every marker in this much is checked.
pub const LOOK_BYTES: usize = 1 << 20;

/// Checks the sample rate in the `fmt ` chunk of every RIFF/WAVE header and the `COMM` chunk of
/// every AIFF/AIFC header that starts within `head`; other data passes.
pub fn check(head: &[u8], shown: &str) -> Result<()> {
    for at in 0..head.len() {
        let h = &head[at..];
        let rate = match h.get(..12) {
            Some([b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'A', b'V', b'E']) => wav_rate(h),
            Some([b'F', b'O', b'R', b'M', _, _, _, _, b'A', b'I', b'F', f]) if *f == b'F' || *f == b'C' => aiff_rate(h),
            _ => None,
        };
        if rate == Some(0) {
            bail!("cannot read {shown}: its header says the sample rate is 0 (the file is damaged); re-export or re-copy it");
        }
    }
    Ok(())
}

/// Where the data of the first chunk `id` starts (chunks after the 12-byte form header, sizes
/// little-endian in RIFF and big-endian in AIFF), if its header is within `head`.
fn chunk_data(head: &[u8], id: &[u8; 4], big_endian: bool) -> Option<usize> {
    let mut pos = 12usize;
    while let Some(h) = head.get(pos..pos + 8) {
        let raw: [u8; 4] = h[4..8].try_into().ok()?;
        let size = if big_endian { u32::from_be_bytes(raw) } else { u32::from_le_bytes(raw) } as usize;
        if &h[..4] == id {
            return Some(pos + 8);
        }
        pos = pos.checked_add(8)?.checked_add(size)?.checked_add(size & 1)?;
    }
    None
}

/// The sample rate of the first `fmt ` chunk, if it is within `head`.
fn wav_rate(head: &[u8]) -> Option<u32> {
    let at = chunk_data(head, b"fmt ", false)?;
    Some(u32::from_le_bytes(head.get(at + 4..at + 8)?.try_into().ok()?))
}

/// The sample rate of the `COMM` chunk (an 80-bit extended float), 0 when it is below 1 Hz.
fn aiff_rate(head: &[u8]) -> Option<u32> {
    let at = chunk_data(head, b"COMM", true)?;
    let ext = head.get(at + 8..at + 18)?;
    let exponent = (u16::from_be_bytes([ext[0], ext[1]]) & 0x7fff) as i32 - 16383;
    let mantissa = u64::from_be_bytes(ext[2..10].try_into().ok()?);
    if mantissa == 0 || exponent < 0 {
        return Some(0);
    }
    // rate = mantissa · 2^(exponent − 63); anything above u32 is not 0
    Some(if exponent >= 63 { u32::MAX } else { (mantissa >> (63 - exponent)).min(u32::MAX as u64) as u32 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32) -> Vec<u8> {
        let mut b = b"RIFF\x24\x00\x00\x00WAVEJUNK\x02\x00\x00\x00ab".to_vec();
        b.extend(b"fmt \x10\x00\x00\x00\x01\x00\x02\x00");
        b.extend(rate.to_le_bytes());
        b.extend([0u8; 8]);
        b
    }

    fn aiff(rate_ext: [u8; 10]) -> Vec<u8> {
        let mut b = b"FORM\x00\x00\x00\x30AIFFCOMM\x00\x00\x00\x12\x00\x02\x00\x00\x00\x10\x00\x10".to_vec();
        b.extend(rate_ext);
        b
    }

    #[test]
    fn a_zero_sample_rate_is_refused_and_real_rates_pass() {
        assert!(check(&wav(44_100), "a.wav").is_ok());
        let e = check(&wav(0), "a.wav").unwrap_err().to_string();
        assert!(e.contains("a.wav") && e.contains("sample rate is 0"), "{e}");
        // 44,100 Hz as an 80-bit float: exponent 16383 + 15, mantissa 0xAC44 << 48
        let mut r = [0u8; 10];
        r[..2].copy_from_slice(&(16383u16 + 15).to_be_bytes());
        r[2..].copy_from_slice(&(0xAC44u64 << 48).to_be_bytes());
        assert_eq!(aiff_rate(&aiff(r)), Some(44_100));
        assert!(check(&aiff(r), "a.aif").is_ok());
        assert!(check(&aiff([0; 10]), "a.aif").is_err());
        // a header after junk bytes (symphonia's probe finds it there too)
        let mut late = b"junk".to_vec();
        late.extend(wav(0));
        assert!(check(&late, "a.wav").is_err());
        // not WAV/AIFF, truncated or chunk sizes that overflow: left to symphonia
        assert!(check(b"OggS", "x").is_ok() && check(&wav(0)[..20], "x").is_ok());
        let mut huge = wav(0);
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(check(&huge, "x").is_ok());
    }
}
