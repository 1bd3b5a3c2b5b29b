//! Fused CUDA kernels for inference (src/ops/kernels.cu, compiled to PTX by build.rs), each in
//! place of several candle ops: GroupNorm with its affine, scale/shift and SiLU (one kernel for
//! short groups, two otherwise, instead of about a dozen); LayerNorm (one instead of eight); a
//! convolution's columns (one instead of k shifted copies and a stack); the per-channel bias add;
//! a scaled skip concatenation. Fewer, larger kernels matter on a GPU even inside a CUDA graph
//! ([`crate::graph`]), where each kernel still costs a few microseconds of launch and tail.
//!
//! Each entry point returns `None` when it does not apply (not on CUDA, gradients tracked, mixed
//! dtypes, fast kernels off, or the PTX would not load on this GPU), and the caller takes the
//! composite path.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice};
use candle_core::{CudaDevice, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/msdm_kernels.ptx"));
const MODULE: &str = "msdm_kernels";

fn applies(ts: &[&Tensor]) -> bool {
    super::fast_kernels()
        && ts.iter().all(|t| t.device().is_cuda() && !t.track_op() && t.dtype() == ts[0].dtype())
        && matches!(ts[0].dtype(), DType::F32 | DType::BF16 | DType::F16)
        && loads(ts[0].device())
}

/// Whether our PTX loads on this GPU (checked once; a GPU older than compute capability 7.5
/// refuses it, and then the composite ops serve).
fn loads(device: &candle_core::Device) -> bool {
    static LOADS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADS.get_or_init(|| {
        let ok = match device {
            candle_core::Device::Cuda(dev) => func(dev, "im2col", DType::F32).is_ok(),
            _ => false,
        };
        if !ok {
            eprintln!("warning: the fused CUDA kernels do not load on this GPU; using candle's ops");
        }
        ok
    })
}

fn suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

fn func(dev: &CudaDevice, name: &str, dtype: DType) -> Result<CudaFunction> {
    Ok(dev.get_or_load_custom_func(&format!("{name}_{}", suffix(dtype)), MODULE, PTX)?.into_cuda_function())
}

/// The contiguous storage of a CUDA tensor, as a slice of `T` starting at its first element.
fn with_slice<T: CudaDType + DeviceRepr, R>(
    t: &Tensor,
    f: impl FnOnce(CudaView<'_, T>) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else { candle_core::bail!("expected a CUDA tensor") };
    f(view(cs.as_cuda_slice::<T>()?, layout)?)
}

fn launch_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("msdm CUDA kernel: {e}"))
}

/// A fused kernel over one CUDA tensor of any float dtype: `run` returns the output and its shape.
trait Kernel {
    const NAME: &'static str;
    /// `x`: the input's values (contiguous), `shape` its shape, `dtype` its dtype.
    fn run<T: CudaDType + DeviceRepr>(&self, dev: &CudaDevice, x: &CudaView<'_, T>, shape: &Shape, dtype: DType) -> Result<(CudaStorage, Shape)>;
}

/// The values of a contiguous tensor's storage, from its first element.
fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout) -> Result<CudaView<'a, T>> {
    if !l.is_contiguous() {
        candle_core::bail!("msdm CUDA kernel: the input must be contiguous");
    }
    Ok(s.slice(l.start_offset()..l.start_offset() + l.shape().elem_count()))
}

/// A [`Kernel`] as a candle custom op (forward only, CUDA only).
struct Op<K>(K);

impl<K: Kernel> CustomOp1 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("{} runs on CUDA only", K::NAME)
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s.device();
        match &s.slice {
            CudaStorageSlice::F32(x) => self.0.run(dev, &view(x, l)?, l.shape(), DType::F32),
            CudaStorageSlice::BF16(x) => self.0.run(dev, &view(x, l)?, l.shape(), DType::BF16),
            CudaStorageSlice::F16(x) => self.0.run(dev, &view(x, l)?, l.shape(), DType::F16),
            _ => candle_core::bail!("{}: unsupported dtype {:?}", K::NAME, s.dtype()),
        }
    }
}

