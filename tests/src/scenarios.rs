//! Host scenarios, each run in its own process by `plugin-scenario <name>` (see the crate docs).
//! Environment: `MSDM_PLUGIN_LIB` (the plugin library), `MSDM_MODEL` (a tiny model),
//! `MSDM_CACHE_DIR` (a temporary cache), `MSDM_PLUGIN_STEPS` (few diffusion steps).
#![allow(clippy::needless_range_loop)] // channel/stem indices read clearer here

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::drive::{aux_energy, play, process, stop, timeout, wait_for_stems, Inputs, Take, MIX};
use crate::host::{Plugin, AUX_PORTS};
use crate::signal::{block, rel_err, rms};

pub const SCENARIOS: &[&str] = &["ports", "separate", "impute", "state", "rate_change", "cancel", "cycles", "offline", "lifecycle"];

pub fn run(name: &str) -> Result<()> {
    let lib = PathBuf::from(std::env::var_os("MSDM_PLUGIN_LIB").context("set MSDM_PLUGIN_LIB")?);
    match name {
        "ports" => ports(&lib),
        "separate" => separate(&lib),
        "impute" => impute(&lib),
        "state" => state(&lib),
        "rate_change" => rate_change(&lib),
        "cancel" => cancel(&lib),
        "cycles" => cycles(&lib),
        "offline" => offline(&lib),
        "lifecycle" => crate::lifecycle::run(&lib),
        other => bail!("unknown scenario {other}; known: {}", SCENARIOS.join(", ")),
    }
}

fn open(lib: &std::path::Path, rate: f64, n: u32) -> Result<Plugin> {
    let mut p = Plugin::load(lib)?;
    p.activate(rate, n)?;
    Ok(p)
}

fn ports(lib: &std::path::Path) -> Result<()> {
    ensure!(Plugin::descriptor_name(lib)? == "MSDM Stems", "plugin name");
    let mut p = Plugin::load(lib)?;
    let outs = p.ports(false)?;
    let ins = p.ports(true)?;
    println!("outputs: {outs:?}\ninputs: {ins:?}");
    let names = |v: &[crate::host::Port]| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
    ensure!(names(&outs) == ["Output", "Bass", "Drums", "Guitar", "Piano"], "output port names: {:?}", names(&outs));
    ensure!(names(&ins) == ["Input", "Bass", "Drums", "Guitar", "Piano"], "input port names: {:?}", names(&ins));
    ensure!(outs.iter().chain(&ins).all(|p| p.channels == 2), "all ports stereo");
    ensure!(outs[0].is_main && ins[0].is_main && !outs[1].is_main, "main port flags");
    p.activate(48_000.0, 512)?;
    let latency = p.latency()?;
    ensure!(latency == 0, "latency {latency}");
    // Pass-through with nothing processed: main out == in, aux silent.
    let out = process(&mut p, MIX, 0, 512, false)?;
    let expect = block(0, 0, 512, 48_000.0);
    ensure!(out.main == expect, "main output is not the input");
    ensure!(aux_energy(&out) == 0.0, "aux outputs not silent");
    Ok(())
}

/// Captures `[start, end)` with a loop jump back to the middle, stops, waits for the stems.
fn capture_with_loop(p: &mut Plugin, inputs: Inputs, start: i64, end: i64, n: usize) -> Result<Duration> {
    let mid = start + (end - start) / 2;
    let loop_back = start + (end - start) / 4;
    play(p, inputs, start, mid, n)?;
    // Loop jump: the host goes back; the second pass overwrites the first.
    play(p, inputs, loop_back, end, n)?;
    stop(p, end, n)?;
    let waited = wait_for_stems(p, mid, n, timeout())?;
    println!("stems after {waited:?}");
    Ok(waited)
}

/// Checks silence outside `[start, end)` and returns the inner range (fades excluded).
fn check_region(t: &Take, start: i64, end: i64, fade: i64) -> Result<(usize, usize)> {
    for k in 0..AUX_PORTS {
        for ch in 0..2 {
            let a = &t.aux[k][ch];
            ensure!(a[..t.at(start)].iter().all(|x| *x == 0.0), "aux {k} not silent before the region");
            ensure!(a[t.at(end)..].iter().all(|x| *x == 0.0), "aux {k} not silent after the region");
            ensure!(a.iter().all(|x| x.is_finite()), "aux {k} has non-finite samples");
        }
    }
    Ok((t.at(start + fade), t.at(end - fade)))
}

