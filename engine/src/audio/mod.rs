//! Audio I/O and the signal plumbing around the model.
//!
//! - [`decode`]: read WAV / FLAC / MP3 / OGG Vorbis into an [`AudioBuffer`], with clear errors;
//! - [`encode`]: write WAV files atomically and guard existing stem files ([`OutputPolicy`]);
//! - [`resample`](mod@resample): delay-compensated, high-quality sample-rate conversion;
//! - [`windows`]: split long audio into the model's fixed windows and cross-fade them back;
//! - [`residual`]: hand the band the model never saw back to the stems so they sum to the mix.

pub mod decode;
pub mod encode;
pub mod header;
pub mod resample;
pub mod residual;
pub mod windows;

pub use decode::{
    read_audio, read_audio_bytes, read_audio_with, validate_chunk, validate_samples, AudioReader, ReadOptions, MAX_CHANNELS,
    MAX_DECODED_SAMPLES, MAX_SAMPLE_RATE,
};
pub use encode::{ensure_output_dir, write_file_atomic, write_wav, OutputPolicy, SampleFormat, WavStreamWriter};
pub use resample::{resample, resampled_len, StreamResampler};
pub use residual::{distribute_residual, ResidualStream};
pub use windows::{plan, OverlapJoin, WindowPlan};

/// Planar audio: `channels[c][i]` is sample `i` of channel `c`, all channels the same length.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AudioBuffer {
    /// Sample rate in Hz.
    pub rate: u32,
    /// One vector of samples per channel.
    pub channels: Vec<Vec<f32>>,
}

impl AudioBuffer {
    /// A buffer from planar channels.
    pub fn new(rate: u32, channels: Vec<Vec<f32>>) -> Self {
        Self { rate, channels }
    }

    /// Number of frames (samples per channel); 0 without channels.
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    /// Number of channels.
    pub fn num_channels(&self) -> usize {
        self.channels.len()
    }

    /// Duration in seconds.
    pub fn duration_s(&self) -> f64 {
        if self.rate == 0 {
            return 0.0;
        }
        self.frames() as f64 / self.rate as f64
    }

    /// The mean of all channels (a mono mix-down); empty without channels.
    pub fn to_mono(&self) -> Vec<f32> {
        let n = self.num_channels();
        if n == 1 {
            return self.channels[0].clone();
        }
        let mut mono = vec![0.0f32; self.frames()];
        for channel in &self.channels {
            for (m, &x) in mono.iter_mut().zip(channel) {
                *m += x;
            }
        }
        let scale = 1.0 / n.max(1) as f32;
        mono.iter_mut().for_each(|m| *m *= scale);
        mono
    }

    /// The largest absolute sample value (0 for empty audio).
    pub fn peak(&self) -> f32 {
        self.channels
            .iter()
            .flatten()
            .fold(0.0f32, |p, &x| p.max(x.abs()))
    }

    /// True when no sample's magnitude exceeds `threshold` (e.g. `1e-4`, about -80 dBFS).
    /// Silence is valid input; callers may use this to warn or skip work.
    pub fn is_silent(&self, threshold: f32) -> bool {
        self.peak() <= threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_helpers() {
        let a = AudioBuffer::new(10, vec![vec![1.0, -3.0, 0.0], vec![3.0, 1.0, 0.0]]);
        assert_eq!(a.frames(), 3);
        assert_eq!(a.num_channels(), 2);
        assert_eq!(a.to_mono(), vec![2.0, -1.0, 0.0]);
        assert_eq!(a.peak(), 3.0);
        assert!((a.duration_s() - 0.3).abs() < 1e-12);
        assert!(!a.is_silent(1e-4));
        assert!(AudioBuffer::new(10, vec![vec![1e-5; 4]]).is_silent(1e-4));
        assert_eq!(AudioBuffer::default().frames(), 0);
    }
}
