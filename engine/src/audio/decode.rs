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
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::{Hint, Probe};
use std::sync::OnceLock;

/// Highest sample rate accepted (768 kHz, the highest rate audio interfaces offer). Header fields
/// are claims: a larger one is refused before it is used to size anything.
pub const MAX_SAMPLE_RATE: u32 = 768_000;

/// Most channels accepted (32: beyond any surround or ambisonic mix one would separate).
pub const MAX_CHANNELS: usize = 32;

/// Most samples (frames x channels) decoded from one file: 2 hours of stereo at 192 kHz
/// (2,764,800,000 samples, 11 GB as f32 when read whole). It is checked against the header's
/// frame count before decoding and against the decoded count as decoding goes, so neither a lying
/// header nor a stream that decodes on and on can get past it.
pub const MAX_DECODED_SAMPLES: u64 = 2 * 3600 * 192_000 * 2;

/// Frames reserved up front for a codec whose frames' size in the file is unknown (compressed):
/// the header's frame count is only a claim, so buffers grow past this as audio really arrives.
const MAX_RESERVED_FRAMES: usize = 1 << 20;

/// symphonia's default probe without its AAC/ADTS reader: that reader's probe panics on a
/// 68-byte crafted file (subtract overflow in `approximate_frame_count`, symphonia 0.5.5; found
/// by the `audio_decode` fuzzer, tests/fixtures/fuzz/audio_decode/) and ADTS is not a format we
/// promise. Every other container symphonia knows is kept.
fn probe() -> &'static Probe {
    static PROBE: OnceLock<Probe> = OnceLock::new();
    PROBE.get_or_init(|| {
        use symphonia::default::formats::*;
        let mut probe = Probe::default();
        probe.register_all::<CafReader>();
        probe.register_all::<FlacReader>();
        probe.register_all::<IsoMp4Reader>();
        probe.register_all::<MpaReader>();
        probe.register_all::<AiffReader>();
        probe.register_all::<WavReader>();
        probe.register_all::<OggReader>();
        // Not MKV/WebM: symphonia 0.5.5's EBML reader subtracts with overflow on a damaged element
        // size (found by fuzzing; a panic under overflow checks, garbage sizes without), and no
        // producer hands us stems in Matroska.
        probe.register_all::<symphonia_metadata::id3v2::Id3v2Reader>();
        probe
    })
}

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
    read_all(AudioReader::open(path, opts)?, opts)
}

/// Decodes an audio file held in memory (e.g. by a fuzzer or a plugin host) with the checks of
/// [`read_audio_with`]; `name` names it in errors and its extension, if any, hints the format.
pub fn read_audio_bytes(bytes: Vec<u8>, name: &str, opts: &ReadOptions) -> Result<AudioBuffer> {
    let ext = Path::new(name).extension().and_then(|e| e.to_str()).map(str::to_string);
    let source = Box::new(std::io::Cursor::new(bytes));
    read_all(AudioReader::open_source(source, name.to_string(), ext.as_deref(), opts)?, opts)
}

fn read_all(mut reader: AudioReader, opts: &ReadOptions) -> Result<AudioBuffer> {
    let expected = reader
        .frames_hint()
        .unwrap_or(0)
        .min((opts.max_duration_s.max(0.0) * reader.rate() as f64) as usize + 1)
        .min(reader.reservable_frames());
    let mut channels: Vec<Vec<f32>> = Vec::new();
    while let Some(chunk) = reader.next_chunk()? {
        if channels.is_empty() {
            channels = chunk.iter().map(|_| Vec::with_capacity(expected)).collect();
        }
        for (c, part) in channels.iter_mut().zip(chunk) {
            c.extend(part);
        }
    }
    Ok(AudioBuffer { rate: reader.rate(), channels })
}

/// Runs symphonia code, turning a panic inside it into the error a damaged file gets.
fn unpanicked<T>(shown: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let why = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned()).unwrap_or_default();
        anyhow::anyhow!("cannot read {shown}: the file is damaged (the decoder stopped: {why}); re-export or re-copy it")
    })
}

