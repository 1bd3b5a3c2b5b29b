//! Per-op timings of the fast CPU kernels, for tuning them (not a test: it asserts nothing).
//!     cargo run --release -p msdm --example kernel_timings
//! `RAYON_NUM_THREADS` sets the threads; each figure is the best of 10 calls after a warm-up.

use candle_core::{Device, Tensor};
use msdm::ops::{group_norm_scale_shift_silu, Conv1d, ConvTranspose1d};

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(msdm::noise::SeededNoise::new(seed).standard_normal(n), shape, &Device::Cpu).unwrap()
}

fn main() {
    let time = |f: &dyn Fn()| {
        f();
        let mut best = f64::INFINITY;
        for _ in 0..10 {
            let t = std::time::Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        }
        best
    };
    for (ci, co, k, s, l) in [(256, 128, 3, 1, 1024), (512, 256, 3, 1, 128), (256, 256, 3, 1, 64), (64, 128, 9, 4, 4096), (4, 4, 3, 1, 65536), (256, 256, 3, 1, 4096), (1024, 1024, 3, 1, 256), (1024, 1024, 3, 1, 8), (512, 512, 3, 1, 1024), (2048, 1024, 3, 1, 32)] {
        let x = rand(&[1, ci, l], 1);
        let conv = Conv1d { weight: rand(&[co, ci, k], 2), bias: Some(rand(&[co], 3)), stride: s, padding: (k - 1) / 2 };
        let ms = time(&|| {
            conv.forward(&x).unwrap();
        });
        let gflops = 2.0 * (co * ci * k * l / s) as f64 / ms / 1e6;
        println!("conv1d {ci}->{co} k{k} s{s} L{l}: {ms:.3} ms, {gflops:.1} GFLOP/s");
    }
    for (ci, co, f, l) in [(128, 64, 4, 1024), (256, 256, 2, 64)] {
        let x = rand(&[1, ci, l], 1);
        let up = ConvTranspose1d::new(rand(&[ci, co, 2 * f], 2), rand(&[co], 3), f);
        let ms = time(&|| {
            up.forward(&x).unwrap();
        });
        let gflops = 2.0 * (co * ci * 2 * f * l) as f64 / ms / 1e6;
        println!("conv_transpose {ci}->{co} f{f} L{l}: {ms:.3} ms, {gflops:.1} GFLOP/s");
    }
    for (c, l) in [(4, 65536), (128, 1024), (256, 4096)] {
        let x = rand(&[1, c, l], 1);
        let (w, b) = (rand(&[c], 2), rand(&[c], 3));
        let ms = time(&|| {
            group_norm_scale_shift_silu(&x, 4, &w, &b, None).unwrap();
        });
        println!("group_norm_silu C{c} L{l}: {ms:.3} ms");
    }
}
