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
            Ok(Device::new_cuda(0)?)
        }
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                bail!("--device metal: this build has no Metal support; rebuild on macOS with `--features metal`");
            }
            Ok(Device::new_metal(0)?)
        }
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                if let Ok(d) = Device::new_cuda(0) {
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

/// A short human-readable name ("CPU (2 threads)", "CUDA 0", "Metal").
pub fn describe(device: &Device) -> String {
    match device {
        Device::Cpu => format!("CPU ({} threads)", rayon::current_num_threads()),
        Device::Cuda(_) => "CUDA".to_string(),
        Device::Metal(_) => "Metal".to_string(),
    }
}
