//! Audio-thread side of the capture: copies the input, keyed to the host timeline, into
//! preallocated chunks and hands full chunks to the worker. No allocation, no blocking.

use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::messages::{CaptureFlags, Chunk, ToWorker, CAPTURE_CHANNELS, CHUNK_FRAMES};

/// A free chunk from the pool. Real time: never waits. Offline bounce (not real time, possibly
/// much faster): polls for up to 2 s while the worker catches up (sleeping does not allocate).
fn take_free(free: &Receiver<Box<Chunk>>, offline: bool) -> Option<Box<Chunk>> {
    if let Ok(c) = free.try_recv() {
        return Some(c);
    }
    if offline {
        for _ in 0..2000 {
            std::thread::sleep(std::time::Duration::from_millis(1));
            if let Ok(c) = free.try_recv() {
                return Some(c);
            }
        }
    }
    None
}

/// Host timing information for one block.
#[derive(Clone, Copy)]
pub struct BlockTime {
    pub playing: bool,
    pub pos: Option<i64>,
    pub rate: u32,
    pub tempo: Option<f64>,
    pub beats_per_bar: Option<f64>,
    /// The host renders offline (faster than real time): waiting for the worker is allowed.
    pub offline: bool,
}

/// Audio-thread capture state.
#[derive(Default)]
pub struct Recorder {
    current: Option<Box<Chunk>>,
    next_pos: Option<i64>,
    capturing: bool,
}

impl Recorder {
    /// Records one block. `inputs[c]` are the capture channels (main L/R, sidechains); a missing
    /// channel is `None` and recorded as silence (a mono main input is duplicated).
    pub fn record(
        &mut self,
        flags: &CaptureFlags,
        to_worker: &Sender<ToWorker>,
        free: &Receiver<Box<Chunk>>,
        time: BlockTime,
        inputs: &[Option<&[f32]>; CAPTURE_CHANNELS],
        frames: usize,
    ) {
        let armed = flags.armed.load(Ordering::Acquire);
        match (armed && time.playing, time.pos) {
            (true, Some(pos)) => {
                if !self.capturing {
                    self.capturing = true;
                    flags.capturing.store(true, Ordering::Release);
                }
                let mut offset = 0;
                while offset < frames {
                    let at = pos + offset as i64;
                    let fits = match &self.current {
                        Some(c) => {
                            c.len == 0
                                || (c.len < CHUNK_FRAMES && self.next_pos == Some(at) && c.rate == time.rate)
                        }
                        None => false,
                    };
                    if !fits {
                        self.flush(flags, to_worker);
                        if self.current.is_none() {
                            match take_free(free, time.offline) {
                                Some(c) => self.current = Some(c),
                                None => {
                                    // Pool empty: drop the rest of this block, count an overrun.
                                    flags.overruns.fetch_add(1, Ordering::Relaxed);
                                    self.next_pos = None;
                                    return;
                                }
                            }
                        }
                    }
                    let Some(c) = self.current.as_mut() else { return };
                    if c.len == 0 {
                        c.start = at;
                        c.rate = time.rate;
                        c.tempo = time.tempo;
                        c.beats_per_bar = time.beats_per_bar;
                    }
                    let n = (frames - offset).min(CHUNK_FRAMES - c.len);
                    for (ch, input) in inputs.iter().enumerate() {
                        let dst = &mut c.data[ch * CHUNK_FRAMES + c.len..][..n];
                        let src = match (ch, input) {
                            (_, Some(s)) => Some(*s),
                            // Mono main input: duplicate the left channel.
                            (1, None) => inputs[0],
                            _ => None,
                        };
                        match src {
                            Some(s) if s.len() >= offset + n => dst.copy_from_slice(&s[offset..offset + n]),
                            _ => dst.fill(0.0),
                        }
                    }
                    c.len += n;
                    offset += n;
                    self.next_pos = Some(pos + offset as i64);
                }
            }
            _ => {
                if self.capturing {
                    self.flush(flags, to_worker);
                    self.capturing = false;
                    self.next_pos = None;
                    flags.capturing.store(false, Ordering::Release);
                    if armed && !time.playing && to_worker.try_send(ToWorker::Stopped).is_ok() {
                        // The pass is over; the worker assembles it and starts processing.
                        flags.armed.store(false, Ordering::Release);
                    }
                }
            }
        }
    }

