//! GroupNorm with its affine weight and bias, optionally followed by `h·(scale + 1) + shift`
//! (FiLM, `scale`/`shift` `[B, C, 1]`), then SiLU: the pre-activation half of a ConvBlock1d
//! ([`group_norm_scale_shift_silu`]). Forms:
//! - [`Path::FastCpu`]: [`group_norm`] over slices, two parallel passes (statistics per row,
//!   combined per group in f64; then one affine map per row and a vectorized SiLU);
//! - [`Path::CpuGrad`]: the same kernel as the forward of one op whose backward is written out
//!   by hand ([`super::group_norm_grad`]);
//! - [`Path::Cuda`]: one kernel for short groups, two otherwise (`gn_*` in kernels.cu), instead of
//!   about a dozen;
//! - [`Path::Composite`]: [`group_norm_scale_shift_silu_composite`].

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu::{expect_len, storage_f32, with_f32};
use super::group_norm_grad::{self, split_scale_shift};
use super::path::{path_for, Path};
use super::{channel, profile, simd, NORM_EPS};

/// GroupNorm with affine weight and bias, optionally followed by `h·(scale+1)+shift`
/// (`scale`, `shift`: `[B, C, 1]`) and SiLU — the pre-activation half of a ConvBlock1d.
pub fn group_norm_scale_shift_silu(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    scale_shift: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    let call = GroupNormCall { x, groups, weight, bias, scale_shift }.checked()?;
    let (_, c, l) = x.dims3()?;
    let name = || format!("group_norm_silu C{c} L{l}");
    profile::time(name, || {
        let mut inputs = vec![x, weight, bias];
        if let Some((scale, shift)) = scale_shift {
            inputs.extend([scale, shift]);
        }
        match path_for(&inputs) {
            Path::FastCpu => call.fast(),
            Path::CpuGrad => match call.cpu_grad()? {
                Some(y) => Ok(y),
                None => call.composed(Path::CpuGrad),
            },
            Path::Cuda => {
                #[cfg(feature = "cuda")]
                if let Some(y) = cuda::group_norm_silu(x, groups, weight, bias, scale_shift, NORM_EPS)? {
                    return Ok(y);
                }
                call.composed(Path::Composite)
            }
            Path::Composite => call.composed(Path::Composite),
        }
    })
}

/// The composite form of [`group_norm_scale_shift_silu`]: candle ops only, differentiable on any
/// device and dtype.
pub fn group_norm_scale_shift_silu_composite(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    scale_shift: Option<(&Tensor, &Tensor)>,
) -> Result<Tensor> {
    GroupNormCall { x, groups, weight, bias, scale_shift }.checked()?.composed(Path::Composite)
}

/// The arguments of one call, and its forms.
struct GroupNormCall<'a> {
    x: &'a Tensor,
    groups: usize,
    weight: &'a Tensor,
    bias: &'a Tensor,
    scale_shift: Option<(&'a Tensor, &'a Tensor)>,
}

