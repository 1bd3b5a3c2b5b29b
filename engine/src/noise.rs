//! Standard-normal draws for the samplers: from our own seeded RNG (the same seed gives the same
//! noise on every machine and backend), from the GPU's own generator ([`DeviceNoise`]: fast, the
//! same per seed on one GPU model), or replayed from a recording (reference parity).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

/// A source of standard-normal draws. Each call is one draw of `n` values (one tensor).
pub trait NoiseSource {
    fn draw(&mut self, n: usize) -> Result<Vec<f32>>;

    /// One draw as an f32 tensor of `shape` on `device` (by default [`Self::draw`] copied there).
    fn draw_tensor(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = shape.iter().product();
        Ok(Tensor::from_vec(self.draw(n)?, shape, device)?)
    }
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

/// Draws made on the device by its own generator (cuRAND on CUDA), seeded once: no host RNG and
/// no host-to-device copy per draw. A 12 s window at the paper's settings draws 473 million
/// values; on one CPU core that alone takes seconds. The same seed gives the same draws on the
/// same GPU model and batch layout, but not the values [`SeededNoise`] gives on the CPU.
pub struct DeviceNoise {
    device: Device,
    /// For a batch whose items have seeds: item b gets the draw of distinct seed `items[b]`, so
    /// items with equal seeds get equal noise, as with [`ItemNoise`] (e.g. the channels of a
    /// stereo generation). `None`: every item gets its own draw.
    items: Option<(usize, Tensor)>,
}

impl DeviceNoise {
    /// Seeds `device`'s generator with `seed` (the generator is the device's, so two runs on one
    /// device at the same time share it).
    pub fn new(device: &Device, seed: u64) -> Result<Self> {
        device.set_seed(seed)?;
        Ok(Self { device: device.clone(), items: None })
    }

    /// The noise a run with `seeds` (one per batch item) uses on `device`: per-item seeded CPU
    /// streams on the CPU ([`ItemNoise`]), the device's generator (seeded from all of `seeds`)
    /// on a GPU. Either way, items with equal seeds get equal noise.
    pub fn for_items(device: &Device, seeds: &[u64]) -> Result<Box<dyn NoiseSource>> {
        if device.is_cpu() {
            return Ok(Box::new(ItemNoise::new(seeds)));
        }
        let mut distinct: Vec<u64> = Vec::new();
        let index: Vec<u32> = seeds
            .iter()
            .map(|s| match distinct.iter().position(|d| d == s) {
                Some(i) => i as u32,
                None => {
                    distinct.push(*s);
                    (distinct.len() - 1) as u32
                }
            })
            .collect();
        let seed = distinct.iter().enumerate().fold(0x5EED, |acc, (i, &s)| window_seed(acc ^ s, i));
        let mut noise = Self::new(device, seed)?;
        if distinct.len() < seeds.len() {
            noise.items = Some((distinct.len(), Tensor::new(index, device)?));
        }
        Ok(Box::new(noise))
    }

    fn standard_normal(&self, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        // cuRAND's normal generator fills an even number of values.
        let t = Tensor::randn(0f32, 1f32, n + n % 2, &self.device)?;
        let t = if n % 2 == 1 { t.narrow(0, 0, n)? } else { t };
        Ok(t.reshape(shape)?)
    }
}

impl NoiseSource for DeviceNoise {
    fn draw(&mut self, n: usize) -> Result<Vec<f32>> {
        Ok(self.draw_tensor(&[n], &self.device.clone())?.to_device(&Device::Cpu)?.to_vec1()?)
    }

    fn draw_tensor(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        if !device.same_device(&self.device) {
            bail!("device noise was seeded on {:?} but asked for a draw on {:?}", self.device.location(), device.location());
        }
        match &self.items {
            Some((distinct, index)) if shape.len() > 1 && shape[0] == index.dim(0)? => {
                let mut per = shape.to_vec();
                per[0] = *distinct;
                Ok(self.standard_normal(&per)?.index_select(index, 0)?)
            }
            _ => self.standard_normal(shape),
        }
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