/// An audio file decoded piece by piece, with the checks of [`read_audio_with`]: memory stays
/// flat however long the file is. [`next_chunk`](Self::next_chunk) returns `None` only after
/// the whole file decoded cleanly to the length its header promises.
pub struct AudioReader {
    shown: String,
    opts: ReadOptions,
    format: Box<dyn symphonia::core::formats::FormatReader>,
    decoder: Box<dyn symphonia::core::codecs::Decoder>,
    track_id: u32,
    params: CodecParameters,
    rate: u32,
    channels: usize,
    /// Frames handed out so far.
    frames: usize,
    samples: Option<SampleBuffer<f32>>,
    done: bool,
    /// A chunk decoded early to learn the rate or channel count the header did not give.
    peeked: Option<Vec<Vec<f32>>>,
    /// The file's size in bytes, if known: PCM cannot hold more frames than it has bytes for.
    source_len: Option<u64>,
}

impl AudioReader {
    /// Opens and probes `path` (see [`read_audio_with`] for the errors).
    pub fn open(path: &Path, opts: &ReadOptions) -> Result<Self> {
        let shown = path.display().to_string();
        if !path.exists() {
            bail!("audio file not found: {shown}; check the path");
        }
        if path.is_dir() {
            bail!("{shown} is a directory, not an audio file");
        }
        let file = File::open(path).with_context(|| format!("cannot open audio file {shown}"))?;
        Self::open_source(Box::new(file), shown, path.extension().and_then(|e| e.to_str()), opts)
    }

    /// Opens and probes audio from any source; `shown` names it in errors, `ext` hints the format.
    pub fn open_source(mut source: Box<dyn MediaSource>, shown: String, ext: Option<&str>, opts: &ReadOptions) -> Result<Self> {
        let source_len = source.byte_len();
        if source.is_seekable() {
            use std::io::{Read, Seek, SeekFrom};
            let mut head = Vec::with_capacity(super::header::LOOK_BYTES);
            (&mut source).take(super::header::LOOK_BYTES as u64).read_to_end(&mut head).with_context(|| format!("cannot read {shown}"))?;
            source.seek(SeekFrom::Start(0)).with_context(|| format!("cannot read {shown}"))?;
            super::header::check(&head, &shown)?;
        }
        let stream = MediaSourceStream::new(source, Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = ext {
            hint.with_extension(ext);
        }
        let format_opts = FormatOptions { enable_gapless: true, ..Default::default() };
        // symphonia 0.5 panics on some headers it should refuse (a WAV `fmt ` chunk with sample
        // rate 0 asserts in `TimeBase::new`, found by fuzzing): a panic while probing is a damaged
        // file, not a crash.
        let probed = unpanicked(&shown, || probe().format(&hint, stream, &format_opts, &MetadataOptions::default()))?
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
        let format = probed.format;
        let track = format
            .tracks()
            .iter()
            .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            .with_context(|| format!("{shown} contains no audio track"))?;
        let track_id = track.id;
        let params = track.codec_params.clone();
        let decoder = symphonia::default::get_codecs().make(&params, &DecoderOptions::default()).map_err(|e| {
            anyhow::anyhow!(
                "cannot decode {shown}: unsupported codec ({e}); supported formats are {SUPPORTED}; \
                 convert it, e.g. `ffmpeg -i <file> out.wav`"
            )
        })?;
        let reader = Self {
            rate: params.sample_rate.unwrap_or(0),
            channels: params.channels.map_or(0, |c| c.count()),
            shown,
            opts: opts.clone(),
            format,
            decoder,
            track_id,
            params,
            frames: 0,
            samples: None,
            done: false,
            peeked: None,
            source_len,
        };
        check_format(&reader.shown, reader.rate, reader.channels)?;
        if let Some(n) = reader.params.n_frames {
            reader.check_length(n)?;
        }
        if reader.rate == 0 || reader.channels == 0 {
            let mut reader = reader;
            reader.peeked = reader.next_chunk()?;
            return Ok(reader);
        }
        Ok(reader)
    }

    /// Sample rate (from the header; 0 if the header does not say and nothing was decoded yet).
    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Channel count (from the header; 0 if the header does not say and nothing was decoded yet).
    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The length the header gives, in frames, if it gives one.
    pub fn frames_hint(&self) -> Option<usize> {
        self.params.n_frames.map(|n| n as usize)
    }

    /// How many frames a buffer may reserve before audio arrives: PCM's frames are bounded by the
    /// file's size; other codecs get [`MAX_RESERVED_FRAMES`] and grow.
    fn reservable_frames(&self) -> usize {
        let bytes_per_frame = self.params.bits_per_sample.filter(|_| is_pcm(&self.params)).map(|b| (b as u64).div_ceil(8) * self.channels.max(1) as u64);
        match (bytes_per_frame, self.source_len) {
            (Some(b), Some(len)) if b > 0 => (len / b) as usize,
            _ => MAX_RESERVED_FRAMES,
        }
    }

    fn check_length(&self, frames: u64) -> Result<()> {
        let samples = frames.saturating_mul(self.channels.max(1) as u64);
        if samples > MAX_DECODED_SAMPLES {
            bail!(
                "{} is too long: {frames} frames x {} channels is more than {MAX_DECODED_SAMPLES} samples \
                 (MAX_DECODED_SAMPLES, 2 hours of stereo at 192 kHz); cut it into shorter pieces (or the header's frame count \
                 is damaged: re-export it)",
                self.shown,
                self.channels.max(1)
            );
        }
        if self.rate > 0 && frames as f64 / self.rate as f64 > self.opts.max_duration_s {
            bail!(
                "{} is too long: {:.1} s or more of audio (the limit is {:.1} s); cut it into shorter pieces",
                self.shown,
                frames as f64 / self.rate as f64,
                self.opts.max_duration_s
            );
        }
        Ok(())
    }

    /// "12.345 s" for the current decode position.
    fn at(&self) -> String {
        format!("{:.3} s", self.frames as f64 / self.rate.max(1) as f64)
    }

    /// The next decoded frames (planar, at least one frame), or `None` at the end of the file.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<Vec<f32>>>> {
        if let Some(chunk) = self.peeked.take() {
            return Ok(Some(chunk));
        }
        let shown = self.shown.clone();
        // The decoders are symphonia's; a panic inside one is a damaged file (see `unpanicked`).
        let out = unpanicked(&shown, || self.decode_chunk());
        if out.is_err() {
            self.done = true;
        }
        out?
    }

