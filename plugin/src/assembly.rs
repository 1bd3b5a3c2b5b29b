//! Worker side of the capture: assembles chunks into one region keyed by timeline position.
//! Chunks may arrive out of order (loops, seeks); where passes overlap the last one wins.

use crate::messages::{Chunk, CAPTURE_CHANNELS};

/// Longest region kept, in seconds; a chunk that would stretch the region beyond it (a seek far
/// away) starts a new region.
pub const MAX_REGION_SECONDS: u64 = 600;

#[derive(Default)]
pub struct Assembly {
    pub rate: u32,
    pub start: i64,
    /// `CAPTURE_CHANNELS` planar channels of equal length (empty when nothing is captured).
    pub channels: Vec<Vec<f32>>,
    pub tempo: Option<f64>,
    pub beats_per_bar: Option<f64>,
}

impl Assembly {
    pub fn len(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        *self = Assembly::default();
    }

    /// Adds a chunk. Returns true if it started a new region.
    pub fn add(&mut self, c: &Chunk) -> bool {
        if c.len == 0 {
            return false;
        }
        let c_end = c.start + c.len as i64;
        let mut restarted = false;
        if self.is_empty() || c.rate != self.rate {
            restarted = true;
        } else {
            let start = self.start.min(c.start);
            let end = (self.start + self.len() as i64).max(c_end);
            if (end - start) as u64 > MAX_REGION_SECONDS * self.rate as u64 {
                restarted = true;
            }
        }
        if restarted {
            self.rate = c.rate;
            self.start = c.start;
            self.channels = vec![Vec::new(); CAPTURE_CHANNELS];
        }
        if c.tempo.is_some() {
            self.tempo = c.tempo;
        }
        if c.beats_per_bar.is_some() {
            self.beats_per_bar = c.beats_per_bar;
        }
        if c.start < self.start {
            let pad = (self.start - c.start) as usize;
            for ch in &mut self.channels {
                ch.splice(0..0, std::iter::repeat_n(0.0, pad));
            }
            self.start = c.start;
        }
        let end = (c_end - self.start) as usize;
        if end > self.len() {
            for ch in &mut self.channels {
                ch.resize(end, 0.0);
            }
        }
        let at = (c.start - self.start) as usize;
        for (i, ch) in self.channels.iter_mut().enumerate() {
            ch[at..at + c.len].copy_from_slice(c.channel(i));
        }
        restarted
    }

    /// The finished region, leaving the assembly empty.
    pub fn take(&mut self) -> Option<Assembly> {
        if self.is_empty() {
            None
        } else {
            Some(std::mem::take(self))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::CHUNK_FRAMES;

    fn chunk(start: i64, len: usize, value: f32) -> Box<Chunk> {
        let mut c = Chunk::new();
        c.start = start;
        c.len = len;
        c.rate = 48_000;
        for ch in 0..CAPTURE_CHANNELS {
            c.data[ch * CHUNK_FRAMES..ch * CHUNK_FRAMES + len].fill(value + ch as f32);
        }
        c
    }

    #[test]
    fn loops_overwrite_and_gaps_are_silent() {
        let mut a = Assembly::default();
        assert!(a.add(&chunk(1000, 100, 1.0)));
        assert!(!a.add(&chunk(1100, 100, 2.0)));
        // loop back: the second pass over 1050..1150 wins
        assert!(!a.add(&chunk(1050, 100, 3.0)));
        // earlier position extends the region at the front with silence in the gap
        assert!(!a.add(&chunk(900, 50, 4.0)));
        assert_eq!(a.start, 900);
        assert_eq!(a.len(), 300);
        let ch0 = &a.channels[0];
        assert_eq!(ch0[0], 4.0);
        assert_eq!(ch0[60], 0.0);
        assert_eq!(ch0[100], 1.0);
        assert_eq!(ch0[150], 3.0);
        assert_eq!(ch0[249], 3.0);
        assert_eq!(ch0[250], 2.0);
        assert_eq!(a.channels[9][100], 10.0);
    }

    #[test]
    fn far_seek_or_rate_change_starts_a_new_region() {
        let mut a = Assembly::default();
        a.add(&chunk(0, 100, 1.0));
        assert!(a.add(&chunk(48_000 * 700, 100, 1.0)));
        assert_eq!(a.len(), 100);
        let mut c = chunk(48_000 * 700 + 100, 100, 1.0);
        c.rate = 44_100;
        assert!(a.add(&c));
        assert_eq!(a.rate, 44_100);
        assert!(a.take().is_some());
        assert!(a.is_empty());
    }
}
