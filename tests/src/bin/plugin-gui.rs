//! Opens the plugin's editor in a real X11 window (embedded, as a DAW does) through the CLAP
//! gui extension, drives the plugin through its states and takes screenshots with ImageMagick
//! `import`. Used for the README screenshots under Xvfb:
//!
//! `xvfb-run -s "-screen 0 800x760x24" cargo run -p msdm-tests --release --bin plugin-gui -- docs/screenshots`
//!
//! Env: `MSDM_PLUGIN_LIB` (default target/release/libmsdm_plugin.so), `MSDM_MODEL` (default: the
//! bundled model, else a tiny random model rendered with `MSDM_PLUGIN_STEPS`=400).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use msdm_tests::host::{Plugin, Transport, AUX_PORTS};
use msdm_tests::signal::block;
use x11rb::connection::Connection;
use x11rb::protocol::xproto::{ConnectionExt, CreateWindowAux, EventMask, WindowClass};
use x11rb::wrapper::ConnectionExt as _;

const RATE: f64 = 48_000.0;
const N: usize = 512;

fn mix(pos: i64, n: usize) -> [Vec<f32>; 2] {
    // Four voices with different rhythmic envelopes, so the waveforms have some shape.
    let v: Vec<[Vec<f32>; 2]> = (0..4).map(|k| block(k, pos, n, RATE)).collect();
    std::array::from_fn(|ch| {
        (0..n)
            .map(|i| {
                let t = (pos + i as i64) as f64 / RATE;
                v.iter()
                    .enumerate()
                    .map(|(k, b)| {
                        let beat = (t * (k + 1) as f64 * 0.75).fract();
                        b[ch][i] * (1.0 - beat).powi(2 + k as i32) as f32
                    })
                    .sum::<f32>()
                    * 0.8
            })
            .collect()
    })
}

fn step(p: &mut Plugin, pos: i64, playing: bool) -> Result<bool> {
    let b = mix(pos, N);
    let out = p.process([&b[0], &b[1]], [None; AUX_PORTS], Transport { playing, pos, tempo: 120.0 })?;
    Ok(out.aux.iter().flatten().any(|c| c.iter().any(|x| *x != 0.0)))
}

/// Keeps the plugin and its editor running for `d` (editor repaints, main-thread callbacks).
fn idle(p: &mut Plugin, d: Duration, pos: i64) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < d {
        step(p, pos, false)?;
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn shot(out: &Path, name: &str, window: u32) -> Result<()> {
    let path = out.join(format!("{name}.png"));
    let st = Command::new("import")
        .args(["-window", &format!("{window}"), path.to_str().context("path")?])
        .status()
        .context("running ImageMagick import")?;
    if !st.success() {
        bail!("import failed for {name}");
    }
    println!("wrote {}", path.display());
    Ok(())
}

fn main() -> Result<()> {
    let out = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "docs/screenshots".into()));
    std::fs::create_dir_all(&out)?;
    let lib: PathBuf = std::env::var_os("MSDM_PLUGIN_LIB")
        .map(Into::into)
        .unwrap_or_else(|| msdm_tests::target_dir().join("release").join("libmsdm_plugin.so"));
    let tmp = tempfile::tempdir()?;
    if std::env::var_os("MSDM_MODEL").is_none() && msdm::model_file::bundled_model_path().is_none() {
        let m = tmp.path().join("tiny.safetensors");
        msdm_tests::write_tiny_model(&m, 7)?;
        std::env::set_var("MSDM_MODEL", &m);
        if std::env::var_os("MSDM_PLUGIN_STEPS").is_none() {
            std::env::set_var("MSDM_PLUGIN_STEPS", "400");
        }
    }
    std::env::set_var("MSDM_CACHE_DIR", tmp.path().join("cache"));

    let (conn, screen_num) = x11rb::connect(None).context("no X display (run under xvfb-run)")?;
    let screen = &conn.setup().roots[screen_num];
    let mut p = Plugin::load(&lib)?;
    p.activate(RATE, N as u32)?;

    let win = conn.generate_id()?;
    conn.create_window(
        x11rb::COPY_DEPTH_FROM_PARENT,
        win,
        screen.root,
        0,
        0,
        780,
        680,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new().background_pixel(screen.black_pixel).event_mask(EventMask::STRUCTURE_NOTIFY),
    )?;
    conn.change_property8(
        x11rb::protocol::xproto::PropMode::REPLACE,
        win,
        x11rb::protocol::xproto::AtomEnum::WM_NAME,
        x11rb::protocol::xproto::AtomEnum::STRING,
        b"MSDM Stems",
    )?;
    conn.map_window(win)?;
    conn.flush()?;
    let (w, h) = p.open_gui_x11(win as u64)?;
    conn.configure_window(win, &x11rb::protocol::xproto::ConfigureWindowAux::new().width(w).height(h))?;
    conn.flush()?;
    println!("editor {w}x{h}");

    // Final quality, so the processing state lasts long enough to be seen.
    p.set_param("quality", 1.0);
    // Idle: fresh instance, armed, waiting for the host to play.
    idle(&mut p, Duration::from_secs(2), 0)?;
    shot(&out, "idle", win)?;

    // Capturing: play 6 s of a mix.
    let (start, end) = (96_000i64, 96_000 + 6 * 48_000);
    let mut pos = start;
    while pos < start + 3 * 48_000 {
        step(&mut p, pos, true)?;
        pos += N as i64;
    }
    idle_playing(&mut p, &mut pos, Duration::from_millis(800))?;
    shot(&out, "capturing", win)?;
    while pos < end {
        step(&mut p, pos, true)?;
        pos += N as i64;
    }
    step(&mut p, end, false)?;

    // Processing.
    idle(&mut p, Duration::from_secs(3), end)?;
    shot(&out, "processing", win)?;

    // Ready: wait for the stems, switch the main output to the re-mix, play the region.
    let t = Instant::now();
    while !step(&mut p, start + 48_000, true)? {
        if t.elapsed() > Duration::from_secs(1800) {
            bail!("no stems after 30 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    p.set_param("output", 1.0);
    p.set_param("guitar_mute", 1.0);
    idle(&mut p, Duration::from_secs(2), start)?;
    shot(&out, "ready", win)?;

    // The Impute view with per-stem roles.
    p.set_param("job", 1.0);
    idle(&mut p, Duration::from_secs(2), start)?;
    shot(&out, "impute-roles", win)?;

    p.close_gui();
    Ok(())
}

/// Keeps playing (and capturing) in real time for `d`.
fn idle_playing(p: &mut Plugin, pos: &mut i64, d: Duration) -> Result<()> {
    let t = Instant::now();
    while t.elapsed() < d {
        step(p, *pos, true)?;
        *pos += N as i64;
        std::thread::sleep(Duration::from_secs_f64(N as f64 / RATE));
    }
    Ok(())
}
