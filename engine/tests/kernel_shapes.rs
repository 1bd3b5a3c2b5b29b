//! The fast CPU kernels (raw-pointer gemm writes, parallel fills) against the composite path over
//! many shapes: batch sizes 1 to 3, odd channel counts, and the lengths a plugin capture has after
//! resampling from 44.1, 48 and 96 kHz to the model's 22.05 kHz. A kernel that wrote past its
//! output for some shape would corrupt the host's heap; here it either trips the kernels' length
//! checks or differs from the composite result. Run it under ASan too (docs/plugin.md).

use candle_core::{Device, Tensor, D};
use msdm::ops::{
    group_norm_scale_shift_silu, group_norm_scale_shift_silu_composite, layer_norm_no_bias,
    layer_norm_no_bias_composite, linear, linear_composite, Conv1d, ConvTranspose1d,
};

/// Frames of the 94,208-frame capture (about 2 s) resampled to 22,050 Hz from each host rate.
fn capture_lengths() -> Vec<usize> {
    [44_100usize, 48_000, 96_000].iter().map(|&rate| (94_208 * 22_050usize).div_ceil(rate)).collect()
}

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let v = msdm::noise::SeededNoise::new(seed).standard_normal(n);
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// max |a − b| / max(1, max |b|).
fn rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let max = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    max(&(a - b).unwrap()) / max(b).max(1.0)
}

fn lengths() -> Vec<usize> {
    let mut l = vec![1, 2, 3, 5, 17, 255, 257, 1021];
    l.extend(capture_lengths());
    l
}

#[test]
fn capture_lengths_are_the_resampled_ones() {
    // 94,208 frames: 47,104 at 44.1 kHz (exactly half), 43,277 at 48 kHz, 21,639 at 96 kHz.
    assert_eq!(capture_lengths(), vec![47_104, 43_277, 21_639]);
}

#[test]
fn conv1d_fast_equals_composite_over_shapes() {
    let mut seed = 0;
    for len in lengths() {
        // long inputs with few channels keep the debug-build test short
        let chans: &[(usize, usize)] = if len > 2000 { &[(3, 5)] } else { &[(3, 5), (7, 1), (1, 9), (16, 16)] };
        for &(c_in, c_out) in chans {
            for (k, stride, pad) in [(1, 1, 0), (3, 1, 1), (5, 2, 2), (9, 4, 4), (4, 4, 0)] {
                if len + 2 * pad < k {
                    continue;
                }
                for batch in [1, 3] {
                    seed += 1;
                    let x = rand(&[batch, c_in, len], seed);
                    let conv = Conv1d { weight: rand(&[c_out, c_in, k], seed + 1000), bias: Some(rand(&[c_out], seed + 2000)), stride, padding: pad };
                    let fast = conv.forward(&x).unwrap();
                    // The composite strided path takes only lengths the network makes (padded
                    // length a multiple of the stride); candle's own forward is the oracle elsewhere.
                    let comp = if stride == 1 || (len + 2 * pad) % stride == 0 {
                        conv.forward_composite(&x).unwrap()
                    } else {
                        let b = conv.bias.as_ref().unwrap().reshape((c_out, 1)).unwrap();
                        x.conv1d(&conv.weight, pad, stride, 1, 1).unwrap().broadcast_add(&b).unwrap()
                    };
                    let d = rel_diff(&fast, &comp);
                    assert!(d < 1e-5, "conv1d B{batch} {c_in}->{c_out} L{len} k{k} s{stride} p{pad}: {d}");
                }
            }
        }
    }
}

#[test]
fn conv_transpose_fast_equals_composite_over_shapes() {
    let mut seed = 10_000;
    for len in lengths() {
        let chans: &[(usize, usize)] = if len > 2000 { &[(5, 3)] } else { &[(5, 3), (1, 7), (16, 16)] };
        for &(c_in, c_out) in chans {
            for f in [2, 3, 4] {
                for batch in [1, 2] {
                    seed += 1;
                    let x = rand(&[batch, c_in, len], seed);
                    let up = ConvTranspose1d::new(rand(&[c_in, c_out, 2 * f], seed + 1), rand(&[c_out], seed + 2), f);
                    let fast = up.forward(&x).unwrap();
                    let comp = up.forward_composite(&x).unwrap();
                    assert_eq!(fast.dims(), &[batch, c_out, len * f]);
                    let d = rel_diff(&fast, &comp);
                    assert!(d < 1e-5, "conv_transpose B{batch} {c_in}->{c_out} L{len} f{f}: {d}");
                }
            }
        }
    }
}

