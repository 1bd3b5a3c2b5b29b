//! Benchmark of the plugin in the test host (not a test):
//! - `process()` time per 64-frame block at 48 kHz while capturing and while playing stems
//!   (pass-through and re-mix), mean / 99th percentile / worst case, with blocks paced at real
//!   time and this thread at SCHED_FIFO priority like a DAW's audio thread (`BENCH_RT=0`: normal);
//! - capture-to-stems latency for a 12 s clip: from the block that stops the transport to the
//!   first block whose aux outputs carry the stems.
//!
//! Build the release plugin first, then run:
//! `cargo build -p msdm-plugin --release && cargo run -p msdm-tests --release --bin plugin-bench`
//! Options (env): `MSDM_PLUGIN_LIB` (default target/release/libmsdm_plugin.so), `MSDM_MODEL`
//! (default: the bundled model, else a random model of the bundled size, `ModelConfig::small()`),
//! `MSDM_PLUGIN_STEPS` (diffusion steps; default: the quality's), `BENCH_QUALITY` (draft|final),
//! `BENCH_SECONDS` (12).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use msdm_tests::host::{Plugin, Transport, AUX_PORTS};
use msdm_tests::signal::block;

const RATE: f64 = 48_000.0;
const BLOCK: usize = 64;

struct Stats {
    times: Vec<Duration>,
}

impl Stats {
    fn report(&self, what: &str) {
        let mut t: Vec<f64> = self.times.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        t.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let mean = t.iter().sum::<f64>() / t.len() as f64;
        let p99 = t[(t.len() as f64 * 0.99) as usize];
        let budget = BLOCK as f64 / RATE * 1e6;
        println!(
            "{what:<34} blocks {:>6}  mean {mean:>6.2} µs  p99 {p99:>6.2} µs  worst {:>8.2} µs  (budget {budget:.0} µs)",
            t.len(),
            t[t.len() - 1]
        );
    }
}

/// Processes `[from, to)` in 64-frame blocks, paced at real time like an audio interface.
fn run_blocks(p: &mut Plugin, voice: usize, from: i64, to: i64, playing: bool) -> Result<(Stats, f32)> {
    let mut times = Vec::with_capacity(((to - from) as usize) / BLOCK + 1);
    let mut energy = 0.0f32;
    let mut pos = from;
    let t0 = Instant::now();
    while pos < to {
        let due = Duration::from_secs_f64((pos - from) as f64 / RATE);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
        let b = block(voice, pos, BLOCK, RATE);
        let out = p.process([&b[0], &b[1]], [None; AUX_PORTS], Transport { playing, pos, tempo: 120.0 })?;
        times.push(p.last_process);
        energy += out.aux.iter().flatten().map(|c| c.iter().map(|x| x.abs()).sum::<f32>()).sum::<f32>();
        pos += BLOCK as i64;
    }
    Ok((Stats { times }, energy))
}

