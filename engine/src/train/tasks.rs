//! The task mixture of per-stem σ training (not in the reference; see
//! `../shared/reference/conditional-training.md` §1 and `ModelConfig::stem_tasks`).
//!
//! Each batch item draws one task, then its noise levels: every stem at one σ (joint), a random
//! non-empty proper subset of the stems clean with the others at one σ (conditional), or one σ per
//! stem (independent). Clean stems have σ = 0 and no loss. One network then learns the joint
//! score the reference learns and the conditional scores imputation needs, with the given stems
//! seen clean instead of buried in noise.

use rand::Rng;
use rand_distr::StandardNormal;

use crate::config::{SigmaDistribution, StemTaskMix};

/// One item's task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StemTask {
    Joint,
    /// The stems whose bit is set are given (clean).
    Conditional { given: u32 },
    Independent,
}

/// The noise of one per-stem batch: σ per item and stem (`[B, C]`, 0 = clean) and ε.
#[derive(Clone, Debug, PartialEq)]
pub struct StemNoiseDraw {
    pub tasks: Vec<StemTask>,
    pub sigmas: Vec<f32>,
    pub noise: Vec<f32>,
}

fn draw_sigma<R: Rng + ?Sized>(rng: &mut R, dist: SigmaDistribution) -> f32 {
    let n: f64 = rng.sample(StandardNormal);
    (dist.mean + dist.std * n).exp() as f32
}

/// The stem a one-left item leaves: by `weights`, or uniform without them (the earlier recipes'
/// draw, so their runs resume with the same numbers).
fn pick_left<R: Rng + ?Sized>(rng: &mut R, weights: Option<[f64; 4]>, channels: usize) -> usize {
    let Some(w) = weights.filter(|w| w.len() == channels) else { return rng.random_range(0..channels) };
    let mut u = rng.random::<f64>() * w.iter().sum::<f64>();
    for (k, x) in w.iter().enumerate() {
        if u < *x {
            return k;
        }
        u -= x;
    }
    // rounding left u at the very top: the last stem with weight
    w.iter().rposition(|x| *x > 0.0).unwrap_or(0)
}

