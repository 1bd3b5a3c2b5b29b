//! Where a streaming separation ([`crate::separation`]) reads its mix and writes its stems:
//! a file reader or an in-memory buffer in, memory or WAV writers out.

use anyhow::Result;

use crate::audio::{self, AudioBuffer, AudioReader};

/// Where the mix comes from, piece by piece.
pub trait FrameSource {
    fn rate(&self) -> u32;
    fn channels(&self) -> usize;
    /// The channel count of the stems: 1 with `mono`, else the source's.
    fn output_channels(&self, mono: bool) -> usize {
        if mono { self.channels().min(1) } else { self.channels() }
    }
    /// The total length in frames, if known in advance (for batching and progress).
    fn frames_hint(&self) -> Option<usize>;
    /// The next frames (planar, all channels the same length, checked finite), or `None` at the
    /// end.
    fn next_chunk(&mut self) -> Result<Option<Vec<Vec<f32>>>>;
}

impl FrameSource for AudioReader {
    fn rate(&self) -> u32 {
        AudioReader::rate(self)
    }
    fn channels(&self) -> usize {
        AudioReader::channels(self)
    }
    fn frames_hint(&self) -> Option<usize> {
        AudioReader::frames_hint(self)
    }
    fn next_chunk(&mut self) -> Result<Option<Vec<Vec<f32>>>> {
        AudioReader::next_chunk(self)
    }
}

/// An in-memory mix as a source (checked finite up front).
pub struct BufferSource<'a> {
    audio: &'a AudioBuffer,
    pos: usize,
    chunk: usize,
}

impl<'a> BufferSource<'a> {
    pub fn new(audio: &'a AudioBuffer) -> Self {
        Self { audio, pos: 0, chunk: 65_536 }
    }

    /// Hands the audio out `frames` at a time (default 65,536).
    pub fn with_chunk(self, frames: usize) -> Self {
        Self { chunk: frames.max(1), ..self }
    }
}

impl FrameSource for BufferSource<'_> {
    fn rate(&self) -> u32 {
        self.audio.rate
    }
    fn channels(&self) -> usize {
        self.audio.num_channels()
    }
    fn frames_hint(&self) -> Option<usize> {
        Some(self.audio.frames())
    }
    fn next_chunk(&mut self) -> Result<Option<Vec<Vec<f32>>>> {
        let n = self.audio.frames();
        if self.pos >= n {
            return Ok(None);
        }
        let end = self.pos.saturating_add(self.chunk).min(n);
        let chunk = self.audio.channels.iter().map(|c| c[self.pos..end].to_vec()).collect();
        self.pos = end;
        Ok(Some(chunk))
    }
}

/// Where finished stems go, piece by piece: `stems[stem][channel][frame]`, at the input's rate.
pub trait StemSink {
    fn write(&mut self, stems: Vec<Vec<Vec<f32>>>) -> Result<()>;
}

/// Collects the stems in memory.
#[derive(Default)]
pub struct BufferSink {
    /// `stems[stem][channel]`
    pub stems: Vec<Vec<Vec<f32>>>,
}

impl StemSink for BufferSink {
    fn write(&mut self, stems: Vec<Vec<Vec<f32>>>) -> Result<()> {
        if self.stems.is_empty() {
            self.stems = stems;
            return Ok(());
        }
        for (dst, src) in self.stems.iter_mut().zip(stems) {
            for (d, s) in dst.iter_mut().zip(src) {
                d.extend(s);
            }
        }
        Ok(())
    }
}

/// Writes stem `s` into the `s`-th WAV file.
impl StemSink for Vec<audio::WavStreamWriter> {
    fn write(&mut self, stems: Vec<Vec<Vec<f32>>>) -> Result<()> {
        for (w, s) in self.iter_mut().zip(&stems) {
            w.write(s)?;
        }
        Ok(())
    }
}
