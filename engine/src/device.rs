//! Picking the compute device: `auto` (CUDA, then Metal, then CPU), `cpu`, `cuda`, `metal`.

use anyhow::{bail, Result};
use candle_core::Device;

pub fn select(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            if !candle_core::utils::cuda_is_available() {
                bail!("--device cuda: this build has no CUDA support; rebuild with `--features cuda` (needs the CUDA toolkit)");
            }
            cuda(0)
        }
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                bail!("--device metal: this build has no Metal support; rebuild on macOS with `--features metal`");
            }
            Ok(Device::new_metal(0)?)
        }
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = cuda(0) {
                    return Ok(d);
                }
            }
            if candle_core::utils::metal_is_available() {
                if let Ok(d) = Device::new_metal(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
        other => bail!("unknown device '{other}': use auto, cpu, cuda or metal"),
    }
}

/// CUDA device `ordinal` set up for this crate: its own stream (every thread then queues on the
/// same one, in order) and no cross-stream event tracking, which we do not need with one stream
/// and which would keep the network's calls from being captured as CUDA graphs
/// ([`crate::graph`]). Call it before any tensor is made on the device.
pub fn cuda(ordinal: usize) -> Result<Device> {
    let device = Device::new_cuda_with_stream(ordinal)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = &device {
        // SAFETY: every tensor of this device is used on its one stream (candle queues all
        // work of a device on the stream it was made with), so no cross-stream ordering is lost.
        unsafe { d.disable_event_tracking() };
    }
    Ok(device)
}

/// A short human-readable name ("CPU (2 threads)", "CUDA 0", "Metal").
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("CPU ({} threads)", rayon::current_num_threads()),
        Device::Cuda(_) => "CUDA".to_string(),
        Device::Metal(_) => "Metal".to_string(),
    }
}
