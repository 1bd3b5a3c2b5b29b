//! Tests across op families (the whole network fast against composite, gradients through the
//! dispatch) and the helpers every family's tests use. Each family's own forms are tested against
//! its composite form in that family's file.

use candle_core::{Device, Tensor};

pub fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v = crate::noise::SeededNoise::new(seed).standard_normal(n);
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

pub fn plain(t: &Tensor) -> Tensor {
    t.detach()
}

pub fn var(t: &Tensor) -> Tensor {
    candle_core::Var::from_tensor(t).unwrap().as_tensor().clone()
}

/// Relative max difference, scaled by the reference's max magnitude.
pub fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap().max(1e-6);
    max_diff(a, b) / scale
}

mod across {
    use super::*;
    use crate::ops::{group_norm_scale_shift_silu, group_norm_scale_shift_silu_composite, Conv1d};

    #[test]
    fn variables_keep_exact_gradients() {
        // With Var parameters no op takes the inference kernels: gradients reach every parameter
        // and equal those of the composite functions called directly (up to float rounding: on
        // the CPU the group norm is one op with a hand-written backward).
        let x = rand(&[2, 8, 20], 70);
        let gw = candle_core::Var::from_tensor(&rand(&[8], 71).affine(0.1, 1.0).unwrap()).unwrap();
        let gb = candle_core::Var::from_tensor(&rand(&[8], 72)).unwrap();
        let cw = candle_core::Var::from_tensor(&rand(&[6, 8, 3], 73)).unwrap();
        let loss = |gn: &dyn Fn(&Tensor) -> Tensor| {
            let h = gn(&x);
            let y = Conv1d { weight: cw.as_tensor().clone(), bias: None, stride: 1, padding: 1 }.forward_composite(&h).unwrap();
            y.sqr().unwrap().sum_all().unwrap()
        };
        let through_dispatch = loss(&|x| group_norm_scale_shift_silu(x, 4, gw.as_tensor(), gb.as_tensor(), None).unwrap());
        let direct = loss(&|x| group_norm_scale_shift_silu_composite(x, 4, gw.as_tensor(), gb.as_tensor(), None).unwrap());
        let (g1, g2) = (through_dispatch.backward().unwrap(), direct.backward().unwrap());
        for v in [&gw, &gb, &cw] {
            let (a, b) = (g1.get(v).expect("gradient reaches the var"), g2.get(v).unwrap());
            let scale = b.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(max_diff(a, b) <= 1e-4 * scale.max(1.0), "{} vs scale {scale}", max_diff(a, b));
        }
    }

    #[test]
    fn tiny_network_fast_equals_composite() {
        // The same weights as Vars (composite everywhere) and as plain tensors (fast kernels).
        use crate::unet::params::{FreshParams, TensorMap};
        let cfg = crate::config::ModelConfig::tiny();
        let fresh = FreshParams::new(3, &Device::Cpu);
        let composite = crate::unet::UNet1d::new(&cfg, &fresh).unwrap();
        let map = fresh.vars.borrow().iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
        let fast = crate::unet::UNet1d::new(&cfg, &TensorMap::new(map)).unwrap();
        let t = cfg.length_multiple() * 3;
        let x = rand(&[2, 4, t], 80);
        let sigma = Tensor::new(&[0.2f32, -0.4], &Device::Cpu).unwrap();
        let a = fast.forward(&x, &sigma).unwrap();
        let b = composite.forward(&x, &sigma).unwrap();
        assert!(!a.track_op() && b.track_op());
        assert!(rel_diff(&a, &b) < 1e-4, "{}", rel_diff(&a, &b));
    }
}