    fn decode_chunk(&mut self) -> Result<Option<Vec<Vec<f32>>>> {
        let shown = self.shown.clone();
        while !self.done {
            let packet = match self.format.next_packet() {
                Ok(p) => p,
                Err(SymError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    self.done = true;
                    break;
                }
                Err(SymError::ResetRequired) => bail!(
                    "{shown}: the stream changes format part-way (chained stream); \
                     convert it to a plain WAV or FLAC first"
                ),
                Err(e) => bail!("{shown} is damaged: cannot read past {} ({e}); re-export or re-copy it", self.at()),
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            let decoded = match self.decoder.decode(&packet) {
                Ok(d) => d,
                Err(e) => bail!(
                    "{shown} is damaged: decoding failed at {} ({e}); re-export or re-copy it \
                     (or convert it, e.g. `ffmpeg -i <file> fixed.wav`, to keep what is readable)",
                    self.at()
                ),
            };
            let spec = *decoded.spec();
            let n_ch = spec.channels.count();
            check_format(&shown, spec.rate, n_ch)?;
            if self.frames == 0 {
                self.channels = n_ch;
                self.rate = spec.rate;
            } else if n_ch != self.channels || spec.rate != self.rate {
                bail!("{shown}: the channel count or sample rate changes part-way; convert it first");
            }
            let mut n = decoded.frames();
            // Ogg gives the exact length (last page's granule position), but symphonia 0.5 does
            // not trim the encoder padding from the final Vorbis packet: do it here.
            if let (Some(total), CODEC_TYPE_VORBIS) = (self.params.n_frames, self.params.codec) {
                n = n.min((total as usize).saturating_sub(self.frames));
            }
            if n == 0 {
                continue;
            }
            let buf = match &mut self.samples {
                Some(b) if b.capacity() >= decoded.frames() * n_ch => b,
                _ => self.samples.insert(SampleBuffer::new(decoded.capacity().max(decoded.frames()) as u64, spec)),
            };
            buf.copy_planar_ref(decoded);
            let all = decoded_frames(buf, n_ch);
            let chunk: Vec<Vec<f32>> = buf.samples().chunks_exact(all).map(|plane| plane[..n].to_vec()).collect();
            validate_chunk(&chunk, self.frames, self.rate).with_context(|| format!("{shown} has invalid samples"))?;
            self.frames += n;
            self.check_length(self.frames as u64)?;
            return Ok(Some(chunk));
        }
        if self.frames == 0 || self.rate == 0 {
            bail!("{shown} contains no audio samples (zero length); choose a file with audio in it");
        }
        if let Some(expected) = self.params.n_frames {
            let got = self.frames as u64;
            if got < expected && length_is_exact(&self.params) && !self.opts.allow_truncated {
                bail!(
                    "{shown} is truncated or damaged: its header promises {:.3} s but only {:.3} s \
                     could be decoded ({got} of {expected} frames); re-export or re-copy it (or \
                     convert it, e.g. `ffmpeg -i <file> fixed.wav`, to keep the part that is readable)",
                    expected as f64 / self.rate as f64,
                    got as f64 / self.rate as f64
                );
            }
        }
        Ok(None)
    }
}

/// Refuses a sample rate or channel count past [`MAX_SAMPLE_RATE`] / [`MAX_CHANNELS`]
/// (0 means "not known yet" and is left to the decoder).
fn check_format(shown: &str, rate: u32, channels: usize) -> Result<()> {
    if rate > MAX_SAMPLE_RATE {
        bail!(
            "{}: its sample rate field says {rate} Hz, more than the {MAX_SAMPLE_RATE} Hz this program accepts \
             (MAX_SAMPLE_RATE): the file is damaged, or resample it first, e.g. `ffmpeg -i <file> -ar 48000 out.wav`",
            shown
        );
    }
    if channels > MAX_CHANNELS {
        bail!(
            "{}: its channel count field says {channels} channels, more than the {MAX_CHANNELS} this program accepts \
             (MAX_CHANNELS): the file is damaged, or downmix it first, e.g. `ffmpeg -i <file> -ac 2 out.wav`",
            shown
        );
    }
    Ok(())
}

/// Frames per plane in a sample buffer holding one decoded packet.
fn decoded_frames(buf: &SampleBuffer<f32>, channels: usize) -> usize {
    buf.samples().len() / channels.max(1)
}

/// Whether the header's frame count is exact, so that a shortfall means lost audio: lossless
/// codecs, Vorbis (Ogg granule positions) and MP3 with a LAME tag (it sets the encoder delay).
/// MP3 without one has only a bit-rate estimate, which is not trusted.
fn length_is_exact(params: &CodecParameters) -> bool {
    use symphonia::core::codecs::*;
    if params.codec == CODEC_TYPE_MP3 {
        return params.delay.is_some();
    }
    matches!(params.codec, CODEC_TYPE_VORBIS | CODEC_TYPE_FLAC | CODEC_TYPE_ALAC) || is_pcm(params)
}

/// Uncompressed PCM: every frame takes `bits_per_sample / 8 x channels` bytes of the file.
fn is_pcm(params: &CodecParameters) -> bool {
    use symphonia::core::codecs::*;
    matches!(
        params.codec,
        CODEC_TYPE_PCM_S8
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

/// Checks every sample is finite; the error names the first bad sample's time and channel.
pub fn validate_samples(audio: &AudioBuffer) -> Result<()> {
    validate_chunk(&audio.channels, 0, audio.rate)
}

/// [`validate_samples`] for a piece of a longer signal that starts at frame `offset`.
pub fn validate_chunk(channels: &[Vec<f32>], offset: usize, rate: u32) -> Result<()> {
    let first_bad = channels
        .iter()
        .enumerate()
        .filter_map(|(c, ch)| ch.iter().position(|x| !x.is_finite()).map(|i| (i, c)))
        .min();
    if let Some((i, c)) = first_bad {
        let x = channels[c][i];
        let i = i + offset;
        bail!(
            "sample {i} (at {:.6} s) of channel {} is {x}, not a finite number; \
             the audio is damaged: re-export it",
            i as f64 / rate.max(1) as f64,
            c + 1
        );
    }
    Ok(())
}