#[test]
fn group_norm_fast_equals_composite_over_shapes() {
    let mut seed = 20_000;
    for len in lengths() {
        for (c, groups) in [(3, 1), (3, 3), (6, 2), (15, 5), (16, 4)] {
            for batch in [1, 2, 3] {
                seed += 1;
                let x = rand(&[batch, c, len], seed).affine(2.0, 0.3).unwrap();
                let w = rand(&[c], seed + 1).affine(0.2, 1.0).unwrap();
                let b = rand(&[c], seed + 2);
                let ss = rand(&[batch, 2 * c, 1], seed + 3);
                let (scale, shift) = (ss.narrow(1, 0, c).unwrap(), ss.narrow(1, c, c).unwrap());
                for sso in [None, Some((&scale, &shift))] {
                    let fast = group_norm_scale_shift_silu(&x, groups, &w, &b, sso).unwrap();
                    let comp = group_norm_scale_shift_silu_composite(&x, groups, &w, &b, sso).unwrap();
                    let d = rel_diff(&fast, &comp);
                    // a single-element group has zero variance: both sides give bias-only output
                    assert!(d < 1e-4, "group_norm B{batch} C{c}/{groups} L{len} ss={}: {d}", sso.is_some());
                }
            }
        }
    }
}

#[test]
fn layer_norms_and_linear_fast_equal_composite_over_shapes() {
    let mut seed = 30_000;
    for len in lengths() {
        for c in [1, 3, 7] {
            for batch in [1, 2] {
                seed += 1;
                let x = rand(&[batch, c, len], seed).affine(1.5, -0.2).unwrap();
                let g = rand(&[1, c, 1], seed + 1);
                let d = rel_diff(&layer_norm_no_bias(&x, &g, D::Minus2).unwrap(), &layer_norm_no_bias_composite(&x, &g, D::Minus2).unwrap());
                assert!(d < 1e-4, "layer_norm channels B{batch} C{c} L{len}: {d}");
                if len <= 2000 {
                    let gl = rand(&[len], seed + 2);
                    let d = rel_diff(&layer_norm_no_bias(&x, &gl, D::Minus1).unwrap(), &layer_norm_no_bias_composite(&x, &gl, D::Minus1).unwrap());
                    assert!(d < 1e-4, "layer_norm last B{batch} C{c} L{len}: {d}");
                }
            }
        }
    }
    // linear: few rows (the attention levels' per-weight-row path) and many rows (one gemm)
    for rows in [1, 7, 64, 65, 257] {
        for (d_in, d_out) in [(3, 5), (24, 1), (33, 17)] {
            seed += 1;
            let x = rand(&[rows, d_in], seed);
            let w = rand(&[d_out, d_in], seed + 1);
            let b = rand(&[d_out], seed + 2);
            for bias in [None, Some(&b)] {
                let d = rel_diff(&linear(&x, &w, bias).unwrap(), &linear_composite(&x, &w, bias).unwrap());
                assert!(d < 1e-5, "linear {rows}x{d_in}->{d_out}: {d}");
            }
        }
    }
}

#[test]
fn tiny_network_fast_equals_composite_at_capture_lengths() {
    // The whole network, as a render runs it, at window lengths around the resampled captures.
    use msdm::unet::params::{FreshParams, TensorMap};
    let cfg = msdm::config::ModelConfig::tiny();
    let fresh = FreshParams::new(5, &Device::Cpu);
    let composite = msdm::unet::UNet1d::new(&cfg, &fresh).unwrap();
    let map = fresh.vars.borrow().iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
    let fast = msdm::unet::UNet1d::new(&cfg, &TensorMap::new(map)).unwrap();
    let m = cfg.length_multiple();
    for (i, len) in [m, 3 * m, 21_639usize.div_ceil(m) * m].into_iter().enumerate() {
        for batch in [1, 3] {
            let x = rand(&[batch, 4, len], 40_000 + i as u64);
            let sigma = Tensor::from_vec((0..batch).map(|b| 0.1 + b as f32).collect::<Vec<_>>(), batch, &Device::Cpu).unwrap();
            let d = rel_diff(&fast.forward(&x, &sigma).unwrap(), &composite.forward(&x, &sigma).unwrap());
            assert!(d < 1e-4, "network B{batch} T{len}: {d}");
        }
    }
}
