//! Training the score network (spec §5 and §10): denoising score matching with the EDM loss
//! weighting and the clamp inside D, plain Adam with the reference defaults, deterministic seeded
//! draws, checkpoints and bit-for-bit resume.
//!
//! - [`loss`]: σ ~ log-normal, x_noisy = x + σ·ε, the weighted denoising loss;
//! - [`tasks`]: per-stem σ models' task mixture (joint, conditional with clean given stems,
//!   independent σ per stem);
//! - [`loss_stage`]: the loss's last stage (preconditioning, clamp, weighted squared error) as one
//!   op with its backward (CPU f32);
//! - [`adam`]: Adam (not AdamW) with saveable moments;
//! - [`ema`]: the moving average of the weights (an extra output; the reference has none);
//! - [`fused_step`]: Adam and the average in one pass per parameter (CPU f32);
//! - [`net`]: the network's weights as trainable variables (any float dtype);
//! - [`seeds`]: per-step random streams and the epoch order of the items;
//! - [`run`]: the run directory (checkpoint files, CSV log, settings);
//! - [`trainer`]: the loop ([`Trainer`], [`train`]).
//!
//! Gradients are correct because the network's ops take, for tensors that track gradients, either
//! candle ops or custom ops with hand-written backward passes tested against them
//! ([`crate::ops`], see `engine/tests/train_gradients.rs`). The ops only training uses live here.

pub mod adam;
pub mod ema;
pub mod fused_step;
pub mod loss;
pub mod loss_stage;
pub mod net;
pub mod run;
pub mod seeds;
pub mod tasks;
pub mod trainer;

pub use adam::{Adam, AdamConfig};
pub use ema::{EmaState, WeightAverage};
pub use loss::{denoising_loss, draw_noise, item_losses, item_losses_composite, loss_weight, LossBatch, NoiseDraw};
pub use loss_stage::{edm_item_losses, fused_loss_applies, EdmLossCoefficients};
pub use net::TrainableNet;
pub use run::{RunSettings, RunState, Validation};
pub use tasks::{draw_stem_noise, StemNoiseDraw, StemTask};
pub use trainer::{train, Event, Schedule, Summary, Trainer};
