//! Wall-clock time per op kind, collected when `MSDM_OPS_PROFILE` is set (for `msdm bench`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ON: AtomicU8 = AtomicU8::new(0);
static TABLE: Mutex<BTreeMap<String, (u64, f64)>> = Mutex::new(BTreeMap::new());
static SYNC: Mutex<Option<candle_core::Device>> = Mutex::new(None);

/// Waits for `device` before and after every timed op, so that a GPU's op times are its
/// own and not just their launches (slower: no overlap, no CUDA graphs).
pub fn sync_with(device: &candle_core::Device) {
    *SYNC.lock().unwrap_or_else(|e| e.into_inner()) = Some(device.clone());
}

fn sync() {
    if let Some(d) = SYNC.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        let _ = d.synchronize();
    }
}

pub fn enabled() -> bool {
    match ON.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var_os("MSDM_OPS_PROFILE").is_some();
            ON.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
        v => v == 1,
    }
}

/// Runs `f`, adding its wall-clock time to `name` when profiling is on.
pub fn time<R>(name: impl FnOnce() -> String, f: impl FnOnce() -> R) -> R {
    if !enabled() {
        return f();
    }
    sync();
    let t = Instant::now();
    let r = f();
    sync();
    let dt = t.elapsed().as_secs_f64();
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let e = table.entry(name()).or_insert((0, 0.0));
    e.0 += 1;
    e.1 += dt;
    r
}

/// `(op, calls, seconds)` collected so far, and the table cleared.
pub fn take() -> Vec<(String, u64, f64)> {
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let v = table.iter().map(|(k, &(n, s))| (k.clone(), n, s)).collect();
    table.clear();
    v
}