/// Draws per item: the task (one uniform), then its σ values, then the subset for a conditional
/// item; then ε (`batch · channels · len` values), all from `rng`. With one stem every item is
/// joint (there is no proper subset to give).
pub fn draw_stem_noise<R: Rng + ?Sized>(
    rng: &mut R,
    dist: SigmaDistribution,
    mix: StemTaskMix,
    batch: usize,
    channels: usize,
    len: usize,
) -> StemNoiseDraw {
    let total = mix.joint + mix.conditional + mix.independent;
    let (mut tasks, mut sigmas) = (Vec::with_capacity(batch), Vec::with_capacity(batch * channels));
    for _ in 0..batch {
        let u = rng.random::<f64>() * total;
        let task = if u < mix.joint || channels < 2 {
            StemTask::Joint
        } else if u < mix.joint + mix.conditional {
            let all = (1u32 << channels) - 1;
            // `one_left` of them make exactly one stem (the extra draw only happens when the knob
            // is set, so a mix without it draws exactly as before); the others are uniform over
            // the 2^C − 2 non-empty proper subsets
            let given = if mix.one_left > 0.0 && rng.random::<f64>() < mix.one_left {
                all & !(1 << pick_left(rng, mix.one_left_weights, channels))
            } else {
                rng.random_range(1..all)
            };
            StemTask::Conditional { given }
        } else {
            StemTask::Independent
        };
        match task {
            StemTask::Joint => sigmas.extend(std::iter::repeat_n(draw_sigma(rng, dist), channels)),
            StemTask::Conditional { given } => {
                let s = draw_sigma(rng, mix.conditional_sigma.unwrap_or(dist));
                sigmas.extend((0..channels).map(|c| if given >> c & 1 == 1 { 0.0 } else { s }));
            }
            StemTask::Independent => sigmas.extend((0..channels).map(|_| draw_sigma(rng, dist))),
        }
        tasks.push(task);
    }
    let noise = (0..batch * channels * len).map(|_| rng.sample::<f32, _>(StandardNormal)).collect();
    StemNoiseDraw { tasks, sigmas, noise }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_mixture_draws_each_task_at_its_share_with_the_right_sigmas() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        let mix = StemTaskMix { joint: 0.4, conditional: 0.45, independent: 0.15, ..StemTaskMix::default() };
        let (n, c) = (20_000, 4);
        let d = draw_stem_noise(&mut rng, SigmaDistribution { mean: -2.0, std: 1.8 }, mix, n, c, 1);
        assert_eq!((d.tasks.len(), d.sigmas.len(), d.noise.len()), (n, n * c, n * c));
        let mut counts = [0usize; 3];
        let mut subsets = [0usize; 16];
        for (i, t) in d.tasks.iter().enumerate() {
            let s = &d.sigmas[i * c..(i + 1) * c];
            match *t {
                StemTask::Joint => {
                    counts[0] += 1;
                    assert!(s.iter().all(|&v| v == s[0] && v > 0.0));
                }
                StemTask::Conditional { given } => {
                    counts[1] += 1;
                    subsets[given as usize] += 1;
                    assert!(given > 0 && given < 15, "not a proper subset: {given}");
                    let noisy: Vec<f32> = (0..c).filter(|k| given >> k & 1 == 0).map(|k| s[k]).collect();
                    assert!((0..c).filter(|k| given >> k & 1 == 1).all(|k| s[k] == 0.0));
                    assert!(noisy.iter().all(|&v| v == noisy[0] && v > 0.0));
                }
                StemTask::Independent => {
                    counts[2] += 1;
                    assert!(s.iter().all(|&v| v > 0.0) && s.windows(2).any(|w| w[0] != w[1]));
                }
            }
        }
        for (k, share) in [0.4, 0.45, 0.15].iter().enumerate() {
            let got = counts[k] as f64 / n as f64;
            assert!((got - share).abs() < 0.015, "task {k}: {got} against {share}");
        }
        // every proper subset about equally often (9,000 conditional items over 14 subsets)
        assert_eq!((subsets[0], subsets[15]), (0, 0));
        assert!(subsets[1..15].iter().all(|&k| (k as f64 - counts[1] as f64 / 14.0).abs() < 120.0), "{subsets:?}");
        // the shared σ follows the distribution: log-mean of the joint items near −2
        let logs: Vec<f64> = d.tasks.iter().enumerate().filter(|(_, t)| **t == StemTask::Joint).map(|(i, _)| (d.sigmas[i * c] as f64).ln()).collect();
        let mean = logs.iter().sum::<f64>() / logs.len() as f64;
        assert!((mean + 2.0).abs() < 0.06, "log-mean {mean}");
    }

    #[test]
    fn conditional_items_can_leave_one_stem_and_take_their_own_sigmas() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
        let cond = SigmaDistribution { mean: -0.5, std: 0.7 };
        let mix = StemTaskMix { joint: 0.3, conditional: 0.6, independent: 0.1, one_left: 0.5, conditional_sigma: Some(cond), one_left_weights: None };
        let (n, c) = (20_000, 4);
        let d = draw_stem_noise(&mut rng, SigmaDistribution { mean: -2.0, std: 1.8 }, mix, n, c, 1);
        let (mut conditional, mut one_left, mut logs, mut joint_logs) = (0usize, 0usize, Vec::new(), Vec::new());
        for (i, t) in d.tasks.iter().enumerate() {
            let s = &d.sigmas[i * c..(i + 1) * c];
            match *t {
                StemTask::Conditional { given } => {
                    conditional += 1;
                    one_left += usize::from(given.count_ones() == 3);
                    logs.push((s.iter().copied().fold(0.0, f32::max) as f64).ln());
                }
                StemTask::Joint => joint_logs.push((s[0] as f64).ln()),
                StemTask::Independent => {}
            }
        }
        // half of them by the knob, and the uniform half hits the 4 one-left subsets of 14
        let share = one_left as f64 / conditional as f64;
        assert!((share - (0.5 + 0.5 * 4.0 / 14.0)).abs() < 0.02, "one-left share {share}");
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        assert!((mean(&logs) + 0.5).abs() < 0.03, "conditional log-mean {}", mean(&logs));
        assert!((mean(&joint_logs) + 2.0).abs() < 0.1, "joint log-mean {}", mean(&joint_logs));
    }

    #[test]
    fn one_left_items_leave_each_stem_by_its_weight() {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
        let weights = [0.55, 0.15, 0.3, 0.0];
        let mix = StemTaskMix { joint: 0.0, conditional: 1.0, independent: 0.0, one_left: 1.0, conditional_sigma: None, one_left_weights: Some(weights) };
        let n = 20_000;
        let d = draw_stem_noise(&mut rng, SigmaDistribution::default(), mix, n, 4, 1);
        let mut left = [0usize; 4];
        for (i, t) in d.tasks.iter().enumerate() {
            let StemTask::Conditional { given } = *t else { panic!("item {i} is {t:?}") };
            assert_eq!(given.count_ones(), 3, "item {i} leaves more than one stem: {given:04b}");
            let k = (!given & 0xf).trailing_zeros() as usize;
            left[k] += 1;
            assert!(d.sigmas[i * 4 + k] > 0.0 && (0..4).filter(|&j| j != k).all(|j| d.sigmas[i * 4 + j] == 0.0));
        }
        for k in 0..4 {
            let got = left[k] as f64 / n as f64;
            assert!((got - weights[k]).abs() < 0.015, "stem {k}: {got} against {}", weights[k]);
        }
        assert_eq!(left[3], 0, "a stem with weight 0 was left");
    }

    #[test]
    fn one_stem_is_always_joint_and_draws_are_seeded() {
        let draw = |seed| {
            let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
            draw_stem_noise(&mut rng, SigmaDistribution::default(), StemTaskMix::default(), 64, 1, 3)
        };
        assert!(draw(1).tasks.iter().all(|t| *t == StemTask::Joint));
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }
}
