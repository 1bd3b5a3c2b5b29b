//! Driving the plugin like a DAW's transport: blocks of a timeline signal in, outputs collected,
//! with the transport playing or stopped (shared by the scenarios).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::host::{Outputs, Plugin, Transport, AUX_PORTS};
use crate::signal::{block, rms};

/// Tempo the host reports.
const TEMPO: f64 = 120.0;

/// Where the voices come from: the main input plays `main`, sidechain `k` plays `side[k]`.
#[derive(Clone, Copy)]
pub struct Inputs {
    pub main: usize,
    pub side: [Option<usize>; AUX_PORTS],
}

pub const MIX: Inputs = Inputs { main: 0, side: [None; AUX_PORTS] };

/// Everything the plugin put out over a span of the timeline.
pub struct Take {
    pub start: i64,
    pub main: [Vec<f32>; 2],
    pub aux: Vec<[Vec<f32>; 2]>,
}

impl Take {
    pub fn at(&self, pos: i64) -> usize {
        (pos - self.start) as usize
    }

    /// Σ of the four aux outputs of channel `ch` over samples `a..b`.
    pub fn stem_sum(&self, ch: usize, a: usize, b: usize) -> Vec<f32> {
        (a..b).map(|i| (0..AUX_PORTS).map(|k| self.aux[k][ch][i]).sum()).collect()
    }
}

pub fn process(p: &mut Plugin, inputs: Inputs, pos: i64, n: usize, playing: bool) -> Result<Outputs> {
    let rate = p.rate;
    let main = block(inputs.main, pos, n, rate);
    let sides: Vec<Option<[Vec<f32>; 2]>> = inputs.side.iter().map(|v| v.map(|v| block(v, pos, n, rate))).collect();
    let side_refs: [Option<[&[f32]; 2]>; AUX_PORTS] =
        std::array::from_fn(|k| sides[k].as_ref().map(|s| [&s[0][..], &s[1][..]]));
    p.process([&main[0], &main[1]], side_refs, Transport { playing, pos, tempo: TEMPO })
}

/// Plays `[from, to)` in blocks with the transport running and returns all outputs.
pub fn play(p: &mut Plugin, inputs: Inputs, from: i64, to: i64, n: usize) -> Result<Take> {
    let mut take = Take { start: from, main: [Vec::new(), Vec::new()], aux: vec![[Vec::new(), Vec::new()]; AUX_PORTS] };
    let mut pos = from;
    while pos < to {
        let len = n.min((to - pos) as usize);
        let out = process(p, inputs, pos, len, true)?;
        for ch in 0..2 {
            take.main[ch].extend_from_slice(&out.main[ch]);
            for k in 0..AUX_PORTS {
                take.aux[k][ch].extend_from_slice(&out.aux[k][ch]);
            }
        }
        pos += len as i64;
    }
    Ok(take)
}

/// One block with the transport stopped (ends a capture pass).
pub fn stop(p: &mut Plugin, pos: i64, n: usize) -> Result<()> {
    process(p, MIX, pos, n, false).map(|_| ())
}

pub fn aux_energy(out: &Outputs) -> f32 {
    out.aux.iter().flat_map(|s| s.iter()).map(|c| rms(c)).sum()
}

/// Keeps processing blocks at `probe` (transport playing) until the aux outputs carry audio.
pub fn wait_for_stems(p: &mut Plugin, probe: i64, n: usize, timeout: Duration) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let out = process(p, MIX, probe, n, true)?;
        if aux_energy(&out) > 0.0 {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            bail!("no stems on the aux outputs after {:?}", timeout);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn timeout() -> Duration {
    Duration::from_secs(std::env::var("MSDM_TEST_TIMEOUT").ok().and_then(|v| v.parse().ok()).unwrap_or(300))
}
