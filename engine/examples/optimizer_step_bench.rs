//! Times one optimizer step with the weight average (Adam + EMA) on the small config's 9.5M
//! weights: composed of candle ops against the fused one-pass step, alternating, 2 threads:
//! `RAYON_NUM_THREADS=2 cargo run --release -p msdm --example optimizer_step_bench [ROUNDS]`.

use candle_core::{DType, Device, Tensor};
use msdm::config::ModelConfig;
use msdm::train::{Adam, AdamConfig, TrainableNet, WeightAverage};

fn main() -> anyhow::Result<()> {
    msdm::ops::configure_cpu_threads(); // as `msdm train` does
    let rounds: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let cfg = ModelConfig::small();
    let nets = [0, 1].map(|_| TrainableNet::random(&cfg, 1, DType::F32, &Device::Cpu));
    let [a, b] = nets;
    let (a, b) = (a?, b?);
    let grads: Vec<Tensor> =
        a.vars.iter().map(|(_, v)| v.as_tensor().sin()?.affine(1e-3, 0.0)).collect::<candle_core::Result<_>>()?;
    let mut fused = (Adam::new(a.vars.clone(), AdamConfig::default())?, WeightAverage::start(&a, 0.999, 0)?);
    let mut composed = (Adam::composed(b.vars.clone(), AdamConfig::default())?, WeightAverage::start_composed(&b, 0.999, 0)?);
    let params: usize = a.vars.iter().map(|(_, v)| v.elem_count()).sum();
    let (mut tf, mut tc) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        let t0 = std::time::Instant::now();
        composed.0.apply(&grads, Some(&mut composed.1))?;
        let t1 = std::time::Instant::now();
        fused.0.apply(&grads, Some(&mut fused.1))?;
        let t2 = std::time::Instant::now();
        if round > 0 {
            tc.push((t1 - t0).as_secs_f64() * 1e3);
            tf.push((t2 - t1).as_secs_f64() * 1e3);
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (c, f) = (med(&mut tc), med(&mut tf));
    println!("Adam + EMA step over {params} weights, median of {rounds}: composed {c:.1} ms, fused {f:.1} ms ({:.1}x)", c / f);
    Ok(())
}
