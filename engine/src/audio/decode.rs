//! Decoding audio files (WAV 16/24/32-bit int and 32-bit float, FLAC, MP3, OGG Vorbis, and
//! whatever else symphonia recognises) into an [`AudioBuffer`].
//!
//! Behaviour on damaged input (the safe choice: never hand back silently shortened audio):
//! - a decode error in the middle of the stream is an error, not a shorter result;
//! - a file whose header gives an exact length (WAV/AIFF PCM, FLAC, ALAC, Ogg Vorbis, MP3 with a
//!   LAME tag) but that decodes to fewer frames is reported as *truncated or damaged* (with both
//!   durations): symphonia's demuxers skip damaged frames and stop quietly at a short end, so this
//!   count is how we catch both. Set [`ReadOptions::allow_truncated`] to accept the frames that
//!   could be decoded instead;
//! - audio without samples, non-finite samples (NaN/Inf) and audio longer than
//!   [`ReadOptions::max_duration_s`] are refused.
//!
//! MP3 (LAME tag) and Vorbis encoder delay/padding are removed (gapless decoding) so decoded audio
//! lines up in time with the original and has its length.

use super::AudioBuffer;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::Path;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{
    CodecParameters, DecoderOptions, CODEC_TYPE_NULL, CODEC_TYPE_VORBIS,
};
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Formats we promise to read (symphonia may read more).
const SUPPORTED: &str = "WAV, FLAC, MP3 and OGG Vorbis";

/// Limits and leniency for [`read_audio_with`].
#[derive(Clone, Debug)]
pub struct ReadOptions {
    /// Refuse audio longer than this many seconds (default 3 hours).
    pub max_duration_s: f64,
    /// Accept a file that decodes to fewer frames than its header promises (cut short, or with
    /// damaged frames the demuxer skipped), keeping the frames that could be decoded (default
    /// `false`: such a file is an error). A decoder error is an error either way.
    pub allow_truncated: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            max_duration_s: 3.0 * 3600.0,
            allow_truncated: false,
        }
    }
}

/// Reads an audio file with [`ReadOptions::default`]. See [`read_audio_with`].
pub fn read_audio(path: &Path) -> Result<AudioBuffer> {
    read_audio_with(path, &ReadOptions::default())
}

