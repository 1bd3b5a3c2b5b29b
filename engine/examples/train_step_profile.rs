//! Where a training step's time goes, per op: the small (bundled) config's network with trainable
//! parameters, forward and backward of Σ F(x)² at batch 4 × 65,536 (the EDM preconditioning, loss
//! and Adam of `msdm train` are not included), timed by the ops profiler (`MSDM_OPS_PROFILE`,
//! forward of every op; backward of the ops with hand-written backward passes).
//!     MSDM_OPS_PROFILE=1 cargo run --release -p msdm --example train_step_profile [STEPS]
//! Not a test: it asserts nothing. `RAYON_NUM_THREADS` sets the threads.

use candle_core::{Device, Tensor};
use msdm::ops::{on_workers, profile};

fn main() {
    msdm::ops::configure_cpu_threads();
    let steps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(3);
    let cfg = msdm::config::ModelConfig::small();
    let fresh = msdm::unet::params::FreshParams::new(1, &Device::Cpu);
    let net = msdm::unet::UNet1d::new(&cfg, &fresh).unwrap();
    let n = 4 * 4 * 65_536;
    let x = Tensor::from_vec(msdm::noise::SeededNoise::new(2).standard_normal(n), (4, 4, 65_536), &Device::Cpu).unwrap();
    let c_noise = Tensor::new(&[0.1f32, -0.3, 0.5, 0.0], &Device::Cpu).unwrap();
    on_workers(|| {
        let step = || {
            let t = std::time::Instant::now();
            let y = net.forward(&x, &c_noise).unwrap();
            let t_fwd = t.elapsed().as_secs_f64();
            y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            (t_fwd, t.elapsed().as_secs_f64() - t_fwd)
        };
        step();
        profile::take();
        let (mut fwd, mut bwd) = (0.0, 0.0);
        for _ in 0..steps {
            let (f, b) = step();
            fwd += f;
            bwd += b;
        }
        let total = fwd + bwd;
        println!("{steps} steps: forward {:.3} s/step, backward {:.3} s/step", fwd / steps as f64, bwd / steps as f64);
        let mut table = profile::take();
        table.sort_by(|a, b| b.2.total_cmp(&a.2));
        for (op, calls, secs) in table {
            println!("{:6.1}%  {:8.2} ms/step  {:4} calls/step  {op}", 100.0 * secs / total, 1000.0 * secs / steps as f64, calls / steps as u64);
        }
    });
}
