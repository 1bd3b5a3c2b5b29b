//! The editor's waveform views and the separation residual.

use crate::shared::Peaks;

/// Columns of the editor's waveform views.
pub const PEAK_COLUMNS: usize = 600;

pub fn residual_rms(mix: &[Vec<f32>], stems: &[Vec<Vec<f32>>]) -> f32 {
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for (c, m) in mix.iter().enumerate().take(2) {
        for (i, x) in m.iter().enumerate() {
            let s: f32 = stems.iter().map(|st| st[c].get(i).copied().unwrap_or(0.0)).sum();
            sum += ((x - s) as f64).powi(2);
            n += 1;
        }
    }
    if n == 0 { 0.0 } else { (sum / n as f64).sqrt() as f32 }
}
/// Min/max peaks of the mean of `channels` in `columns` columns.
pub fn peaks(channels: &[&Vec<f32>], columns: usize) -> Peaks {
    let len = channels.first().map_or(0, |c| c.len());
    let mut p = Peaks { min: vec![0.0; columns], max: vec![0.0; columns] };
    if len == 0 {
        return p;
    }
    let scale = 1.0 / channels.len() as f32;
    for col in 0..columns {
        let a = col * len / columns;
        let b = ((col + 1) * len / columns).max(a + 1).min(len);
        let (mut lo, mut hi) = (f32::MAX, f32::MIN);
        for i in a..b {
            let v: f32 = channels.iter().map(|c| c[i]).sum::<f32>() * scale;
            lo = lo.min(v);
            hi = hi.max(v);
        }
        p.min[col] = lo;
        p.max[col] = hi;
    }
    p
}