/// Reads an audio file at its own sample rate and channel count into planar `f32` in [-1, 1].
///
/// Errors name the file, the problem and what to do: missing file, unknown or unreadable format,
/// corrupt or truncated data, no samples, NaN/Inf samples, or audio longer than
/// `opts.max_duration_s`.
pub fn read_audio_with(path: &Path, opts: &ReadOptions) -> Result<AudioBuffer> {
    let shown = path.display();
    if !path.exists() {
        bail!("audio file not found: {shown}; check the path");
    }
    if path.is_dir() {
        bail!("{shown} is a directory, not an audio file");
    }
    let file = File::open(path).with_context(|| format!("cannot open audio file {shown}"))?;
    let stream = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let format_opts = FormatOptions {
        enable_gapless: true,
        ..Default::default()
    };
    let probed = symphonia::default::get_probe()
        .format(&hint, stream, &format_opts, &MetadataOptions::default())
        .map_err(|e| match e {
            SymError::Unsupported(_) => anyhow::anyhow!(
                "cannot read {shown}: not a recognised audio file ({e}); supported formats are \
                 {SUPPORTED}; convert it, e.g. `ffmpeg -i <file> out.wav`"
            ),
            _ => anyhow::anyhow!(
                "cannot read {shown}: the file is damaged or truncated ({e}); re-export or \
                 re-copy it"
            ),
        })?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .with_context(|| format!("{shown} contains no audio track"))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot decode {shown}: unsupported codec ({e}); supported formats are {SUPPORTED}; \
                 convert it, e.g. `ffmpeg -i <file> out.wav`"
            )
        })?;

    let mut rate = params.sample_rate.unwrap_or(0);
    let check_length = |frames: u64, rate: u32| -> Result<()> {
        if rate > 0 && frames as f64 / rate as f64 > opts.max_duration_s {
            bail!(
                "{shown} is too long: {:.1} s or more of audio (the limit is {:.1} s); \
                 cut it into shorter pieces",
                frames as f64 / rate as f64,
                opts.max_duration_s
            );
        }
        Ok(())
    };
    if let Some(n) = params.n_frames {
        check_length(n, rate)?;
    }

    let mut channels: Vec<Vec<f32>> = Vec::new();
    let mut samples: Option<SampleBuffer<f32>> = None;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(SymError::ResetRequired) => bail!(
                "{shown}: the stream changes format part-way (chained stream); \
                 convert it to a plain WAV or FLAC first"
            ),
            Err(e) => bail!(
                "{shown} is damaged: cannot read past {} ({e}); re-export or re-copy it",
                at(&channels, rate)
            ),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            Err(e) => bail!(
                "{shown} is damaged: decoding failed at {} ({e}); re-export or re-copy it \
                 (or convert it, e.g. `ffmpeg -i <file> fixed.wav`, to keep what is readable)",
                at(&channels, rate)
            ),
        };
        let spec = *decoded.spec();
        let n_ch = spec.channels.count();
        if channels.is_empty() {
            // Reserve what the header promises, bounded by the duration limit.
            let limit = opts.max_duration_s.max(0.0) * spec.rate as f64;
            let expected = (params.n_frames.unwrap_or(0) as f64).min(limit + 1.0) as usize;
            channels = (0..n_ch).map(|_| Vec::with_capacity(expected)).collect();
            rate = spec.rate;
        } else if n_ch != channels.len() || spec.rate != rate {
            bail!("{shown}: the channel count or sample rate changes part-way; convert it first");
        }
        if decoded.frames() == 0 {
            continue;
        }
        let n = decoded.frames();
        let buf = match &mut samples {
            Some(b) if b.capacity() >= n * n_ch => b,
            _ => samples.insert(SampleBuffer::new(decoded.capacity().max(n) as u64, spec)),
        };
        buf.copy_planar_ref(decoded);
        for (c, plane) in channels.iter_mut().zip(buf.samples().chunks_exact(n)) {
            c.extend_from_slice(plane);
        }
        check_length(channels[0].len() as u64, rate)?;
    }

    // Ogg gives the exact length (last page's granule position), but symphonia 0.5 does not
    // trim the encoder padding from the final Vorbis packet: do it here.
    if let (Some(n), CODEC_TYPE_VORBIS) = (params.n_frames, params.codec) {
        channels.iter_mut().for_each(|c| c.truncate(n as usize));
    }
    let audio = AudioBuffer { rate, channels };
    if audio.frames() == 0 || rate == 0 {
        bail!("{shown} contains no audio samples (zero length); choose a file with audio in it");
    }
    if let Some(expected) = params.n_frames {
        let got = audio.frames() as u64;
        if got < expected && length_is_exact(&params) && !opts.allow_truncated {
            bail!(
                "{shown} is truncated or damaged: its header promises {:.3} s but only {:.3} s \
                 could be decoded ({got} of {expected} frames); re-export or re-copy it (or \
                 convert it, e.g. `ffmpeg -i <file> fixed.wav`, to keep the part that is readable)",
                expected as f64 / rate as f64,
                got as f64 / rate as f64
            );
        }
    }
    validate_samples(&audio).with_context(|| format!("{shown} has invalid samples"))?;
    Ok(audio)
}

/// Whether the header's frame count is exact, so that a shortfall means lost audio: lossless
/// codecs, Vorbis (Ogg granule positions) and MP3 with a LAME tag (it sets the encoder delay).
/// MP3 without one has only a bit-rate estimate, which is not trusted.
fn length_is_exact(params: &CodecParameters) -> bool {
    use symphonia::core::codecs::*;
    if params.codec == CODEC_TYPE_MP3 {
        return params.delay.is_some();
    }
    matches!(
        params.codec,
        CODEC_TYPE_VORBIS
            | CODEC_TYPE_FLAC
            | CODEC_TYPE_ALAC
            | CODEC_TYPE_PCM_S8
            | CODEC_TYPE_PCM_U8
            | CODEC_TYPE_PCM_S16LE
            | CODEC_TYPE_PCM_S16BE
            | CODEC_TYPE_PCM_S24LE
            | CODEC_TYPE_PCM_S24BE
            | CODEC_TYPE_PCM_S32LE
            | CODEC_TYPE_PCM_S32BE
            | CODEC_TYPE_PCM_F32LE
            | CODEC_TYPE_PCM_F32BE
            | CODEC_TYPE_PCM_F64LE
            | CODEC_TYPE_PCM_F64BE
    )
}

/// "12.345 s" for the current decode position.
fn at(channels: &[Vec<f32>], rate: u32) -> String {
    let frames = channels.first().map_or(0, Vec::len);
    format!("{:.3} s", frames as f64 / rate.max(1) as f64)
}

/// Checks every sample is finite; the error names the first bad sample's time and channel.
pub fn validate_samples(audio: &AudioBuffer) -> Result<()> {
    let first_bad = audio
        .channels
        .iter()
        .enumerate()
        .filter_map(|(c, ch)| ch.iter().position(|x| !x.is_finite()).map(|i| (i, c)))
        .min();
    if let Some((i, c)) = first_bad {
        let x = audio.channels[c][i];
        bail!(
            "sample {i} (at {:.6} s) of channel {} is {x}, not a finite number; \
             the audio is damaged: re-export it",
            i as f64 / audio.rate.max(1) as f64,
            c + 1
        );
    }
    Ok(())
}
