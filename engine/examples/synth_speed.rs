//! Throughput of the mini-Slakh renderer with FluidR3 (the shipped model's data): 48 training
//! tracks into a temporary folder, on every core.
//!
//! `cargo run --release -p msdm --example synth_speed [SOUNDFONT]`

use std::path::PathBuf;

use anyhow::{bail, Result};
use msdm::data::synth::{self, SynthOptions};

fn main() -> Result<()> {
    let sf = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/usr/share/sounds/sf2/FluidR3_GM.sf2".into()));
    if !sf.is_file() {
        bail!("SoundFont {} not found: install Debian's fluid-soundfont-gm or pass a .sf2 file", sf.display());
    }
    let tmp = tempfile::tempdir()?;
    let mut o = SynthOptions::new(tmp.path(), &sf, "train", 48);
    o.threads = 0;
    let r = synth::synthesize(&o, &|d, t| eprint!("\r{d}/{t}"))?;
    eprintln!();
    println!(
        "{} tracks, {:.0} s of audio in {:.1} s: {:.1} tracks/min, {:.1} s audio/s (per stem set)",
        r.tracks,
        r.audio_seconds,
        r.wall_seconds,
        r.tracks as f64 * 60.0 / r.wall_seconds,
        r.audio_seconds / r.wall_seconds
    );
    Ok(())
}