/// GroupNorm + weight/bias + optional `(scale, shift)` (`[B, C, 1]`) + SiLU, or `None`.
pub fn group_norm_silu(
    x: &Tensor,
    groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    scale_shift: Option<(&Tensor, &Tensor)>,
    eps: f64,
) -> Result<Option<Tensor>> {
    let mut all = vec![x, weight, bias];
    if let Some((a, b)) = scale_shift {
        all.extend([a, b]);
    }
    if !applies(&all) || x.rank() != 3 {
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


/// The columns of a convolution with kernel `k`, stride `s` and padding `pad`
/// (`[B, C, L]` → `[B, C·k, L_out]`, row `c·k + j`), or `None`.
pub fn im2col(x: &Tensor, k: usize, s: usize, pad: usize) -> Result<Option<Tensor>> {
    if !applies(&[x]) || x.rank() != 3 {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1_no_bwd(&Op(Columns { k, s, pad }))?))
}

struct Columns {
    k: usize,
    s: usize,
    pad: usize,
}

impl Kernel for Columns {
    const NAME: &'static str = "msdm-im2col";

    fn run<T: CudaDType + DeviceRepr>(&self, dev: &CudaDevice, x: &CudaView<'_, T>, shape: &Shape, dtype: DType) -> Result<(CudaStorage, Shape)> {
        let (b, c, l) = shape.dims3()?;
        if l + 2 * self.pad < self.k || self.s == 0 {
            candle_core::bail!("conv1d: input length {l} is too short for kernel {} (padding {})", self.k, self.pad);
        }
        let l_out = (l + 2 * self.pad - self.k) / self.s + 1;
        let total = b * c * self.k * l_out;
        let mut cols = unsafe { dev.alloc::<T>(total) }?;
        let f = func(dev, "im2col", dtype)?;
        let stream = dev.cuda_stream();
        let mut args = stream.launch_builder(&f);
        let dims = [b as u32, c as u32, l as u32, self.k as u32, self.s as u32, self.pad as u32, l_out as u32];
        args.arg(x).arg(&mut cols);
        for d in &dims {
            args.arg(d);
        }
        let blocks = total.div_ceil(256).min(65_535 * 8) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        unsafe { args.launch(cfg) }.map_err(launch_err)?;
        Ok((CudaStorage::wrap_cuda_slice(cols, dev.clone()), Shape::from((b, c * self.k, l_out))))
    }
}


/// LayerNorm without bias over dimension `dim` (1: the channels of `[B, C, L]`, 2: the last) of a
/// rank-3 tensor, `g` holding that dimension's gains, or `None`.
pub fn layer_norm(x: &Tensor, g: &Tensor, dim: usize, eps: f64) -> Result<Option<Tensor>> {
    if !applies(&[x, g]) || x.rank() != 3 || !(dim == 1 || dim == 2) || g.elem_count() != x.dim(dim)? {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1_no_bwd(&Op(LayerNorm { g: g.flatten_all()?, channels: dim == 1, eps: eps as f32 }))?))
}

struct LayerNorm {
    g: Tensor,
    channels: bool,
    eps: f32,
}

impl Kernel for LayerNorm {
    const NAME: &'static str = "msdm-layer-norm";

    fn run<T: CudaDType + DeviceRepr>(&self, dev: &CudaDevice, x: &CudaView<'_, T>, shape: &Shape, dtype: DType) -> Result<(CudaStorage, Shape)> {
        let (b, c, l) = shape.dims3()?;
        let mut y = unsafe { dev.alloc::<T>(b * c * l) }?;
        let stream = dev.cuda_stream();
        with_slice::<T, _>(&self.g, |g| {
            if self.channels {
                let f = func(dev, "ln_channels", dtype)?;
                let mut args = stream.launch_builder(&f);
                let (c32, l32) = (c as u32, l as u32);
                args.arg(x).arg(&g).arg(&mut y).arg(&c32).arg(&l32).arg(&self.eps);
                let cfg = LaunchConfig { grid_dim: (l.div_ceil(32) as u32, b as u32, 1), block_dim: (32, 32, 1), shared_mem_bytes: 0 };
                unsafe { args.launch(cfg) }.map_err(launch_err)?;
            } else {
                let f = func(dev, "ln_last", dtype)?;
                let mut args = stream.launch_builder(&f);
                let l32 = l as u32;
                args.arg(x).arg(&g).arg(&mut y).arg(&l32).arg(&self.eps);
                let threads = if l >= 1024 { 256 } else { 128 };
                let cfg = LaunchConfig { grid_dim: ((b * c) as u32, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
                unsafe { args.launch(cfg) }.map_err(launch_err)?;
            }
            Ok(())
        })?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape.clone()))
    }
}


