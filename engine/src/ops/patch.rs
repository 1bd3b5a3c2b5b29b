//! Moving samples between time and channels: [`patch`], [`unpatch`], [`upsample_nearest`].
//! Composite only on every path: each is a reshape and at most one copy in candle already.

use candle_core::{Result, Tensor};

use super::profile;

/// Nearest-neighbour upsampling by `f` along time.
pub fn upsample_nearest(x: &Tensor, f: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    x.unsqueeze(3)?.broadcast_as((b, c, l, f))?.reshape((b, c, l * f))
}

/// `[B, C, L]` → `[B, C·p, L/p]` with `out[c·p + i, l] = x[c, l·p + i]`.
pub fn patch(x: &Tensor, p: usize) -> Result<Tensor> {
    profile::time(|| format!("patch {:?}", x.dims()), || patch_composite(x, p))
}

fn patch_composite(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    x.reshape((b, c, l / p, p))?.transpose(2, 3)?.reshape((b, c * p, l / p))
}

/// Inverse of [`patch`].
pub fn unpatch(x: &Tensor, p: usize) -> Result<Tensor> {
    profile::time(|| format!("unpatch {:?}", x.dims()), || unpatch_composite(x, p))
}

fn unpatch_composite(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, cp, l) = x.dims3()?;
    x.reshape((b, cp / p, p, l))?.transpose(2, 3)?.reshape((b, cp / p, l * p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{max_diff, rand};

    #[test]
    fn patch_unpatch_fold() {
        let x = rand(&[1, 2, 8], 9);
        let p = patch(&x, 4).unwrap();
        let xv: Vec<Vec<f32>> = x.squeeze(0).unwrap().to_vec2().unwrap();
        let pv: Vec<Vec<f32>> = p.squeeze(0).unwrap().to_vec2().unwrap();
        // out[c·p + i, l] = x[c, l·p + i]
        assert_eq!(pv[1 * 4 + 3][1], xv[1][7]);
        assert_eq!(pv[2][0], xv[0][2]);
        assert!(max_diff(&unpatch(&p, 4).unwrap(), &x) == 0.0);
    }
}
