//! Standard-normal draws for the samplers: from our own seeded RNG (the same seed gives the same
//! noise on every machine and backend), or replayed from a recording (reference parity).

use anyhow::{bail, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

/// A source of standard-normal draws. Each call is one draw of `n` values (one tensor).
pub trait NoiseSource {
    fn draw(&mut self, n: usize) -> Result<Vec<f32>>;
}

/// Seeded ChaCha20 + `StandardNormal`.
pub struct SeededNoise {
    rng: ChaCha20Rng,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self { rng: ChaCha20Rng::seed_from_u64(seed) }
    }

    pub fn standard_normal(&mut self, n: usize) -> Vec<f32> {
        let mut v = vec![0f32; n];
        self.fill(&mut v);
        v
    }

    /// Fills `out` with the next `out.len()` draws (the same values as [`Self::standard_normal`]).
    pub fn fill(&mut self, out: &mut [f32]) {
        out.iter_mut().for_each(|o| *o = StandardNormal.sample(&mut self.rng));
    }
}

impl NoiseSource for SeededNoise {
    fn draw(&mut self, n: usize) -> Result<Vec<f32>> {
        Ok(self.standard_normal(n))
    }
}

/// Replays a recorded sequence of draws (e.g. the reference's `noises [M, B, C, T]`), in order.
pub struct RecordedNoise {
    data: Vec<f32>,
    draw_len: usize,
    next: usize,
}

impl RecordedNoise {
    /// `data` holds `data.len() / draw_len` consecutive draws of `draw_len` values each.
    pub fn new(data: Vec<f32>, draw_len: usize) -> Result<Self> {
        if draw_len == 0 || data.len() % draw_len != 0 {
            bail!("recorded noise of {} values is not a whole number of draws of {draw_len}", data.len());
        }
        Ok(Self { data, draw_len, next: 0 })
    }

    /// Draws consumed so far.
    pub fn consumed(&self) -> usize {
        self.next
    }

    /// Draws recorded in all.
    pub fn len(&self) -> usize {
        self.data.len() / self.draw_len
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

impl NoiseSource for RecordedNoise {
    fn draw(&mut self, n: usize) -> Result<Vec<f32>> {
        if n != self.draw_len {
            bail!("a draw of {n} values was asked from a recording of draws of {}", self.draw_len);
        }
        if self.next >= self.len() {
            bail!("the recording holds {} draws and the sampler asked for more", self.len());
        }
        let start = self.next * n;
        self.next += 1;
        Ok(self.data[start..start + n].to_vec())
    }
}

/// Noise for a batch whose items have their own seeds: item b of every draw comes from the
/// generator seeded with `seeds[b]` (items with equal seeds get equal noise).
pub struct ItemNoise {
    gens: Vec<SeededNoise>,
}

impl ItemNoise {
    pub fn new(seeds: &[u64]) -> Self {
        Self { gens: seeds.iter().map(|&s| SeededNoise::new(s)).collect() }
    }
}

impl NoiseSource for ItemNoise {
    fn draw(&mut self, n: usize) -> Result<Vec<f32>> {
        use rayon::prelude::*;
        // The items' generators are independent, so they fill their parts in parallel (the same
        // values as one after the other).
        let per = n / self.gens.len().max(1);
        let mut v = vec![0f32; per * self.gens.len()];
        if per > 0 {
            v.par_chunks_mut(per).zip(self.gens.par_iter_mut()).for_each(|(out, g)| g.fill(out));
        }
        Ok(v)
    }
}

/// The seed of window `w` of a run seeded with `seed` (SplitMix64 of both).
pub fn window_seed(seed: u64, w: usize) -> u64 {
    let mut z = seed.wrapping_add((w as u64 + 1).wrapping_mul(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_is_reproducible_and_normal() {
        let a = SeededNoise::new(7).standard_normal(20000);
        assert_eq!(a, SeededNoise::new(7).standard_normal(20000));
        assert_ne!(a, SeededNoise::new(8).standard_normal(20000));
        let mean = a.iter().map(|&x| x as f64).sum::<f64>() / a.len() as f64;
        let var = a.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / a.len() as f64;
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.05, "mean {mean} var {var}");
    }

    #[test]
    fn recorded_replays_in_order_and_refuses_overrun() {
        let mut r = RecordedNoise::new(vec![1., 2., 3., 4.], 2).unwrap();
        assert_eq!(r.draw(2).unwrap(), vec![1., 2.]);
        assert_eq!(r.draw(2).unwrap(), vec![3., 4.]);
        assert!(r.draw(2).is_err());
        assert!(RecordedNoise::new(vec![1., 2., 3.], 2).is_err());
    }
}
