//! With the `cuda` feature, compiles the fused-op kernels (src/ops/kernels.cu) to PTX with nvcc
//! (`NVCC`, else `$CUDA_HOME/bin/nvcc`, else `nvcc` on the PATH). PTX for compute capability 7.5
//! runs on every later GPU (the driver compiles it for the device at load time).

fn main() {
    println!("cargo:rerun-if-changed=src/ops/kernels.cu");
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let nvcc = std::env::var("NVCC").ok().unwrap_or_else(|| match std::env::var("CUDA_HOME") {
        Ok(home) => format!("{home}/bin/nvcc"),
        Err(_) => "nvcc".to_string(),
    });
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("msdm_kernels.ptx");
    let status = std::process::Command::new(&nvcc)
        .args(["--ptx", "-O3", "-arch=compute_75", "-std=c++17", "-o"])
        .arg(&out)
        .arg("src/ops/kernels.cu")
        .status()
        .unwrap_or_else(|e| panic!("the cuda feature needs nvcc to compile src/ops/kernels.cu: cannot run '{nvcc}': {e}"));
    assert!(status.success(), "nvcc failed on src/ops/kernels.cu ({status})");
}
