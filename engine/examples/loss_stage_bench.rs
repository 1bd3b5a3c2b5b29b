//! Times the training loss's last stage (preconditioning, clamp, weighted error; forward and
//! backward) composed of candle ops against the fused op, on a batch of the bundled model's shape:
//! `RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=1 cargo run --release -p msdm --example loss_stage_bench`.

use candle_core::{Device, Tensor, Var};
use msdm::train::{edm_item_losses, EdmLossCoefficients};
fn main() {
    let dev = Device::Cpu;
    let (b, c, t) = (4usize, 4usize, 65536usize);
    let n = b * c * t;
    let mk = |f: &dyn Fn(usize) -> f32| Tensor::from_vec((0..n).map(f).collect::<Vec<f32>>(), (b, c, t), &dev).unwrap();
    let x = mk(&|i| ((i as f32) * 0.001).sin() * 0.3);
    let xn = mk(&|i| ((i as f32) * 0.0037).cos());
    let f = Var::from_tensor(&mk(&|i| ((i as f32) * 0.0011).cos() * 2.0)).unwrap();
    let k = EdmLossCoefficients { c_skip: vec![0.9, 0.5, 0.02, 0.3], c_out: vec![0.1, 0.6, 0.2, 0.15], weight: vec![100.0, 5.0, 26.0, 8.0] };
    let col = |v: &[f32]| Tensor::from_vec(v.to_vec(), (b, 1, 1), &dev).unwrap();
    for round in 0..4 {
        let t0 = std::time::Instant::now();
        let d = (xn.broadcast_mul(&col(&k.c_skip)).unwrap() + f.as_tensor().broadcast_mul(&col(&k.c_out)).unwrap()).unwrap().clamp(-1f32, 1f32).unwrap();
        let mse = (d - &x).unwrap().sqr().unwrap().flatten_from(1).unwrap().mean(1).unwrap();
        let loss = (mse * Tensor::from_vec(k.weight.clone(), b, &dev).unwrap()).unwrap().mean_all().unwrap();
        let _g = loss.backward().unwrap();
        let t1 = std::time::Instant::now();
        let loss = edm_item_losses(f.as_tensor(), &xn, &x, &k).unwrap().mean_all().unwrap();
        let _g = loss.backward().unwrap();
        if round > 0 {
            println!("loss stage forward + backward, batch 4 x 4 x 65536: candle ops {:.1} ms, fused {:.1} ms", (t1 - t0).as_secs_f64() * 1e3, t1.elapsed().as_secs_f64() * 1e3);
        }
    }
}
