//! Deterministic, band-limited test signals defined on the timeline (so any capture pass over a
//! position records the same samples, and they survive resampling to 22,050 Hz and back).

/// A stereo signal: a few partials below 4 kHz, different per channel and per `voice`.
pub fn sample(voice: usize, ch: usize, t_seconds: f64) -> f32 {
    let base = [110.0, 220.0, 330.0, 440.0][voice % 4];
    let mut x = 0.0;
    for (i, (mul, amp)) in [(1.0, 0.25), (2.0, 0.12), (3.5, 0.06), (7.25, 0.03)].iter().enumerate() {
        let phase = 0.7 * i as f64 + 0.9 * ch as f64 + voice as f64;
        x += amp * (2.0 * std::f64::consts::PI * base * mul * t_seconds + phase).sin();
    }
    x as f32
}

/// `n` samples of `voice` starting at timeline position `pos` at `rate`.
pub fn block(voice: usize, pos: i64, n: usize, rate: f64) -> [Vec<f32>; 2] {
    std::array::from_fn(|ch| (0..n).map(|i| sample(voice, ch, (pos + i as i64) as f64 / rate)).collect())
}

pub fn rms(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt() as f32
}

/// RMS of `a - b` relative to the RMS of `b`.
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let d: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    rms(&d) / rms(b).max(1e-9)
}
