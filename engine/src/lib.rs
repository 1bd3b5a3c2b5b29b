//! `msdm`: Multi-Source Diffusion Models (Mariani et al., ICLR 2024) in Rust.
//!
//! The crate is organised after the paper:
//! - [`config`]: the score network's hyper-parameters (the reference `model:` kwargs) and presets;
//! - [`ops`]: the one module that owns the network's primitive ops (kernels are swapped here);
//! - [`unet`]: the score network F_θ (audio-diffusion-pytorch 0.0.43 `UNet1d`);
//! - [`denoiser`]: the EDM-preconditioned denoiser D(x, σ) with the reference clamp;
//! - [`graph`]: the network's calls replayed as CUDA graphs;
//! - [`schedule`]: the Karras σ schedule;
//! - [`noise`]: seeded and recorded standard-normal draws;
//! - [`sampler`]: Euler + churn with resamples, for generation and source imputation;
//! - [`separator`]: posterior sampling with the Dirac and Gaussian likelihoods;
//! - [`separation`]: separating a mix of any length as a stream, in flat memory;
//! - [`wiener`]: the separation post-filter (soft masks from the separated stems);
//! - [`model_file`]: our self-describing safetensors model format;
//! - [`transcribe`]: a bass stem to MIDI notes (YIN pitch tracking and note segmentation).

pub mod args;
pub mod config;
pub mod denoiser;
pub mod device;
pub mod graph;
pub mod job;
pub mod model_file;
pub mod noise;
pub mod ops;
pub mod sampler;
pub mod schedule;
pub mod separation;
pub mod stems_io;
pub mod separator;
pub mod wiener;
pub mod stereo;
pub mod unet;
pub mod train;

/// The four stems, in the model's channel order.
pub const STEMS: [&str; 4] = ["bass", "drums", "guitar", "piano"];

/// The index of stem `name` among `stems` (a model's stem names in channel order); the error
/// names the stems there are. Every lookup of a stem by name goes through here.
pub fn stem_index<S: AsRef<str>>(stems: &[S], name: &str) -> anyhow::Result<usize> {
    stems.iter().position(|s| s.as_ref() == name).ok_or_else(|| {
        let names: Vec<&str> = stems.iter().map(AsRef::as_ref).collect();
        anyhow::anyhow!("'{name}' is not one of the model's stems ({})", names.join(", "))
    })
}
/// The model's sample rate.
pub const MODEL_RATE: u32 = 22_050;
pub mod tasks;
mod seams;
pub mod regenerate;

pub mod audio;
pub mod data;
pub mod eval;
pub mod import;
pub mod transcribe;