/// Whether `x` is on CUDA, tracks no gradient and the fused kernels are on: the attention's
/// softmax may then run in the tensor's own dtype (candle's CUDA softmax accumulates in f32).
pub fn inference(x: &Tensor) -> bool {
    applies(&[x])
}

/// `x + bias` with `bias` `[C]` added along the channels of `x` `[B, C, L]`, or `None`.
pub fn add_channel(x: &Tensor, bias: &Tensor) -> Result<Option<Tensor>> {
    if !applies(&[x, bias]) || x.rank() != 3 || bias.elem_count() != x.dim(1)? {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op1_no_bwd(&Op(AddChannel { bias: bias.flatten_all()? }))?))
}

struct AddChannel {
    bias: Tensor,
}

impl Kernel for AddChannel {
    const NAME: &'static str = "msdm-add-channel";

    fn run<T: CudaDType + DeviceRepr>(&self, dev: &CudaDevice, x: &CudaView<'_, T>, shape: &Shape, dtype: DType) -> Result<(CudaStorage, Shape)> {
        let (b, c, l) = shape.dims3()?;
        let mut y = unsafe { dev.alloc::<T>(b * c * l) }?;
        let f = func(dev, "add_channel", dtype)?;
        let stream = dev.cuda_stream();
        with_slice::<T, _>(&self.bias, |bias| {
            let mut args = stream.launch_builder(&f);
            let (c32, l32) = (c as u32, l as u32);
            args.arg(x).arg(&bias).arg(&mut y).arg(&c32).arg(&l32);
            let cfg = LaunchConfig { grid_dim: (l.div_ceil(1024) as u32, (b * c) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            unsafe { args.launch(cfg) }.map_err(launch_err)?;
            Ok(())
        })?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape.clone()))
    }
}


/// `[x, skip · scale]` along the channels of two `[B, C, L]` tensors, or `None`.
pub fn cat_scaled(x: &Tensor, skip: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    if !applies(&[x, skip]) || x.rank() != 3 || skip.rank() != 3 || x.dim(0)? != skip.dim(0)? || x.dim(2)? != skip.dim(2)? {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op2_no_bwd(&skip.contiguous()?, &CatScaled { scale: scale as f32 })?))
}

struct CatScaled {
    scale: f32,
}

impl CatScaled {
    fn run<T: CudaDType + DeviceRepr>(&self, dev: &CudaDevice, x: &CudaSlice<T>, lx: &Layout, s: &CudaSlice<T>, ls: &Layout, dtype: DType) -> Result<(CudaStorage, Shape)> {
        let (b, c1, l) = lx.shape().dims3()?;
        let c2 = ls.shape().dims3()?.1;
        let (x, s) = (view(x, lx)?, view(s, ls)?);
        let mut y = unsafe { dev.alloc::<T>(b * (c1 + c2) * l) }?;
        let f = func(dev, "cat_scaled", dtype)?;
        let stream = dev.cuda_stream();
        let mut args = stream.launch_builder(&f);
        let (c1_32, c2_32, l32) = (c1 as u32, c2 as u32, l as u32);
        args.arg(&x).arg(&s).arg(&mut y).arg(&c1_32).arg(&c2_32).arg(&l32).arg(&self.scale);
        let cfg = LaunchConfig { grid_dim: (l.div_ceil(1024) as u32, (b * (c1 + c2)) as u32, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        unsafe { args.launch(cfg) }.map_err(launch_err)?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), Shape::from((b, c1 + c2, l))))
    }
}

impl candle_core::CustomOp2 for CatScaled {
    fn name(&self) -> &'static str {
        "msdm-cat-scaled"
    }

    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("msdm-cat-scaled runs on CUDA only")
    }

    fn cuda_fwd(&self, s1: &CudaStorage, l1: &Layout, s2: &CudaStorage, l2: &Layout) -> Result<(CudaStorage, Shape)> {
        let dev = s1.device();
        match (&s1.slice, &s2.slice) {
            (CudaStorageSlice::F32(x), CudaStorageSlice::F32(s)) => self.run(dev, x, l1, s, l2, DType::F32),
            (CudaStorageSlice::BF16(x), CudaStorageSlice::BF16(s)) => self.run(dev, x, l1, s, l2, DType::BF16),
            (CudaStorageSlice::F16(x), CudaStorageSlice::F16(s)) => self.run(dev, x, l1, s, l2, DType::F16),
            _ => candle_core::bail!("msdm-cat-scaled: unsupported dtypes {:?} / {:?}", s1.dtype(), s2.dtype()),
        }
    }
}
