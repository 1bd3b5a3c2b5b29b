//! Stateless playback of the stem set: stem sample `t = pos + i - start` goes to aux output `k`
//! when `0 <= t < len`, so loops, seeks, pre-roll and offline bounces line up by construction.

use crossbeam_channel::{Receiver, Sender};
use nice_plug::prelude::Buffer;

use crate::messages::{PlaySet, ToAudio};
use crate::STEM_COUNT;

/// Audio-thread side of playback.
#[derive(Default)]
pub struct Player {
    current: Option<Box<PlaySet>>,
    /// An old set that could not be sent back yet (the worker frees it).
    garbage: Option<Box<PlaySet>>,
}

impl Player {
    /// Takes a new set from the worker, returning the old one for freeing; never blocks.
    pub fn receive(&mut self, from_worker: &Receiver<ToAudio>, garbage: &Sender<Box<PlaySet>>) {
        if let Some(old) = self.garbage.take() {
            if let Err(e) = garbage.try_send(old) {
                self.garbage = Some(e.into_inner());
                return;
            }
        }
        let old = match from_worker.try_recv() {
            Ok(ToAudio::Play(set)) => self.current.replace(set),
            Ok(ToAudio::Clear) => self.current.take(),
            Err(_) => None,
        };
        if let Some(old) = old {
            if let Err(e) = garbage.try_send(old) {
                self.garbage = Some(e.into_inner());
            }
        }
    }

    pub fn has_stems(&self) -> bool {
        self.current.is_some()
    }