fn separate(lib: &std::path::Path) -> Result<()> {
    let (rate, n) = (48_000.0, 256usize);
    let mut p = open(lib, rate, n as u32)?;
    let (start, end) = (48_000i64, 96_000i64);
    capture_with_loop(&mut p, MIX, start, end, n)?;
    let t = play(&mut p, MIX, start - 4_000, end + 4_000, n)?;
    let (a, b) = check_region(&t, start, end, 240)?;
    let expect = block(0, t.start, t.main[0].len(), rate);
    for ch in 0..2 {
        ensure!(t.main[ch] == expect[ch], "main output is not a pass-through");
        let sum = t.stem_sum(ch, a, b);
        let err = rel_err(&sum, &expect[ch][a..b]);
        println!("channel {ch}: sum of stems vs input, relative RMS error {err:.2e}");
        ensure!(err < 1e-3, "stems do not sum to the captured input (rel. error {err})");
        // One sample of misalignment would give a far larger error.
        let shifted = rel_err(&sum[1..], &expect[ch][a..b - 1]);
        ensure!(shifted > 10.0 * err, "alignment check is not sensitive ({shifted} vs {err})");
    }
    Ok(())
}

fn impute(lib: &std::path::Path) -> Result<()> {
    let (rate, n) = (48_000.0, 256usize);
    let mut p = Plugin::load(lib)?;
    p.activate(rate, n as u32)?;
    // Impute: bass = Generate, drums = Given (main input), guitar = Silent, piano = Given (sidechain).
    p.set_param("job", 1.0);
    p.set_param("bass_role", 1.0);
    p.set_param("drums_role", 0.0);
    p.set_param("guitar_role", 2.0);
    p.set_param("piano_role", 0.0);
    stop(&mut p, 0, n)?;
    let inputs = Inputs { main: 1, side: [None, None, None, Some(3)] };
    let (start, end) = (24_000i64, 72_000i64);
    play(&mut p, inputs, start, end, n)?;
    stop(&mut p, end, n)?;
    let waited = wait_for_stems(&mut p, (start + end) / 2, n, timeout())?;
    println!("stems after {waited:?}");
    let t = play(&mut p, inputs, start - 2_000, end + 2_000, n)?;
    let (a, b) = check_region(&t, start, end, 240)?;
    let len = t.main[0].len();
    let drums = block(1, t.start, len, rate);
    let piano = block(3, t.start, len, rate);
    for ch in 0..2 {
        let e_drums = rel_err(&t.aux[1][ch][a..b], &drums[ch][a..b]);
        let e_piano = rel_err(&t.aux[3][ch][a..b], &piano[ch][a..b]);
        let guitar = rms(&t.aux[2][ch][a..b]);
        println!("channel {ch}: given drums error {e_drums:.2e}, given piano (sidechain) error {e_piano:.2e}, silent guitar RMS {guitar:.2e}");
        ensure!(e_drums < 1e-2, "the Given drums stem did not come back unchanged ({e_drums})");
        ensure!(e_piano < 1e-2, "the Given piano stem (sidechain) did not come back unchanged ({e_piano})");
        ensure!(guitar < 1e-3, "the Silent guitar stem is not silent ({guitar})");
        ensure!(t.aux[0][ch].iter().all(|x| x.is_finite()), "generated bass not finite");
    }
    Ok(())
}

