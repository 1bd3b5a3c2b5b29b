//! The plugin's whole life in one host process, many times over: load the library, create an
//! instance, capture, render for real, check the stems, destroy the instance, unload the library.
//! A DAW does this whenever a session is closed and another opened; a thread or a pointer of the
//! plugin that outlives its instance or its library shows up here as a crash, a leak of threads or
//! wrong stems in a later cycle.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::host::Plugin;
use crate::drive::{self, MIX};
use crate::signal::{block, rel_err};

/// Cycles run by the `lifecycle` scenario (`MSDM_LIFECYCLE_CYCLES` overrides it).
const CYCLES: usize = 20;

/// Names of this process's threads (`/proc/self/task/*/comm`).
pub fn thread_names() -> Result<Vec<String>> {
    let mut names = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").context("listing /proc/self/task")? {
        let comm = e?.path().join("comm");
        if let Ok(n) = std::fs::read_to_string(&comm) {
            names.push(n.trim().to_string());
        }
    }
    Ok(names)
}

fn ours(names: &[String]) -> Vec<String> {
    names.iter().filter(|n| n.starts_with("msdm-")).cloned().collect()
}

pub fn run(lib: &Path) -> Result<()> {
    let cycles = std::env::var("MSDM_LIFECYCLE_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(CYCLES);
    let (rate, n) = (48_000.0, 256usize);
    let mut threads_after_first = None;
    for cycle in 0..cycles {
        let mut p = Plugin::load(lib)?;
        p.activate(rate, n as u32)?;
        // A different region each cycle: other audio, so the render is never a cache hit.
        let start = 48_000 * (1 + cycle as i64);
        let end = start + 24_000;
        drive::play(&mut p, MIX, start, end, n)?;
        drive::stop(&mut p, end, n)?;
        let waited = drive::wait_for_stems(&mut p, start + 12_000, n, drive::timeout())
            .with_context(|| format!("cycle {cycle}: no stems"))?;
        let t = drive::play(&mut p, MIX, start, end, n)?;
        let expect = block(0, start, (end - start) as usize, rate);
        let (a, b) = (480, (end - start) as usize - 480);
        for ch in 0..2 {
            let err = rel_err(&t.stem_sum(ch, a, b), &expect[ch][a..b]);
            ensure!(err < 1e-3, "cycle {cycle}: stems do not sum to the input (rel. error {err})");
        }
        let during = thread_names()?;
        ensure!(during.iter().any(|t| t.starts_with("msdm-compute")), "cycle {cycle}: the render did not run on the instance's own compute threads: {during:?}");
        drop(p); // deactivate, destroy the instance, unload the library
        // Thread exits are asynchronous only up to the join in the instance's destructor.
        std::thread::sleep(Duration::from_millis(20));
        let after = thread_names()?;
        ensure!(ours(&after).is_empty(), "cycle {cycle}: threads of the destroyed instance still run: {:?}", ours(&after));
        // Threads we do not own (candle's element-wise pool) may stay, but must not pile up.
        match threads_after_first {
            None => threads_after_first = Some(after.len()),
            Some(first) => ensure!(after.len() <= first, "cycle {cycle}: {} threads after the instance, {first} after the first cycle", after.len()),
        }
        println!("cycle {cycle}: rendered in {waited:?}, {} threads left after destroying the instance", after.len());
    }
    Ok(())
}