    /// Writes the stems for the block at `pos` to the aux outputs (silence outside the region,
    /// when stopped, or at another sample rate) and, in re-mix mode, replaces the main output
    /// over the region with the gained sum of the stems, crossfading at the region edges.
    /// `remix` carries one set of stem gains per sample of the block (smoothed by the caller;
    /// samples past its end keep its last set).
    pub fn render(
        &self,
        playing: bool,
        pos: Option<i64>,
        rate: u32,
        frames: usize,
        aux_out: &mut [Buffer],
        remix: Option<(&[[f32; STEM_COUNT]], &mut [&mut [f32]])>,
    ) {
        for port in aux_out.iter_mut() {
            for ch in port.as_slice().iter_mut() {
                let n = frames.min(ch.len());
                ch[..n].fill(0.0);
            }
        }
        let (Some(set), Some(pos), true) = (self.current.as_deref(), pos, playing) else { return };
        if set.rate != rate || set.len == 0 {
            return;
        }
        // The part of this block that overlaps the region. In i128: the host's position and the
        // region's start (from saved state) are any i64, and a wrapped difference here would
        // index past the stems on the audio thread.
        let (start, pos128) = (set.start as i128, pos as i128);
        let first = (start - pos128).clamp(0, frames as i128) as usize;
        let end = (start + set.len as i128 - pos128).clamp(0, frames as i128) as usize;
        if first >= end {
            return;
        }
        // Inside first..end, t = pos + i − start lies in 0..len: the offset fits in i64.
        let offset = (pos128 - start) as i64;
        for (k, port) in aux_out.iter_mut().enumerate().take(crate::STEM_COUNT) {
            for (c, ch) in port.as_slice().iter_mut().enumerate().take(2) {
                let stem = &set.stems[k][c];
                for i in first..end.min(ch.len()) {
                    let t = (offset + i as i64) as usize;
                    ch[i] = stem[t] * set.fade_gain(t);
                }
            }
        }
        if let Some((gains, main_out)) = remix {
            for (c, out) in main_out.iter_mut().enumerate() {
                let sc = c.min(1);
                for i in first..end.min(out.len()) {
                    let t = (offset + i as i64) as usize;
                    let g = set.fade_gain(t);
                    let Some(gains) = gains.get(i).or(gains.last()) else { return };
                    let sum: f32 = gains.iter().zip(&set.stems).map(|(g, s)| g * s[sc][t]).sum();
                    out[i] = out[i] * (1.0 - g) + sum * g;
                }
            }
        }
    }

}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(start: i64, len: usize) -> Box<PlaySet> {
        let stems = std::array::from_fn(|k| std::array::from_fn(|c| (0..len).map(|t| (t * 10 + k * 2 + c) as f32).collect()));
        Box::new(PlaySet { rate: 48_000, start, len, fade: 0, stems })
    }

    /// Renders one block of `n` frames at `pos` into fresh aux outputs (filled with 9.0 first, so
    /// a sample left unwritten shows) and returns them; `remix` as in [`Player::render`].
    fn render_with(p: &Player, playing: bool, pos: i64, n: usize, remix: Option<(&[[f32; STEM_COUNT]], &mut [&mut [f32]])>) -> Vec<Vec<Vec<f32>>> {
        let mut store: Vec<Vec<Vec<f32>>> = vec![vec![vec![9.0; n]; 2]; STEM_COUNT];
        let mut slices: Vec<Vec<&mut [f32]>> = store.iter_mut().map(|s| s.iter_mut().map(|c| c.as_mut_slice()).collect()).collect();
        let mut bufs: Vec<Buffer> = slices
            .iter_mut()
            .map(|s| {
                let mut b = Buffer::default();
                unsafe { b.set_slices(n, |out| *out = std::mem::take(s)) };
                b
            })
            .collect();
        p.render(playing, Some(pos), 48_000, n, &mut bufs, remix);
        drop(bufs);
        store
    }

    fn render(p: &Player, playing: bool, pos: i64, n: usize) -> Vec<Vec<Vec<f32>>> {
        render_with(p, playing, pos, n, None)
    }

    /// Regions and host positions at the ends of the timeline (a damaged project, a host that
    /// reports odd positions) neither overflow nor index past the stems.
    #[test]
    fn extreme_positions_are_silence_or_the_right_samples() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (gtx, _grx) = crossbeam_channel::bounded(4);
        for (start, pos) in [(i64::MAX - 30, i64::MIN), (i64::MIN, i64::MAX - 5), (i64::MAX - 30, i64::MAX - 40), (i64::MIN, i64::MIN)] {
            let mut p = Player::default();
            tx.send(ToAudio::Play(set(start, 50))).unwrap();
            p.receive(&rx, &gtx);
            let out = render(&p, true, pos, 20);
            let offset = pos as i128 - start as i128;
            for i in 0..20 {
                let t = offset + i as i128;
                let want = if (0..50).contains(&t) { (t * 10 + 2) as f32 } else { 0.0 };
                assert_eq!(out[1][0][i], want, "start {start}, pos {pos}, sample {i}");
            }
        }
    }

    /// Stem sample t = pos + i - start, silence outside the region and when stopped.
    #[test]
    fn playback_is_keyed_to_the_timeline() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (gtx, grx) = crossbeam_channel::bounded(4);
        let mut p = Player::default();
        tx.send(ToAudio::Play(set(100, 50))).unwrap();
        p.receive(&rx, &gtx);
        let out = render(&p, true, 90, 20);
        assert_eq!(out[1][0][9], 0.0, "before the region: silence");
        assert_eq!(out[1][0][10], 2.0, "the region's first sample: stem 1, t = 0");
        assert_eq!(out[2][1][15], (5 * 10 + 2 * 2 + 1) as f32);
        let out = render(&p, true, 140, 20);
        assert_eq!(out[3][0][9], (49 * 10 + 6) as f32);
        assert_eq!(out[3][0][10], 0.0);
        let out = render(&p, false, 110, 20);
        assert!(out.iter().flatten().flatten().all(|x| *x == 0.0));
        // A new set replaces the old one, which goes back for freeing.
        tx.send(ToAudio::Play(set(0, 10))).unwrap();
        p.receive(&rx, &gtx);
        assert_eq!(grx.try_recv().unwrap().start, 100);
        tx.send(ToAudio::Clear).unwrap();
        p.receive(&rx, &gtx);
        assert!(!p.has_stems());
    }

    /// Re-mix: the main output over the region is the sum of the stems with each sample's own
    /// gains (a gain ramp inside one block is followed sample by sample).
    #[test]
    fn remix_follows_per_sample_gains() {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let (gtx, _grx) = crossbeam_channel::bounded(4);
        let mut p = Player::default();
        tx.send(ToAudio::Play(set(0, 64))).unwrap();
        p.receive(&rx, &gtx);
        let n = 16;
        let gains: Vec<[f32; STEM_COUNT]> = (0..n).map(|i| [i as f32 / n as f32, 1.0, 0.0, 0.5]).collect();
        let (mut l, mut r) = (vec![7.0f32; n], vec![7.0f32; n]);
        let mut main: Vec<&mut [f32]> = vec![&mut l, &mut r];
        render_with(&p, true, 8, n, Some((&gains, &mut main)));
        for i in 0..n {
            let t = 8 + i;
            let want: f32 = (0..STEM_COUNT).map(|k| gains[i][k] * (t * 10 + k * 2) as f32).sum();
            assert_eq!(l[i], want, "sample {i}");
        }
        // A gain held for the whole block (the first sample's) would give another last sample.
        let held: f32 = (0..STEM_COUNT).map(|k| gains[0][k] * ((8 + n - 1) * 10 + k * 2) as f32).sum();
        assert_ne!(l[n - 1], held);
    }

    #[test]
    fn fades_ramp_at_the_edges() {
        let mut s = set(0, 100);
        s.fade = 10;
        assert!(s.fade_gain(0) < 0.1);
        assert!(s.fade_gain(99) < 0.1);
        assert_eq!(s.fade_gain(50), 1.0);
        assert!(s.fade_gain(5) > s.fade_gain(4));
    }
}
