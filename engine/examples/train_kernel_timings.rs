//! Forward + backward time of the training convolutions at the bundled (small) config's shapes,
//! batch 4: the one-op form of `Path::CpuGrad` (ops/conv_grad.rs) against the gemm form it
//! replaced (columns → matmul → bias). Not a test: it asserts nothing.
//!     cargo run --release -p msdm --example train_kernel_timings
//! `RAYON_NUM_THREADS` sets the threads; each figure is the best of 5 steps after a warm-up.

use candle_core::{Device, Tensor, Var};
use msdm::ops::{on_workers, Conv1d, ConvTranspose1d, Path};

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::from_vec(msdm::noise::SeededNoise::new(seed).standard_normal(n), shape, &Device::Cpu).unwrap()
}

fn best_ms(f: &dyn Fn()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = std::time::Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1000.0
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    on_workers(|| {
        // (c_in, c_out, k, stride, L): the top level's block convs, the first downsampling, a
        // middle and an attention level's block convs
        for (ci, co, k, s, l) in [(64, 64, 3, 1, 4096), (64, 128, 9, 4, 4096), (128, 128, 3, 1, 1024), (256, 256, 3, 1, 128)] {
            let x = Var::from_tensor(&rand(&[4, ci, l], 1)).unwrap();
            let conv = Conv1d { weight: Var::from_tensor(&rand(&[co, ci, k], 2)).unwrap().as_tensor().clone(), bias: Some(Var::from_tensor(&rand(&[co], 3)).unwrap().as_tensor().clone()), stride: s, padding: (k - 1) / 2 };
            let step = |old: bool| {
                let y = if old { conv.forward_gemm(&x, Path::CpuGrad) } else { conv.forward(&x) }.unwrap();
                y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            };
            let (old, new) = (best_ms(&|| step(true)), best_ms(&|| step(false)));
            println!("conv1d {ci}->{co} k{k} s{s} L{l} B4 fwd+bwd: gemm form {old:.2} ms, one op {new:.2} ms");
        }
        for (ci, co, f, l) in [(128, 64, 4, 1024), (256, 128, 2, 128)] {
            let x = Var::from_tensor(&rand(&[4, ci, l], 1)).unwrap();
            let w = Var::from_tensor(&rand(&[ci, co, 2 * f], 2)).unwrap();
            let b = Var::from_tensor(&rand(&[co], 3)).unwrap();
            let up = ConvTranspose1d::new(w.as_tensor().clone(), b.as_tensor().clone(), f);
            let step = |old: bool| {
                let y = if old { up.forward_gemm(&x, Path::CpuGrad) } else { up.forward(&x) }.unwrap();
                y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            };
            let (old, new) = (best_ms(&|| step(true)), best_ms(&|| step(false)));
            println!("conv_transpose {ci}->{co} f{f} L{l} B4 fwd+bwd: gemm form {old:.2} ms, one op {new:.2} ms");
        }
    });
}
