//! Row kernels written as plain loops that the compiler vectorizes, compiled three times (AVX-512,
//! AVX2+FMA, baseline) and picked at run time, so no target-cpu flags are needed.

/// Lanes of the independent accumulators in the reductions (one AVX-512 register of f32).
const LANES: usize = 16;

/// `exp(x)` for f32 (Cephes polynomial, range reduction by ln 2 in two parts; about 1 ulp on
/// [-87, 88]; inputs are clamped to that range, so `exp(-inf)` is 2^-126 and `exp(inf)` is
/// e^88 rather than 0 and inf).
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    let x = x.clamp(-87.3, 88.0);
    let fx = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - fx * 0.693_359_4 + fx * 2.121_944_4e-4;
    let z = r * r;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 5.000_000_1e-1;
    let y = p * z + r + 1.0;
    let pow2 = f32::from_bits(((fx as i32 + 127) as u32) << 23);
    y * pow2
}

/// SiLU x·σ(x) = x / (1 + e^{-x}) (−0 below −87, where the true value is below 1e-35).
#[inline(always)]
fn silu_f32(x: f32) -> f32 {
    let s = x / (1.0 + exp_f32(-x));
    if x < -87.0 { -0.0 } else { s }
}

/// erfc(z) for z ≥ 0 with a fractional error below 1.2e-7 everywhere (the Chebyshev fit of
/// Numerical Recipes, §6.2: t·exp(−z² + P(t)), t = 1/(1 + z/2)); one exp and one division, so it
/// vectorizes, where libm's erf does not. Relative accuracy in the tail matters for GELU's
/// negative side, which is x·erfc(|x|/√2)/2.
#[inline(always)]
fn erfc_pos(z: f32) -> f32 {
    let t = 1.0 / (1.0 + 0.5 * z);
    let mut p = 0.170_872_77f32;
    p = p * t - 0.822_152_23;
    p = p * t + 1.488_515_9;
    p = p * t - 1.135_204;
    p = p * t + 0.278_868_07;
    p = p * t - 0.186_288_06;
    p = p * t + 0.096_784_18;
    p = p * t + 0.374_091_96;
    p = p * t + 1.000_023_7;
    p = p * t - 1.265_512_2;
    t * exp_f32(p - z * z)
}

/// Φ(x), the standard normal CDF, through [`erfc_pos`].
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    let half_tail = 0.5 * erfc_pos(x.abs() * std::f32::consts::FRAC_1_SQRT_2);
    if x >= 0.0 { 1.0 - half_tail } else { half_tail }
}

#[inline(always)]
fn gelu_generic(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x * normal_cdf(x);
    }
}

/// dx = dy·(Φ(x) + x·φ(x)), the derivative of x·Φ(x).
#[inline(always)]
fn gelu_backward_generic(x: &[f32], dy: &[f32], dx: &mut [f32]) {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        let pdf = INV_SQRT_2PI * exp_f32(-0.5 * x * x);
        *dx = dy * (normal_cdf(x) + x * pdf);
    }
}

#[inline(always)]
fn silu_affine_generic(x: &[f32], y: &mut [f32], a: f32, b: f32) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = silu_f32(x * a + b);
    }
}

#[inline(always)]
fn affine_generic(x: &[f32], y: &mut [f32], a: f32, b: f32) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = x * a + b;
    }
}

#[inline(always)]
fn sum_generic(x: &[f32]) -> f64 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().map(|&v| v as f64).sum::<f64>() + rest.iter().map(|&v| v as f64).sum::<f64>()
}

#[inline(always)]
fn centered_sq_sum_generic(x: &[f32], mean: f32) -> f64 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let d = c[i] - mean;
            acc[i] += d * d;
        }
    }
    acc.iter().map(|&v| v as f64).sum::<f64>() + rest.iter().map(|&v| ((v - mean) as f64).powi(2)).sum::<f64>()
}

