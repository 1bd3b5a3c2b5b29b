//! What every CUDA kernel shares: our PTX (src/ops/kernels.cu, compiled by build.rs), the check
//! behind [`super::Path::Cuda`] ([`takes`]), function lookup, views of contiguous storage, and
//! [`Op`], which turns a [`Kernel`] over one tensor of any float dtype into a candle custom op
//! (forward only). The kernels themselves live with their op family, each in a
//! `#[cfg(feature = "cuda")] mod cuda` next to its CPU form ([`super::group_norm`], ...).
//!
//! Fewer, larger kernels matter on a GPU even inside a CUDA graph ([`crate::graph`]), where each
//! kernel still costs a few microseconds of launch and tail.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaView, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaStorageSlice};
use candle_core::{CudaDevice, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/msdm_kernels.ptx"));
const MODULE: &str = "msdm_kernels";

/// Whether our kernels take these tensors: all on CUDA, none tracking a gradient, one float
/// dtype, and our PTX loads on this GPU (whether the fast kernels are on is [`super::path_for`]'s
/// part).
pub fn takes(ts: &[&Tensor]) -> bool {
    !ts.is_empty()
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

pub fn func(dev: &CudaDevice, name: &str, dtype: DType) -> Result<CudaFunction> {
    Ok(dev.get_or_load_custom_func(&format!("{name}_{}", suffix(dtype)), MODULE, PTX)?.into_cuda_function())
}

/// The contiguous storage of a CUDA tensor, as a slice of `T` starting at its first element.
pub fn with_slice<T: CudaDType + DeviceRepr, R>(
    t: &Tensor,
    f: impl FnOnce(CudaView<'_, T>) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cuda(cs) = &*storage else { candle_core::bail!("expected a CUDA tensor") };
    f(view(cs.as_cuda_slice::<T>()?, layout)?)
}

pub fn launch_err(e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("msdm CUDA kernel: {e}"))
}

/// A fused kernel over one CUDA tensor of any float dtype: `run` returns the output and its shape.
pub trait Kernel {
    const NAME: &'static str;
    /// `x`: the input's values (contiguous), `shape` its shape, `dtype` its dtype.
    fn run<T: CudaDType + DeviceRepr>(&self, dev: &CudaDevice, x: &CudaView<'_, T>, shape: &Shape, dtype: DType) -> Result<(CudaStorage, Shape)>;
}

/// The values of a contiguous tensor's storage, from its first element.
pub fn view<'a, T>(s: &'a CudaSlice<T>, l: &Layout) -> Result<CudaView<'a, T>> {
    if !l.is_contiguous() {
        candle_core::bail!("msdm CUDA kernel: the input must be contiguous");
    }
    Ok(s.slice(l.start_offset()..l.start_offset() + l.shape().elem_count()))
}

/// A [`Kernel`] as a candle custom op (forward only, CUDA only).
pub struct Op<K>(pub K);

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