impl GroupNormCall<'_> {
    /// The call, or an error where the channels of `x` do not split into the groups.
    fn checked(self) -> Result<Self> {
        let c = self.x.dims3()?.1;
        if self.groups == 0 || c % self.groups != 0 {
            candle_core::bail!("group norm: {c} channels do not split into {} groups", self.groups);
        }
        Ok(self)
    }

    /// The [`Path::FastCpu`] form.
    fn fast(&self) -> Result<Tensor> {
        let (b, c, l) = self.x.dims3()?;
        let groups = self.groups;
        let y = with_f32(self.x, |xs| {
            with_f32(self.weight, |w| {
                with_f32(self.bias, |bi| match self.scale_shift {
                    Some((scale, shift)) => {
                        let (scale, shift) = (scale.broadcast_as((b, c, 1))?, shift.broadcast_as((b, c, 1))?);
                        with_f32(&scale, |sc| with_f32(&shift, |sh| Ok(group_norm(xs, b, c, l, groups, w, bi, Some((sc, sh)), NORM_EPS, true))))
                    }
                    None => Ok(group_norm(xs, b, c, l, groups, w, bi, None, NORM_EPS, true)),
                })
            })
        })?;
        Tensor::from_vec(y, (b, c, l), &Device::Cpu)
    }

    /// The [`Path::CpuGrad`] form: one op with a hand-written backward ([`group_norm_grad`]) on
    /// `x` `[B, C, L]`, `weight`/`bias` `[C]`, `scale`/`shift` `[B, C, 1]` (CPU, f32); `None` for
    /// other shapes.
    fn cpu_grad(&self) -> Result<Option<Tensor>> {
        let (b, c, _) = self.x.dims3()?;
        let shapes_fit = self.weight.elem_count() == c
            && self.bias.elem_count() == c
            && self.scale_shift.map_or(true, |(s, t)| s.dims() == [b, c, 1] && t.dims() == [b, c, 1]);
        if !shapes_fit {
            return Ok(None);
        }
        let x = self.x.contiguous()?;
        let params = Tensor::cat(&[self.weight.flatten_all()?, self.bias.flatten_all()?], 0)?;
        let op = GroupNormSilu { groups: self.groups };
        Ok(Some(match self.scale_shift {
            Some((s, t)) => x.apply_op3(&params, &Tensor::cat(&[s.reshape((b, c))?, t.reshape((b, c))?], 1)?, op)?,
            None => x.apply_op2(&params, op)?,
        }))
    }

    /// Statistics, normalisation and SiLU from candle ops, the per-channel affine in `path`'s
    /// form ([`channel::affine_channel`]): the composite form with [`Path::Composite`].
    fn composed(&self, path: Path) -> Result<Tensor> {
        let (b, c, l) = self.x.dims3()?;
        let xg = self.x.reshape((b, self.groups, (c / self.groups) * l))?;
        let mean = xg.mean_keepdim(2)?;
        let xc = xg.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(2)?;
        let xn = xc.broadcast_div(&(var + NORM_EPS)?.sqrt()?)?.reshape((b, c, l))?;
        let mut h = channel::affine_channel(&xn, &self.weight.reshape(c)?, &self.bias.reshape(c)?, path)?;
        if let Some((scale, shift)) = self.scale_shift {
            h = h.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)?;
        }
        h.silu()
    }
}

#[derive(Clone, Copy)]
struct GroupNormSilu {
    groups: usize,
}

impl GroupNormSilu {
    fn forward(&self, x: &[f32], shape: &Shape, params: &[f32], ss: Option<&[f32]>) -> Result<(CpuStorage, Shape)> {
        let (b, c, l) = shape.dims3()?;
        let (w, bias) = params.split_at(c);
        let ss = ss.map(|s| split_scale_shift(s, b, c));
        let y = group_norm(x, b, c, l, self.groups, w, bias, ss.as_ref().map(|(a, t)| (&a[..], &t[..])), NORM_EPS, true);
        Ok((CpuStorage::F32(y), shape.clone()))
    }
}

impl CustomOp2 for GroupNormSilu {
    fn name(&self) -> &'static str {
        "group-norm-silu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward(storage_f32(s1, l1, "group-norm")?, l1.shape(), storage_f32(s2, l2, "group-norm")?, None)
    }

    fn bwd(&self, x: &Tensor, params: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dp, _) = group_norm_grad::backward(self.groups, x, params, None, grad)?;
        Ok((Some(dx), Some(dp)))
    }
}

impl CustomOp3 for GroupNormSilu {
    fn name(&self) -> &'static str {
        "group-norm-scale-shift-silu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(storage_f32(s1, l1, "group-norm")?, l1.shape(), storage_f32(s2, l2, "group-norm")?, Some(storage_f32(s3, l3, "group-norm")?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        ss: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dp, dss) = group_norm_grad::backward(self.groups, x, params, Some(ss), grad)?;
        Ok((Some(dx), Some(dp), dss))
    }
}

