//! The messages between the audio thread, the worker and the editor, and the capture flags the
//! audio thread sets. A leaf module: the sides that exchange these depend on it, it depends on
//! none of them (whoever sends a message type owns the sending end of its channel).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};

use crate::STEM_COUNT;

/// Frames per chunk.
pub const CHUNK_FRAMES: usize = 4096;
/// Main input L/R, then the four stem sidechains L/R in stem order.
pub const CAPTURE_CHANNELS: usize = 10;
/// Chunks in the pool (about 2.7 s of backlog at 48 kHz; the worker returns them within ms).
pub const POOL_CHUNKS: usize = 32;

/// A run of contiguous captured frames starting at timeline position `start`.
pub struct Chunk {
    pub start: i64,
    pub len: usize,
    pub rate: u32,
    /// Tempo and beats per bar reported by the host while this chunk was captured.
    pub tempo: Option<f64>,
    pub beats_per_bar: Option<f64>,
    /// Planar: channel `c` occupies `data[c * CHUNK_FRAMES..][..CHUNK_FRAMES]`.
    pub data: Box<[f32]>,
}

impl Chunk {
    pub fn new() -> Box<Chunk> {
        Box::new(Chunk {
            start: 0,
            len: 0,
            rate: 0,
            tempo: None,
            beats_per_bar: None,
            data: prefaulted(CHUNK_FRAMES * CAPTURE_CHANNELS),
        })
    }

    pub fn channel(&self, c: usize) -> &[f32] {
        &self.data[c * CHUNK_FRAMES..c * CHUNK_FRAMES + self.len]
    }
}

/// Zeroed memory whose pages are already mapped (a fresh zeroed allocation is mapped lazily, and
/// the first write on the audio thread would page-fault).
fn prefaulted(n: usize) -> Box<[f32]> {
    let mut v: Vec<f32> = Vec::with_capacity(n);
    v.resize(n, 1.0);
    std::hint::black_box(&mut v);
    v.fill(0.0);
    v.into_boxed_slice()
}

/// Messages from the audio thread to the worker.
pub enum ToWorker {
    Chunk(Box<Chunk>),
    /// The transport stopped while capturing: the pass is over.
    Stopped,
}

/// A stem set ready to play at one host sample rate (built off the audio thread).
pub struct PlaySet {
    pub rate: u32,
    /// Timeline position of the first stem sample (at `rate`).
    pub start: i64,
    pub len: usize,
    /// Fade length at each region edge, in samples.
    pub fade: usize,
    /// `stems[k][ch]`, stereo, each exactly `len` samples.
    pub stems: [[Vec<f32>; 2]; STEM_COUNT],
}

impl PlaySet {
    /// Gain of the region-edge fades at stem sample `t` (0 <= t < len).
    #[inline]
    pub fn fade_gain(&self, t: usize) -> f32 {
        if self.fade == 0 {
            return 1.0;
        }
        let edge = t.min(self.len - 1 - t);
        if edge >= self.fade {
            1.0
        } else {
            (edge as f32 + 0.5) / self.fade as f32
        }
    }
}

/// Messages from the worker to the audio thread.
pub enum ToAudio {
    Play(Box<PlaySet>),
    /// Stop playing stems (the old set goes back to the worker).
    Clear,
}

/// Requests to the worker from the editor and the main thread.
#[derive(Debug)]
pub enum Command {
    /// The plugin was activated at this sample rate (re-resample stems if it changed).
    Activated { rate: u32 },
    /// Start a new capture (forget chunks of an unfinished one).
    Arm,
    /// Render the current clip with the current settings; `new_take` picks a new seed.
    Process { new_take: bool },
    /// Stop the running render (and disarm).
    Cancel,
    /// Play take `i`.
    SelectTake(usize),
    /// Make part of one stem of the current take again (a new take): `stem` in stem order,
    /// `from`..`to` as fractions of the take's length.
    Regenerate { stem: usize, from: f64, to: f64 },
    /// The host loaded a state: restore the current take from the cache.
    Restore,
    /// Write the current stems as WAVs into this folder.
    Export(PathBuf),
    /// Transcribe the current bass stem to `bass.mid` in this folder (at the host tempo if known).
    ExportMidi(PathBuf),
    /// Use this model file (None = `MSDM_MODEL` or the bundled default).
    SetModel(Option<String>),
    Shutdown,
}

/// Flags the audio thread's recorder reads and sets (and the editor and worker watch): all it
/// needs of the shared state.
#[derive(Debug)]
pub struct CaptureFlags {
    /// Capture the next pass the host plays.
    pub armed: AtomicBool,
    /// The audio thread is recording right now.
    pub capturing: AtomicBool,
    /// Blocks (or parts) dropped because the chunk pool was empty or the worker was behind.
    pub overruns: AtomicU64,
}

impl Default for CaptureFlags {
    fn default() -> Self {
        Self { armed: AtomicBool::new(true), capturing: AtomicBool::new(false), overruns: AtomicU64::new(0) }
    }
}