/// Pass 1 of the GroupNorm + scale/shift + SiLU backward over one row (see group_norm_grad.rs):
/// `coef` = (mean, 1/std, γ, β, scale, shift); writes dx̂ into `dx` and returns the row sums
/// (Σ dh, Σ dh·h₀, Σ dh₀·x̂, Σ dh₀, Σ dx̂, Σ dx̂·x̂), accumulated in f32 lanes and summed in f64.
#[inline(always)]
fn gn_silu_backward_row_generic(x: &[f32], dy: &[f32], dx: &mut [f32], coef: &[f32; 6]) -> [f64; 6] {
    let [mean, rstd, g, be, a, t] = *coef;
    let one_a = 1.0 + a;
    let item = |xv: f32, dyv: f32| {
        let xh = (xv - mean) * rstd;
        let h0 = xh * g + be;
        let h = h0 * one_a + t;
        let sig = 1.0 / (1.0 + exp_f32(-h));
        let dh = dyv * sig * (1.0 + h * (1.0 - sig));
        let dh0 = dh * one_a;
        let dxh = dh0 * g;
        (dxh, [dh, dh * h0, dh0 * xh, dh0, dxh, dxh * xh])
    };
    let mut acc = [[0f32; LANES]; 6];
    let n = x.len().min(dy.len()).min(dx.len());
    let full = n - n % LANES;
    for ((xc, dyc), dxc) in x[..full].chunks_exact(LANES).zip(dy[..full].chunks_exact(LANES)).zip(dx[..full].chunks_exact_mut(LANES)) {
        for i in 0..LANES {
            let (d, v) = item(xc[i], dyc[i]);
            dxc[i] = d;
            for q in 0..6 {
                acc[q][i] += v[q];
            }
        }
    }
    let mut sums = acc.map(|lanes| lanes.iter().map(|&v| v as f64).sum::<f64>());
    for i in full..n {
        let (d, v) = item(x[i], dy[i]);
        dx[i] = d;
        for q in 0..6 {
            sums[q] += v[q] as f64;
        }
    }
    sums
}