/// GroupNorm (`groups`, affine `weight`, `bias`, eps) → optional `h·(scale + 1) + shift` (`scale`,
/// `shift`: `[B·C]`) → optional SiLU, on `x` `[B, C, L]`.
///
/// Pass 1 (parallel over rows): each channel row's mean and centered sum of squares; rows are
/// combined per group exactly (Chan et al.), in f64. Pass 2 (parallel over rows): one affine map
/// per row, then SiLU.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &[f32],
    batch: usize,
    c: usize,
    len: usize,
    groups: usize,
    weight: &[f32],
    bias: &[f32],
    scale_shift: Option<(&[f32], &[f32])>,
    eps: f64,
    silu: bool,
) -> Vec<f32> {
    let rows = batch * c;
    assert!(groups > 0 && c % groups == 0, "group_norm: {c} channels in {groups} groups");
    expect_len("group_norm input", x, rows * len);
    expect_len("group_norm weight", weight, c);
    expect_len("group_norm bias", bias, c);
    if let Some((scale, shift)) = scale_shift {
        expect_len("group_norm scale", scale, rows);
        expect_len("group_norm shift", shift, rows);
    }
    let stats: Vec<(f64, f64)> = x
        .par_chunks(len.max(1))
        .map(|row| {
            let mean = simd::sum(row) / len as f64;
            (mean, simd::centered_sq_sum(row, mean as f32))
        })
        .collect();
    let cpg = c / groups;
    let mut coef = vec![(0f32, 0f32); rows];
    for b in 0..batch {
        for g in 0..groups {
            let rs = &stats[b * c + g * cpg..b * c + (g + 1) * cpg];
            let mean = rs.iter().map(|s| s.0).sum::<f64>() / cpg as f64;
            let m2: f64 = rs.iter().map(|&(m, q)| q + len as f64 * (m - mean) * (m - mean)).sum();
            let rstd = 1.0 / (m2 / (cpg * len) as f64 + eps).sqrt();
            for ch in g * cpg..(g + 1) * cpg {
                let mut a = weight[ch] as f64 * rstd;
                let mut o = bias[ch] as f64 - mean * a;
                if let Some((scale, shift)) = scale_shift {
                    let s1 = scale[b * c + ch] as f64 + 1.0;
                    a *= s1;
                    o = o * s1 + shift[b * c + ch] as f64;
                }
                coef[b * c + ch] = (a as f32, o as f32);
            }
        }
    }
    let mut out: Vec<f32> = Vec::with_capacity(rows * len);
    // SAFETY: every element is written below before the vector is read (f32 has no invalid bits).
    unsafe { out.set_len(rows * len) };
    out.par_chunks_mut(len.max(1)).zip(x.par_chunks(len.max(1))).enumerate().for_each(|(r, (y, xr))| {
        let (a, o) = coef[r];
        if silu {
            simd::silu_affine(xr, y, a, o);
        } else {
            simd::affine(xr, y, a, o);
        }
    });
    out
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaDevice, CudaStorage, DType, Result, Shape, Tensor};

    use crate::ops::cuda::{func, launch_err, with_slice, Kernel, Op};

    /// GroupNorm + weight/bias + optional `(scale, shift)` (`[B, C, 1]`) + SiLU, or `None`.
    pub fn group_norm_silu(
        x: &Tensor,
        groups: usize,
        weight: &Tensor,
        bias: &Tensor,
        scale_shift: Option<(&Tensor, &Tensor)>,
        eps: f64,
    ) -> Result<Option<Tensor>> {
        if x.rank() != 3 {
            return Ok(None);
        }
        let (b, c, _) = x.dims3()?;
        let ss = match scale_shift {
            Some((a, s)) => Some((a.reshape((b, c))?.contiguous()?, s.reshape((b, c))?.contiguous()?)),
            None => None,
        };
        let op = GroupNormSilu { groups, weight: weight.flatten_all()?, bias: bias.flatten_all()?, scale_shift: ss, eps: eps as f32 };
        Ok(Some(x.contiguous()?.apply_op1_no_bwd(&Op(op))?))
    }

    struct GroupNormSilu {
        groups: usize,
        weight: Tensor,
        bias: Tensor,
        scale_shift: Option<(Tensor, Tensor)>,
        eps: f32,
    }

    impl Kernel for GroupNormSilu {
        const NAME: &'static str = "msdm-group-norm-silu";

        fn run<T: CudaDType + DeviceRepr>(&self, dev: &CudaDevice, x: &CudaView<'_, T>, shape: &Shape, dtype: DType) -> Result<(CudaStorage, Shape)> {
            let (b, c, l) = shape.dims3()?;
            let n = (c / self.groups) * l;
            if n <= SINGLE_BLOCK_GROUP {
                return Ok((self.run_single(dev, x, b, c, l, dtype)?, shape.clone()));
            }
            // enough blocks to fill the GPU for the deep levels' short groups too
            let splits = (n / 2048).clamp(1, 64);
            // every partial sum is written by pass 1
            let mut partial = unsafe { dev.alloc::<f32>(b * self.groups * splits * 2) }?;
            let stream = dev.cuda_stream();
            {
                let f = func(dev, "gn_partial", dtype)?;
                let mut args = stream.launch_builder(&f);
                let (n64, splits32) = (n as u64, splits as u32);
                args.arg(x).arg(&mut partial).arg(&n64).arg(&splits32);
                let cfg = LaunchConfig { grid_dim: (splits as u32, (b * self.groups) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
                unsafe { args.launch(cfg) }.map_err(launch_err)?;
            }
            let cfg = LaunchConfig { grid_dim: (l.div_ceil(1024) as u32, (b * c) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            let y = self.normalise(dev, "gn_apply", dtype, cfg, x, Some((&partial, splits)), b, c, l)?;
            Ok((y, shape.clone()))
        }
    }

    /// Groups of at most this many values are normalised by one block in one kernel.
    const SINGLE_BLOCK_GROUP: usize = 16_384;

    impl GroupNormSilu {
        fn run_single<T: CudaDType + DeviceRepr>(&self, dev: &CudaDevice, x: &CudaView<'_, T>, b: usize, c: usize, l: usize, dtype: DType) -> Result<CudaStorage> {
            let cfg = LaunchConfig { grid_dim: ((b * self.groups) as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
            self.normalise(dev, "gn_single", dtype, cfg, x, None, b, c, l)
        }

        /// Launches a normalising kernel (`gn_apply` with pass 1's partial sums, or `gn_single`);
        /// both take (x, partial, weight, bias, scale, shift, y, channels, groups, len, splits, eps),
        /// null pointers for an absent scale/shift or partial sums.
        #[allow(clippy::too_many_arguments)]
        fn normalise<T: CudaDType + DeviceRepr>(
            &self,
            dev: &CudaDevice,
            kernel: &str,
            dtype: DType,
            cfg: LaunchConfig,
            x: &CudaView<'_, T>,
            partial: Option<(&CudaSlice<f32>, usize)>,
            b: usize,
            c: usize,
            l: usize,
        ) -> Result<CudaStorage> {
            let mut y = unsafe { dev.alloc::<T>(b * c * l) }?;
            let f = func(dev, kernel, dtype)?;
            let stream = dev.cuda_stream();
            let (c32, g32, l32) = (c as u32, self.groups as u32, l as u32);
            let splits = partial.map_or(0, |(_, n)| n as u32);
            let null: u64 = 0;
            let launch = |scale_shift: Option<(&CudaView<'_, T>, &CudaView<'_, T>)>, w: &CudaView<'_, T>, bias: &CudaView<'_, T>, y: &mut CudaSlice<T>| -> Result<()> {
                let mut args = stream.launch_builder(&f);
                args.arg(x);
                match partial {
                    Some((p, _)) => args.arg(p),
                    None => args.arg(&null),
                };
                args.arg(w).arg(bias);
                match scale_shift {
                    Some((sc, sh)) => args.arg(sc).arg(sh),
                    None => args.arg(&null).arg(&null),
                };
                args.arg(y).arg(&c32).arg(&g32).arg(&l32).arg(&splits).arg(&self.eps);
                unsafe { args.launch(cfg) }.map_err(launch_err)?;
                Ok(())
            };
            with_slice::<T, _>(&self.weight, |w| {
                with_slice::<T, _>(&self.bias, |bias| match &self.scale_shift {
                    Some((sc, sh)) => with_slice::<T, _>(sc, |sc| with_slice::<T, _>(sh, |sh| launch(Some((&sc, &sh)), &w, &bias, &mut y))),
                    None => launch(None, &w, &bias, &mut y),
                })
            })?;
            Ok(CudaStorage::wrap_cuda_slice(y, dev.clone()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{max_diff, rand, rel_diff};

    #[test]
    fn fast_group_norm_matches_composite() {
        for (c, groups, l) in [(8usize, 1usize, 33usize), (8, 4, 64), (16, 8, 31), (4, 4, 5), (64, 8, 256)] {
            let x = (rand(&[2, c, l], 50 + c as u64) * 3.0).unwrap().affine(1.0, 0.7).unwrap();
            let w = rand(&[c], 51).affine(0.2, 1.0).unwrap();
            let b = rand(&[c], 52);
            // scale/shift as the network makes them: halves of a [B, 2C, 1] projection
            let ss = rand(&[2, 2 * c, 1], 53);
            let (scale, shift) = (ss.narrow(1, 0, c).unwrap(), ss.narrow(1, c, c).unwrap());
            for with_ss in [false, true] {
                let sso = if with_ss { Some((&scale, &shift)) } else { None };
                let fast = group_norm_scale_shift_silu(&x, groups, &w, &b, sso).unwrap();
                let comp = group_norm_scale_shift_silu_composite(&x, groups, &w, &b, sso).unwrap();
                assert!(!fast.track_op());
                assert!(rel_diff(&fast, &comp) < 1e-5, "c={c} g={groups} l={l} ss={with_ss}: {}", rel_diff(&fast, &comp));
            }
        }
    }

    /// The trainable fused GroupNorm + scale/shift + SiLU equals the composite, values and every
    /// gradient (x, weight, bias, scale, shift).
    #[test]
    fn trainable_group_norm_matches_composite_with_gradients() {
        // lengths below, between and at multiples of the backward's 16 SIMD lanes
        for (with_ss, (bsz, l)) in [true, false].into_iter().flat_map(|s| [(2, 5), (3, 37), (2, 64)].map(|bl| (s, bl))) {
            let v = |shape: &[usize], seed| candle_core::Var::from_tensor(&rand(shape, seed)).unwrap();
            let (x, w, b) = (v(&[bsz, 6, l], 11), v(&[6], 12), v(&[6], 13));
            let (sc, sh) = (v(&[bsz, 6, 1], 14), v(&[bsz, 6, 1], 15));
            let ss = with_ss.then_some((sc.as_tensor(), sh.as_tensor()));
            let ours = GroupNormCall { x: &x, groups: 3, weight: &w, bias: &b, scale_shift: ss }.cpu_grad().unwrap().unwrap();
            let plain = group_norm_scale_shift_silu_composite(&x, 3, &w, &b, ss).unwrap();
            assert!(max_diff(&ours, &plain) < 1e-5, "values differ by {}", max_diff(&ours, &plain));
            let probe = rand(&[bsz, 6, l], 16);
            let ga = (&ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let gb = (&plain * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let vars: Vec<&candle_core::Var> = if with_ss { vec![&x, &w, &b, &sc, &sh] } else { vec![&x, &w, &b] };
            for (i, var) in vars.into_iter().enumerate() {
                let (a, e) = (ga.get(var).unwrap(), gb.get(var).unwrap());
                assert_eq!(a.dims(), e.dims());
                assert!(crate::ops::tests::rel_diff(a, e) < 1e-4, "L {l}: gradient {i} differs by {}", max_diff(a, e));
            }
        }
    }
}
