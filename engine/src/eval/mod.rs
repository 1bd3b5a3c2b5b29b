//! Separation evaluation (spec §8): the SI-SNRi metric on 4 s windows ([`metric`]) and the driver
//! that separates every test chunk and scores the reassembled tracks ([`evaluate`]).

pub mod evaluate;
pub mod metric;

pub use evaluate::{evaluate, evaluate_tracks, TrackResult};
pub use metric::{si_snr, track_scores, Summary, TrackScores, WindowScore};