fn main() -> Result<()> {
    let root = msdm_tests::workspace_root();
    let lib = std::env::var_os("MSDM_PLUGIN_LIB")
        .map(Into::into)
        .unwrap_or_else(|| msdm_tests::target_dir().join("release").join("libmsdm_plugin.so"));
    anyhow::ensure!(
        std::path::Path::new(&lib).is_file(),
        "{} not found: run `cargo build -p msdm-plugin --release` first",
        std::path::Path::new(&lib).display()
    );
    let tmp = tempfile::tempdir()?;
    let model_note = match (std::env::var_os("MSDM_MODEL"), msdm::model_file::bundled_model_path()) {
        (Some(m), _) => format!("MSDM_MODEL={}", m.to_string_lossy()),
        (None, Some(p)) => format!("bundled model {}", p.display()),
        (None, None) => {
            let path = tmp.path().join("small-random.safetensors");
            let m = msdm::model_file::Model::random(msdm::config::ModelConfig::small(), 1, &candle_core::Device::Cpu)?;
            m.save(&path, msdm::model_file::StoreDType::F32)?;
            std::env::set_var("MSDM_MODEL", &path);
            "random weights, ModelConfig::small() (no bundled model found)".into()
        }
    };
    std::env::set_var("MSDM_CACHE_DIR", tmp.path().join("cache"));
    let seconds: f64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(12.0);
    let steps = std::env::var("MSDM_PLUGIN_STEPS").unwrap_or_else(|_| "Draft quality default".into());
    println!("plugin: {}\nmodel: {model_note}\nsteps: {steps}\nclip: {seconds} s at 48 kHz, {BLOCK}-frame blocks\ncpu: {} threads", std::path::Path::new(&lib).display(), std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let _ = root;

    let mut p = Plugin::load(std::path::Path::new(&lib)).context("loading the plugin")?;
    p.activate(RATE, BLOCK as u32)?;
    // Like a DAW's audio thread: real-time priority for this (the "audio") thread only; the
    // plugin's worker was started by activate() and keeps the normal policy.
    if std::env::var("BENCH_RT").map(|v| v != "0").unwrap_or(true) {
        println!("audio thread: {}", set_realtime_priority());
    }
    let final_quality = std::env::var("BENCH_QUALITY").map(|q| q == "final").unwrap_or(false);
    if final_quality {
        p.set_param("quality", 1.0);
    }
    println!("quality: {}", if final_quality { "Final" } else { "Draft" });
    let start = 96_000i64;
    let end = start + (seconds * RATE) as i64;

    // Idle (armed, transport stopped) for reference.
    let (idle, _) = run_blocks(&mut p, 0, 0, 48_000, false)?;
    idle.report("idle (stopped, pass-through)");
    // Capturing.
    let (cap, _) = run_blocks(&mut p, 0, start, end, true)?;
    cap.report("capturing");
    let latency = render(&mut p, 0, start, end)?;
    println!("capture-to-stems latency for a {seconds} s clip: {:.1} s", latency.as_secs_f64());

    // Playing stems: pass-through main, then re-mix.
    let (play, energy) = run_blocks(&mut p, 0, start, end, true)?;
    anyhow::ensure!(energy > 0.0, "stems did not play");
    play.report("playing stems (pass-through)");
    p.set_param("output", 1.0);
    let (remix, _) = run_blocks(&mut p, 0, start, end, true)?;
    remix.report("playing stems (re-mix)");
    drop(p);

    // A second instance in the same process renders another clip of the same length: its editor
    // predicts the render time from the first render (the plugin logs "take ready in X s
    // (predicted Y s)"; the first render has no prediction).
    let mut p = Plugin::load(std::path::Path::new(&lib)).context("loading the plugin again")?;
    p.activate(RATE, BLOCK as u32)?;
    if final_quality {
        p.set_param("quality", 1.0);
    }
    run_blocks(&mut p, 1, start, end, true)?;
    let latency = render(&mut p, 1, start, end)?;
    println!("second clip (another instance): capture-to-stems latency {:.1} s", latency.as_secs_f64());
    Ok(())
}

/// Stops the transport after a capture of `[start, end)` (the render starts) and plays the middle
/// of the region until the stems sound; returns the time from the stop to the stems.
fn render(p: &mut Plugin, voice: usize, start: i64, end: i64) -> Result<Duration> {
    let stopped = Instant::now();
    let b = block(voice, end, BLOCK, RATE);
    p.process([&b[0], &b[1]], [None; AUX_PORTS], Transport { playing: false, pos: end, tempo: 120.0 })?;
    let probe = start + (end - start) / 2;
    let mut during = Vec::new();
    loop {
        let b = block(voice, probe, BLOCK, RATE);
        let out = p.process([&b[0], &b[1]], [None; AUX_PORTS], Transport { playing: true, pos: probe, tempo: 120.0 })?;
        during.push(p.last_process);
        if out.aux.iter().flatten().any(|c| c.iter().any(|x| *x != 0.0)) {
            break;
        }
        anyhow::ensure!(stopped.elapsed() < Duration::from_secs(3 * 3600), "no stems after 3 hours");
        std::thread::sleep(Duration::from_millis(50));
    }
    let latency = stopped.elapsed();
    Stats { times: during }.report("while rendering (polled)");
    Ok(latency)
}

fn set_realtime_priority() -> String {
    // SAFETY: plain libc calls on the current thread with a valid parameter struct.
    unsafe {
        let param = libc::sched_param { sched_priority: 70 };
        match libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) {
            0 => "SCHED_FIFO priority 70".into(),
            e => format!("normal priority (SCHED_FIFO not permitted, error {e})"),
        }
    }
}
