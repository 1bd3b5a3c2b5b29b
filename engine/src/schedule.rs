//! The Karras et al. (2022) σ schedule, computed in f32 in the reference's formula order, with an
//! appended exact 0: N steps give N + 1 values.

/// σ_i = (σ_max^{1/ρ} + i/(N−1)·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ for i < N, then σ_N = 0.
pub fn karras(steps: usize, sigma_min: f32, sigma_max: f32, rho: f32) -> Vec<f32> {
    // The reference's scalars are Python floats (f64), rounded to f32 when they meet the f32 steps.
    let rho_inv = 1.0f64 / rho as f64;
    let a64 = (sigma_max as f64).powf(rho_inv);
    let b = ((sigma_min as f64).powf(rho_inv) - a64) as f32;
    let a = a64 as f32;
    let denom = steps.saturating_sub(1) as f32;
    let mut s: Vec<f32> = (0..steps)
        .map(|i| {
            // torch: (steps / (num_steps - 1)); with one step this is 0/0 = NaN in torch; we use σ_max.
            let t = if steps > 1 { i as f32 / denom } else { 0.0 };
            (a + t * b).powf(rho)
        })
        .collect();
    s.push(0.0);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_spec_example() {
        let s = karras(150, 1e-4, 1.0, 7.0);
        assert_eq!(s.len(), 151);
        assert_eq!(s[0], 1.0);
        assert!((s[1] - 0.96613).abs() < 1e-5);
        assert!((s[2] - 0.93324).abs() < 1e-5);
        assert!((s[148] - 1.1354e-4).abs() < 1e-8);
        assert!((s[149] - 1e-4).abs() / 1e-4 < 1e-5);
        assert_eq!(s[150], 0.0);
        assert!(s.windows(2).all(|w| w[0] > w[1]));
    }
}