fn region_stems(t: &Take, a: usize, b: usize) -> Vec<f32> {
    (0..AUX_PORTS).flat_map(|k| (0..2).flat_map(move |ch| t.aux[k][ch][a..b].to_vec())).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn state(lib: &std::path::Path) -> Result<()> {
    let (rate, n) = (48_000.0, 256usize);
    let (start, end) = (48_000i64, 72_000i64);
    let mut p1 = open(lib, rate, n as u32)?;
    play(&mut p1, MIX, start, end, n)?;
    stop(&mut p1, end, n)?;
    wait_for_stems(&mut p1, start + 12_000, n, timeout())?;
    let t1 = play(&mut p1, MIX, start, end, n)?;
    let s1 = region_stems(&t1, 0, t1.main[0].len());
    let saved = p1.save_state()?;
    println!("state: {} bytes", saved.len());
    ensure!(saved.len() < 64 * 1024, "state holds more than metadata ({} bytes)", saved.len());
    drop(p1);

    // The editor's size goes with the state: a size in a loaded state is what the next save holds.
    let text = String::from_utf8_lossy(&saved).to_string();
    ensure!(text.contains("editor-size") && text.matches("760.0").count() == 1, "the state holds no editor size: {text}");
    // byte-level: the state may carry binary framing around its JSON
    let at = saved.windows(5).position(|w| w == b"760.0").context("no width in the state")?;
    let mut resized = saved.clone();
    resized[at..at + 5].copy_from_slice(b"900.0");
    let mut sized = Plugin::load(lib)?;
    sized.load_state(&resized)?;
    let again = String::from_utf8_lossy(&sized.save_state()?).to_string();
    ensure!(again.contains("900.0") && !again.contains("760.0"), "the loaded editor size was not kept: {again}");
    drop(sized);

    // A fresh instance restores the stems from the cache; it must not re-capture.
    let mut p2 = Plugin::load(lib)?;
    p2.load_state(&saved)?;
    p2.activate(rate, n as u32)?;
    let waited = wait_for_stems(&mut p2, start + 12_000, n, Duration::from_secs(30))?;
    println!("restored from the cache after {waited:?}");
    let other = Inputs { main: 2, side: [None; AUX_PORTS] };
    let t2 = play(&mut p2, other, start, end, n)?;
    let d = max_diff(&s1, &region_stems(&t2, 0, t2.main[0].len()));
    ensure!(d == 0.0, "restored stems differ from the original ({d})");
    stop(&mut p2, end, n)?;
    std::thread::sleep(Duration::from_millis(200));
    let t2b = play(&mut p2, other, start, end, n)?;
    ensure!(max_diff(&s1, &region_stems(&t2b, 0, t2b.main[0].len())) == 0.0, "a reload re-captured the input");
    drop(p2);

    // Cache gone: no stems; playing the region again re-captures and the saved seed reproduces them.
    let cache = PathBuf::from(std::env::var_os("MSDM_CACHE_DIR").context("MSDM_CACHE_DIR")?);
    std::fs::remove_dir_all(&cache).ok();
    let mut p3 = Plugin::load(lib)?;
    p3.load_state(&saved)?;
    p3.activate(rate, n as u32)?;
    std::thread::sleep(Duration::from_millis(300));
    let out = process(&mut p3, MIX, start + 12_000, n, false)?;
    ensure!(aux_energy(&out) == 0.0, "stems play although the cache is gone");
    play(&mut p3, MIX, start, end, n)?;
    stop(&mut p3, end, n)?;
    wait_for_stems(&mut p3, start + 12_000, n, timeout())?;
    let t3 = play(&mut p3, MIX, start, end, n)?;
    let d = max_diff(&s1, &region_stems(&t3, 0, t3.main[0].len()));
    println!("re-processed from the seed: max difference {d:.2e}");
    ensure!(d < 1e-5, "re-processing did not reproduce the stems from the seed ({d})");
    Ok(())
}

fn rate_change(lib: &std::path::Path) -> Result<()> {
    let n = 256usize;
    let mut p = open(lib, 44_100.0, n as u32)?;
    let (start, end) = (44_100i64, 66_150i64);
    play(&mut p, MIX, start, end, n)?;
    stop(&mut p, end, n)?;
    wait_for_stems(&mut p, start + 10_000, n, timeout())?;
    p.deactivate();
    p.activate(48_000.0, n as u32)?;
    let (s48, e48) = (48_000i64, 72_000i64);
    let waited = wait_for_stems(&mut p, s48 + 10_000, n, Duration::from_secs(60))?;
    println!("re-resampled for 48 kHz after {waited:?}");
    let t = play(&mut p, MIX, s48 - 2_000, e48 + 2_000, n)?;
    let (a, b) = check_region(&t, s48, e48, 240 + 64)?;
    let expect = block(0, t.start, t.main[0].len(), 48_000.0);
    for ch in 0..2 {
        let sum = t.stem_sum(ch, a, b);
        let err = rel_err(&sum, &expect[ch][a..b]);
        println!("channel {ch}: stems at 48 kHz vs the input on the timeline: rel. error {err:.2e}");
        ensure!(err < 1e-2, "stems misaligned or wrong after the rate change ({err})");
    }
    Ok(())
}

fn cancel(lib: &std::path::Path) -> Result<()> {
    // Run with many steps (the test sets MSDM_PLUGIN_STEPS high) so the render is still going.
    let (rate, n) = (48_000.0, 256usize);
    let (start, end) = (0i64, 24_000i64);
    let mut p = open(lib, rate, n as u32)?;
    let before = p.save_state()?;
    play(&mut p, MIX, start, end, n)?;
    stop(&mut p, end, n)?;
    std::thread::sleep(Duration::from_millis(500));
    let probe = process(&mut p, MIX, start + 10_000, n, true)?;
    ensure!(aux_energy(&probe) == 0.0, "the render finished too early to test cancelling it; raise MSDM_PLUGIN_STEPS");
    // Deactivate and re-activate at another rate mid-render.
    p.deactivate();
    p.activate(44_100.0, n as u32)?;
    play(&mut p, MIX, 0, 2_048, n)?;
    // A state reload mid-render cancels it.
    p.load_state(&before)?;
    std::thread::sleep(Duration::from_millis(1000));
    let t = play(&mut p, MIX, 0, 4_096, n)?;
    ensure!(t.aux.iter().flatten().all(|c| c.iter().all(|x| *x == 0.0)), "stems appeared after the reload cancelled the render");
    // Capture again (the reload re-armed) and drop the instance mid-render: it must cancel fast.
    play(&mut p, MIX, start, end, n)?;
    stop(&mut p, end, n)?;
    std::thread::sleep(Duration::from_millis(500));
    let probe = process(&mut p, MIX, start + 10_000, n, true)?;
    ensure!(aux_energy(&probe) == 0.0, "the second render finished too early to test cancelling it");
    let t0 = Instant::now();
    drop(p);
    let took = t0.elapsed();
    println!("dropping the instance mid-render (cancel + join) took {took:?}");
    ensure!(took < Duration::from_secs(10), "cancel on drop took {took:?}");
    Ok(())
}

fn cycles(lib: &std::path::Path) -> Result<()> {
    let n = 128usize;
    let mut p = Plugin::load(lib)?;
    let mut pos = 0i64;
    for i in 0..10 {
        let rate = if i % 2 == 0 { 48_000.0 } else { 44_100.0 };
        p.activate(rate, n as u32)?;
        let t = play(&mut p, MIX, pos, pos + 8 * n as i64, n)?;
        ensure!(t.main.iter().flatten().all(|x| x.is_finite()), "non-finite output in cycle {i}");
        pos += 8 * n as i64;
        p.deactivate();
    }
    p.activate(48_000.0, n as u32)?;
    stop(&mut p, pos, n)?;
    Ok(())
}

/// An offline bounce runs far faster than real time: the capture must still be complete (the
/// audio thread may wait for the worker in offline mode, without allocating).
fn offline(lib: &std::path::Path) -> Result<()> {
    let (rate, n) = (48_000.0, 512usize);
    let mut p = Plugin::load(lib)?;
    p.set_offline(true)?;
    p.activate(rate, n as u32)?;
    let (start, end) = (0i64, 12 * 48_000i64);
    let t0 = Instant::now();
    play(&mut p, MIX, start, end, n)?;
    println!("captured 12 s in {:?}", t0.elapsed());
    stop(&mut p, end, n)?;
    wait_for_stems(&mut p, end - 24_000, n, timeout())?;
    let t = play(&mut p, MIX, end - 48_000, end, n)?;
    let expect = block(0, t.start, t.main[0].len(), rate);
    let (a, b) = (0, t.main[0].len() - 480);
    for ch in 0..2 {
        let sum = t.stem_sum(ch, a, b);
        let err = rel_err(&sum, &expect[ch][a..b]);
        println!("channel {ch}: last second of the bounce, sum of stems vs input: {err:.2e}");
        ensure!(err < 1e-3, "the end of the offline capture is missing or wrong ({err})");
    }
    Ok(())
}
