//! Running the `msdm` binary from the CLI tests: capture its output, require success or a clear
//! refusal (an `error: ` line and no panic).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn msdm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msdm"))
        .args(args)
        .env("MSDM_MODEL", "/nonexistent/msdm-model.safetensors")
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .expect("run msdm")
}

pub fn ok(args: &[&str]) -> String {
    let out = msdm(args);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "msdm {args:?} failed:\n{text}");
    text
}

pub fn fails(args: &[&str]) -> String {
    let out = msdm(args);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "msdm {args:?} should have failed");
    assert!(err.starts_with("error: "), "no clear error: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    err
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
