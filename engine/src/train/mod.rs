//! Training the score network (spec §5 and §10): denoising score matching with the EDM loss
//! weighting and the clamp inside D, plain Adam with the reference defaults, deterministic seeded
//! draws, checkpoints and bit-for-bit resume.
//!
//! - [`loss`]: σ ~ log-normal, x_noisy = x + σ·ε, the weighted denoising loss;
//! - [`adam`]: Adam (not AdamW) with saveable moments;
//! - [`ema`]: the moving average of the weights (an extra output; the reference has none);
//! - [`net`]: the network's weights as trainable variables (any float dtype);
//! - [`seeds`]: per-step random streams and the epoch order of the items;
//! - [`run`]: the run directory (checkpoint files, CSV log, settings);
//! - [`trainer`]: the loop ([`Trainer`], [`train`]).
//!
//! Gradients are correct because every op of [`crate::ops`] is built from candle ops with a
//! backward (see `engine/tests/train_gradients.rs`).

pub mod adam;
pub mod ema;
pub mod loss;
pub mod net;
pub mod run;
pub mod seeds;
pub mod trainer;

pub use adam::{Adam, AdamConfig};
pub use ema::{EmaState, WeightAverage};
pub use loss::{denoising_loss, draw_noise, item_losses, item_losses_composite, loss_weight, LossBatch, NoiseDraw};
pub use net::TrainableNet;
pub use run::{RunSettings, RunState, Validation};
pub use trainer::{train, Event, Schedule, Summary, Trainer};
