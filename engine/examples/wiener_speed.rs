//! Time of the Wiener post-filter on one separation window (65,536 samples × 4 stems, the bundled
//! model's settings), on the calling thread: 3 rounds of 10 windows.
//!
//! `cargo run --release -p msdm --example wiener_speed`

use std::time::Instant;

use anyhow::Result;
use msdm::wiener::WienerFilter;

fn main() -> Result<()> {
    let t = 65_536;
    // four stems of different content (the filter's work does not depend on what they hold)
    let stems: Vec<Vec<f32>> =
        (0..4).map(|c| (0..t).map(|i| ((i * (c + 3) * 7919) % 1013) as f32 / 1013.0 - 0.5).collect()).collect();
    let mix: Vec<f32> = (0..t).map(|i| stems.iter().map(|s| s[i]).sum()).collect();
    let f = WienerFilter::DEFAULT;
    f.apply(&stems, &mix, Some(0))?;
    for round in 1..=3 {
        let start = Instant::now();
        for _ in 0..10 {
            f.apply(&stems, &mix, Some(0))?;
        }
        println!("round {round}: {:.1} ms per window ({f})", start.elapsed().as_secs_f64() * 100.0);
    }
    Ok(())
}
