//! Moving samples between time and channels: [`patch`], [`unpatch`], [`upsample_nearest`].
//! Composite (a reshape and at most one copy in candle) on every path, except that
//! [`Path::FastCpu`] gives [`patch`] and [`unpatch`] [`super::cpu::transpose`]: candle's strided copy
//! walks one side with a stride of the whole window (4,096 floats in the bundled model), which
//! made them 3.6 of the 88 ms of a small-model call at batch 4.

use candle_core::{Device, Result, Tensor};
use rayon::prelude::*;

use super::cpu::{expect_len, transpose, with_f32};
use super::path::{path_for, Path};
use super::profile;

/// Nearest-neighbour upsampling by `f` along time.
pub fn upsample_nearest(x: &Tensor, f: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    x.unsqueeze(3)?.broadcast_as((b, c, l, f))?.reshape((b, c, l * f))
}

/// `[B, C, L]` → `[B, C·p, L/p]` with `out[c·p + i, l] = x[c, l·p + i]`.
pub fn patch(x: &Tensor, p: usize) -> Result<Tensor> {
    profile::time(|| format!("patch {:?}", x.dims()), || match path_for(&[x]) {
        Path::FastCpu => {
            let (b, c, l) = x.dims3()?;
            if p == 0 || l % p != 0 {
                return patch_composite(x, p);
            }
            // per channel, [L/p, p] → [p, L/p]
            let y = with_f32(x, |xs| Ok(transpose_blocks(xs, b * c, l / p, p)))?;
            Tensor::from_vec(y, (b, c * p, l / p), &Device::Cpu)
        }
        Path::CpuGrad | Path::Cuda | Path::Composite => patch_composite(x, p),
    })
}

fn patch_composite(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, c, l) = x.dims3()?;
    x.reshape((b, c, l / p, p))?.transpose(2, 3)?.reshape((b, c * p, l / p))
}

/// Inverse of [`patch`].
pub fn unpatch(x: &Tensor, p: usize) -> Result<Tensor> {
    profile::time(|| format!("unpatch {:?}", x.dims()), || match path_for(&[x]) {
        Path::FastCpu => {
            let (b, cp, l) = x.dims3()?;
            if p == 0 || cp % p != 0 {
                return unpatch_composite(x, p);
            }
            // per output channel, [p, L] → [L, p]
            let y = with_f32(x, |xs| Ok(transpose_blocks(xs, b * cp / p, p, l)))?;
            Tensor::from_vec(y, (b, cp / p, l * p), &Device::Cpu)
        }
        Path::CpuGrad | Path::Cuda | Path::Composite => unpatch_composite(x, p),
    })
}

/// `count` row-major `[rows, cols]` matrices, each transposed to `[cols, rows]`.
fn transpose_blocks(x: &[f32], count: usize, rows: usize, cols: usize) -> Vec<f32> {
    let n = rows * cols;
    expect_len("transpose input", x, count * n);
    let mut y = vec![0f32; count * n];
    if n > 0 {
        y.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(ym, xm)| transpose(xm, rows, cols, ym));
    }
    y
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

    #[test]
    fn fast_patch_unpatch_equal_composite() {
        // lengths that are not multiples of the tile, batch > 1, a strided input
        for (shape, p) in [([3, 5, 16 * 37], 16), ([2, 4, 6 * 50], 6), ([1, 1, 4], 4)] {
            let x = rand(&shape, 10);
            let fast = patch(&x, p).unwrap();
            assert_eq!(fast.dims(), patch_composite(&x, p).unwrap().dims());
            assert!(max_diff(&fast, &patch_composite(&x, p).unwrap()) == 0.0, "patch {shape:?}");
            assert!(max_diff(&unpatch(&fast, p).unwrap(), &unpatch_composite(&fast, p).unwrap()) == 0.0);
            assert!(max_diff(&unpatch(&fast, p).unwrap(), &x) == 0.0, "unpatch {shape:?}");
        }
        let xt = rand(&[2, 40, 3], 11).transpose(1, 2).unwrap();
        assert!(max_diff(&patch(&xt, 8).unwrap(), &patch_composite(&xt, 8).unwrap()) == 0.0);
    }
}
