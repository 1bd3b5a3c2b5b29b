//! The score network replayed as one CUDA graph.
//!
//! One call of the paper's network is about 900 kernels, each launched from the host
//! by candle. On an H100 the launches, not the arithmetic, set the pace: about 30 ms per call
//! whatever the input length (docs/gpu.md). So on CUDA the network's first call for an input
//! shape runs eagerly once (to warm cuBLAS and candle's cache of small host-to-device uploads),
//! then once more under stream capture; the captured graph reads its input from two buffers that
//! every later call overwrites, and replays all kernels in one launch. The output is copied out
//! of the graph's memory before it is returned, since the next replay reuses that memory.
//!
//! Only inference on CUDA takes this path (no gradient tracking), and only when the device was
//! made by [`crate::device`] (its own stream, no cross-stream event tracking, which capture does
//! not allow). If capture fails for any reason, the graphs are turned off for that network and
//! every call runs eagerly, with a warning. `MSDM_CUDA_GRAPH=0` turns them off, and so does op
//! profiling (`MSDM_OPS_PROFILE`, which waits for the device around every op).

use candle_core::{Result, Tensor};

/// The network call `F(x, c_noise)` being graphed.
pub type NetCall<'a> = &'a dyn Fn(&Tensor, &Tensor) -> Result<Tensor>;

/// Whether graphs are allowed at all (`MSDM_CUDA_GRAPH` is not `0`; read once).
pub fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("MSDM_CUDA_GRAPH").map_or(true, |v| v != "0"))
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::*;

    /// Without CUDA there is nothing to capture: every call runs as it is.
    #[derive(Default)]
    pub struct NetGraphs;

    impl NetGraphs {
        pub fn run(&self, x: &Tensor, c_noise: &Tensor, net: NetCall) -> Result<Tensor> {
            net(x, c_noise)
        }

        pub fn disable(&self) {}

        pub fn held(&self) -> usize {
            0
        }
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use candle_core::cuda_backend::cudarc::driver::{sys, CudaGraph};
    use candle_core::{DType, Device};

    /// Graphs kept per network: one per input shape in use (separation uses the full batch and,
    /// for the last windows of a file, a smaller one).
    const KEEP: usize = 3;

    struct Captured {
        dims: Vec<usize>,
        dtype: DType,
        x: Tensor,
        c_noise: Tensor,
        /// Lives in the graph's memory; freed and reallocated (same address) at every replay
        /// (`AUTO_FREE_ON_LAUNCH`). Declared before `graph`, so it is freed before the graph is
        /// destroyed.
        out: Tensor,
        graph: CudaGraph,
    }

    // SAFETY: a `CudaGraph` is a handle to a graph executable that is only ever used under the
    // `NetGraphs` mutex, one thread at a time, which is what CUDA requires of graph objects.
    unsafe impl Send for Captured {}

    #[derive(Default)]
    pub struct NetGraphs {
        captured: Mutex<Vec<Captured>>,
        off: AtomicBool,
    }

    impl NetGraphs {
        /// Every later call of this network runs eagerly.
        pub fn disable(&self) {
            self.off.store(true, Ordering::Relaxed);
        }

        /// Graphs held now (one per input shape in use).
        pub fn held(&self) -> usize {
            self.captured.lock().map_or(0, |c| c.len())
        }

        pub fn run(&self, x: &Tensor, c_noise: &Tensor, net: NetCall) -> Result<Tensor> {
            let Device::Cuda(dev) = x.device() else { return net(x, c_noise) };
            if self.off.load(Ordering::Relaxed) || !enabled() || crate::ops::profile::enabled() || x.track_op() || dev.is_event_tracking() {
                return net(x, c_noise);
            }
            let mut captured = self.captured.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = captured.iter().position(|c| c.dims == x.dims() && c.dtype == x.dtype() && c.c_noise.dims() == c_noise.dims()) {
                let c = captured.remove(i);
                c.x.slice_set(&x.contiguous()?, 0, 0)?;
                c.c_noise.slice_set(&c_noise.contiguous()?, 0, 0)?;
                c.graph.launch().map_err(candle_core::Error::wrap)?;
                let y = c.out.copy()?;
                captured.push(c); // most recently used last
                return Ok(y);
            }
            let (x_in, c_in) = (x.copy()?, c_noise.copy()?);
            let _cache = dev.enable_cuda_graph_htod_cache();
            // The eager call: its result is this call's answer, and it warms what capture needs.
            let y = net(&x_in, &c_in)?;
            if y.track_op() {
                self.off.store(true, Ordering::Relaxed);
                return Ok(y);
            }
            match capture(dev, &x_in, &c_in, net) {
                Ok((out, graph)) => {
                    if captured.len() >= KEEP {
                        captured.remove(0);
                    }
                    captured.push(Captured { dims: x.dims().to_vec(), dtype: x.dtype(), x: x_in, c_noise: c_in, out, graph });
                }
                Err(e) => {
                    // Tensors freed inside a broken capture leave their error on the context,
                    // where the next CUDA call would report it: clear it.
                    let _ = dev.cuda_stream().context().check_err();
                    eprintln!("warning: CUDA graph capture failed ({e}); the network runs without graphs");
                    self.off.store(true, Ordering::Relaxed);
                }
            }
            Ok(y)
        }
    }

    fn capture(dev: &candle_core::CudaDevice, x: &Tensor, c_noise: &Tensor, net: NetCall) -> Result<(Tensor, CudaGraph)> {
        let stream = dev.cuda_stream();
        stream.synchronize().map_err(candle_core::Error::wrap)?;
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(candle_core::Error::wrap)?;
        let out = net(x, c_noise);
        // Capture must end whatever happened inside it.
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
        let out = out?;
        let graph = graph.map_err(candle_core::Error::wrap)?.ok_or_else(|| candle_core::Error::Msg("the captured graph is empty".into()))?;
        graph.upload().map_err(candle_core::Error::wrap)?;
        // One replay now, so that `out` holds memory of a launch (dropping it frees that).
        graph.launch().map_err(candle_core::Error::wrap)?;
        stream.synchronize().map_err(candle_core::Error::wrap)?;
        Ok((out, graph))
    }
}

pub use imp::NetGraphs;