#[inline(always)]
fn dot_generic(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Defines `pub fn $name(args) -> ret` that runs `$generic` compiled for the best instruction set.
macro_rules! multiversion {
    ($(#[$m:meta])* $name:ident, $generic:ident, ($($arg:ident : $ty:ty),*) -> $ret:ty) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) -> $ret {
                    $generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $generic($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has the features the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

multiversion!(
    /// `y = silu(a·x + b)` elementwise.
    silu_affine, silu_affine_generic, (x: &[f32], y: &mut [f32], a: f32, b: f32) -> ()
);
multiversion!(
    /// `y = x·Φ(x)`: the exact (erf) GELU elementwise.
    gelu, gelu_generic, (x: &[f32], y: &mut [f32]) -> ()
);
multiversion!(
    /// `dx = dy·GELU'(x)` elementwise.
    gelu_backward, gelu_backward_generic, (x: &[f32], dy: &[f32], dx: &mut [f32]) -> ()
);
multiversion!(
    /// Σ a·b in 16 f32 lanes.
    dot, dot_generic, (a: &[f32], b: &[f32]) -> f32
);
multiversion!(
    /// `y = a·x + b` elementwise.
    affine, affine_generic, (x: &[f32], y: &mut [f32], a: f32, b: f32) -> ()
);
multiversion!(
    /// Σ x, accumulated in 16 f32 lanes and summed in f64.
    sum, sum_generic, (x: &[f32]) -> f64
);
multiversion!(
    /// Pass 1 of the GroupNorm + SiLU backward over one row.
    gn_silu_backward_row, gn_silu_backward_row_generic, (x: &[f32], dy: &[f32], dx: &mut [f32], coef: &[f32; 6]) -> [f64; 6]
);
multiversion!(
    /// Σ (x − mean)², accumulated in 16 f32 lanes and summed in f64.
    centered_sq_sum, centered_sq_sum_generic, (x: &[f32], mean: f32) -> f64
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_silu_are_accurate() {
        let mut worst_exp = 0f64;
        let mut worst_silu = 0f64;
        let xs: Vec<f32> = (-8000..=8000).map(|i| i as f32 * 0.01).collect();
        let mut y = vec![0f32; xs.len()];
        silu_affine(&xs, &mut y, 1.0, 0.0);
        for (&x, &s) in xs.iter().zip(&y) {
            let e = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst_exp = worst_exp.max(((e - want) / want).abs());
            let want_s = x as f64 / (1.0 + (-(x as f64)).exp());
            worst_silu = worst_silu.max((s as f64 - want_s).abs() / want_s.abs().max(1e-3));
        }
        assert!(worst_exp < 4e-7, "exp relative error {worst_exp}");
        assert!(worst_silu < 1e-6, "silu error {worst_silu}");
        // the ends stay finite and have the right limits
        let mut y = [0f32; 4];
        silu_affine(&[-1000.0, 1000.0, f32::MIN, f32::MAX / 2.0], &mut y, 1.0, 0.0);
        assert!(y[0].abs() < 1e-30 && y[1] == 1000.0 && y[2].abs() < 1e-30 && y[3] == f32::MAX / 2.0, "{y:?}");
    }

    #[test]
    fn gelu_and_its_derivative_match_f64() {
        // erf in f64 from its Taylor series (|z| ≤ 3) and continued fraction (beyond): a reference
        // independent of the fit under test.
        fn erfc64(z: f64) -> f64 {
            if z.abs() <= 3.0 {
                let (mut term, mut sum, mut n) = (z, z, 0.0);
                while term.abs() > 1e-17 * sum.abs().max(1e-300) {
                    n += 1.0;
                    term *= -z * z / n;
                    sum += term / (2.0 * n + 1.0);
                }
                1.0 - 2.0 / std::f64::consts::PI.sqrt() * sum
            } else if z > 0.0 {
                let mut f = 0.0;
                for k in (1..=60).rev() {
                    f = k as f64 / 2.0 / (z + f);
                }
                (-z * z).exp() / std::f64::consts::PI.sqrt() / (z + f)
            } else {
                2.0 - erfc64(-z)
            }
        }
        let xs: Vec<f32> = (-1200..=1200).map(|i| i as f32 * 0.01).collect();
        let mut y = vec![0f32; xs.len()];
        gelu(&xs, &mut y);
        let ones = vec![1f32; xs.len()];
        let mut d = vec![0f32; xs.len()];
        gelu_backward(&xs, &ones, &mut d);
        let (mut worst, mut worst_d) = (0f64, 0f64);
        for ((&x, &g), &dg) in xs.iter().zip(&y).zip(&d) {
            let x = x as f64;
            let cdf = 0.5 * erfc64(-x / std::f64::consts::SQRT_2);
            let want = x * cdf;
            let want_d = cdf + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            // relative where the value is not tiny: the negative tail is where a fit goes wrong
            worst = worst.max((g as f64 - want).abs() / want.abs().max(1e-6));
            // absolute: the derivative crosses zero near x = −0.75, where Φ and x·φ cancel
            worst_d = worst_d.max((dg as f64 - want_d).abs());
        }
        assert!(worst < 2e-6, "gelu relative error {worst}");
        assert!(worst_d < 2e-7, "gelu derivative error {worst_d}");
        // the ends: GELU(x) → x and → 0, its derivative → 1 and → 0
        let mut y = [0f32; 4];
        gelu(&[-100.0, 100.0, -1e30, 1e30], &mut y);
        assert!(y[0].abs() < 1e-30 && y[1] == 100.0 && y[2].abs() < 1e-20 && y[3] == 1e30, "{y:?}");
        let mut d = [0f32; 2];
        gelu_backward(&[-100.0, 100.0], &[1.0, 1.0], &mut d);
        assert!(d[0].abs() < 1e-30 && d[1] == 1.0, "{d:?}");
    }

    #[test]
    fn reductions_match_f64() {
        let x: Vec<f32> = (0..1037).map(|i| ((i * 7919) % 1000) as f32 * 0.003 - 1.2).collect();
        let s: f64 = x.iter().map(|&v| v as f64).sum();
        assert!((sum(&x) - s).abs() < 1e-3);
        let m = (s / x.len() as f64) as f32;
        let q: f64 = x.iter().map(|&v| (v as f64 - m as f64).powi(2)).sum();
        assert!((centered_sq_sum(&x, m) - q).abs() / q < 1e-5);
        let d: f64 = x.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
        assert!((dot(&x, &x) as f64 - d).abs() / d < 1e-5);
        let mut y = vec![0f32; x.len()];
        affine(&x, &mut y, 2.0, 0.5);
        assert!(y.iter().zip(&x).all(|(y, x)| (y - (2.0 * x + 0.5)).abs() < 1e-6));
    }
}