    /// Sends the current chunk to the worker (keeps it, emptied, if the channel is full).
    fn flush(&mut self, flags: &CaptureFlags, to_worker: &Sender<ToWorker>) {
        let Some(c) = self.current.take() else { return };
        if c.len == 0 {
            self.current = Some(c);
            return;
        }
        match to_worker.try_send(ToWorker::Chunk(c)) {
            Ok(()) => {}
            Err(TrySendError::Full(ToWorker::Chunk(mut c)))
            | Err(TrySendError::Disconnected(ToWorker::Chunk(mut c))) => {
                flags.overruns.fetch_add(1, Ordering::Relaxed);
                c.len = 0;
                self.current = Some(c);
            }
            Err(_) => {}
        }
    }

    /// Forgets the timeline position (a reset or deactivation is a discontinuity).
    pub fn reset(&mut self) {
        self.next_pos = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::Shared;
    use crate::params::MsdmParams;
    use std::sync::Arc;

    fn time(playing: bool, pos: i64) -> BlockTime {
        BlockTime { playing, pos: Some(pos), rate: 48_000, tempo: Some(120.0), beats_per_bar: Some(4.0), offline: false }
    }

    /// Contiguous blocks share a chunk; a jump starts a new one; stopping sends `Stopped` and disarms.
    #[test]
    fn chunks_follow_the_timeline() {
        let (shared, link) = Shared::new(Arc::new(MsdmParams::default()), crate::worker::WorkerOptions::default().worker_main());
        for _ in 0..4 {
            link.free_filler.send(Chunk::new()).unwrap();
        }
        let (tx, rx) = crossbeam_channel::bounded(16);
        let mut r = Recorder::default();
        let data: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let mut inputs: [Option<&[f32]>; CAPTURE_CHANNELS] = [None; CAPTURE_CHANNELS];
        inputs[0] = Some(&data);
        r.record(&shared.capture, &tx, &link.free, time(true, 1000), &inputs, 100);
        r.record(&shared.capture, &tx, &link.free, time(true, 1100), &inputs, 100);
        assert!(rx.try_recv().is_err(), "contiguous blocks stay in one chunk");
        r.record(&shared.capture, &tx, &link.free, time(true, 500), &inputs, 100); // loop jump
        let Ok(ToWorker::Chunk(c)) = rx.try_recv() else { panic!("jump flushes the chunk") };
        assert_eq!((c.start, c.len), (1000, 200));
        assert_eq!(c.channel(0)[150], 50.0);
        assert_eq!(c.channel(1)[150], 50.0, "mono main input is duplicated");
        assert_eq!(c.channel(2)[150], 0.0, "a missing sidechain is silence");
        r.record(&shared.capture, &tx, &link.free, time(false, 600), &inputs, 100);
        let Ok(ToWorker::Chunk(c)) = rx.try_recv() else { panic!("stop flushes the chunk") };
        assert_eq!((c.start, c.len), (500, 100));
        assert!(matches!(rx.try_recv(), Ok(ToWorker::Stopped)));
        assert!(!shared.capture.armed.load(Ordering::Acquire));
    }

    /// An empty pool drops the block and counts an overrun instead of allocating.
    #[test]
    fn empty_pool_counts_overruns() {
        let (shared, link) = Shared::new(Arc::new(MsdmParams::default()), crate::worker::WorkerOptions::default().worker_main());
        let (tx, _rx) = crossbeam_channel::bounded(16);
        let mut r = Recorder::default();
        let data = vec![0.5f32; 64];
        let mut inputs: [Option<&[f32]>; CAPTURE_CHANNELS] = [None; CAPTURE_CHANNELS];
        inputs[0] = Some(&data);
        r.record(&shared.capture, &tx, &link.free, time(true, 0), &inputs, 64);
        assert_eq!(shared.capture.overruns.load(Ordering::Relaxed), 1);
    }
}
