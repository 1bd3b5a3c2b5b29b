//! MSDM Stems: a CLAP + VST3 plugin that captures audio from the host timeline, runs
//! Multi-Source Diffusion Models (separate / impute / generate the bass, drums, guitar and
//! piano stems) on its own worker thread, and plays the stems back sample-aligned on four aux
//! outputs.
//!
//! Threads: the audio thread ([`MsdmStems::process`]) only copies samples into preallocated
//! chunks ([`capture`]) and plays the current stem set ([`playback`]); the [`worker`] assembles
//! captures, starts renders ([`render`]) and swaps stem sets in; the [`editor`] shows the state.
//! The plugin state holds metadata only ([`session`]); audio lives in the [`cache`].

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use nice_plug::prelude::*;

pub mod assembly;
pub mod cache;
pub mod capture;
pub mod editor;
pub mod editor_size;
pub mod library;
pub mod messages;
pub mod models;
pub mod params;
pub mod playback;
pub mod render;
pub mod session;
pub mod shared;
pub mod worker;
pub mod worker_thread;

use capture::{BlockTime, Recorder};
use messages::{Chunk, Command, CAPTURE_CHANNELS, POOL_CHUNKS};
use params::{MsdmParams, OutputMode};
use playback::Player;
use shared::{AudioLink, Shared};

pub const STEM_COUNT: usize = 4;
/// The engine's stems (the plugin's ports follow them).
pub const STEMS: [&str; STEM_COUNT] = msdm::STEMS;
/// Port names (aux outputs, and the sidechain inputs for Impute).
pub const STEM_TITLES: [&str; STEM_COUNT] = ["Bass", "Drums", "Guitar", "Piano"];

pub fn stem_title(stem: &str) -> &'static str {
    msdm::stem_index(&STEMS, stem).map_or("Stem", |k| STEM_TITLES[k])
}

const STEREO: NonZeroU32 = new_nonzero_u32(2);

pub struct MsdmStems {
    params: Arc<MsdmParams>,
    shared: Arc<Shared>,
    link: AudioLink,
    recorder: Recorder,
    player: Player,
    rate: u32,
    offline: bool,
    pool_filled: bool,
    /// Per-sample stem gains of the re-mix, sized at activation (the audio thread never grows it).
    remix_gains: Vec<[f32; STEM_COUNT]>,
}

impl Default for MsdmStems {
    fn default() -> Self {
        // No threads here: hosts create instances just to scan them.
        let params = Arc::new(MsdmParams::default());
        let (shared, link) = Shared::new(Arc::clone(&params), worker::WorkerOptions::from_env().worker_main());
        Self {
            params,
            shared,
            link,
            recorder: Recorder::default(),
            player: Player::default(),
            rate: 0,
            offline: false,
            pool_filled: false,
            remix_gains: Vec::new(),
        }
    }
}

impl Drop for MsdmStems {
    fn drop(&mut self) {
        // Stop the worker (cancels a running render) before the library can be unloaded.
        self.shared.set_repaint(None);
        self.shared.shutdown();
    }
}

impl Plugin for MsdmStems {
    const NAME: &'static str = "MSDM Stems";
    const VENDOR: &'static str = "MSDM Stems";
    const URL: &'static str = "https://example.invalid/msdm-stems";
    const EMAIL: &'static str = "msdm-stems@example.invalid";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    const AUDIO_IO_LAYOUTS: &'static [AudioIOLayout] = &[
        AudioIOLayout {
            main_input_channels: Some(STEREO),
            main_output_channels: Some(STEREO),
            aux_input_ports: &[STEREO; STEM_COUNT],
            aux_output_ports: &[STEREO; STEM_COUNT],
            names: PortNames {
                layout: Some("Stereo, stem outputs and stem sidechains"),
                // nice-plug names the main *output* after `main_input`: leave both unnamed
                // ("Input" / "Output").
                main_input: None,
                main_output: None,
                aux_inputs: &STEM_TITLES,
                aux_outputs: &STEM_TITLES,
            },
        },
        AudioIOLayout {
            main_input_channels: Some(STEREO),
            main_output_channels: Some(STEREO),
            aux_input_ports: &[],
            aux_output_ports: &[STEREO; STEM_COUNT],
            names: PortNames {
                layout: Some("Stereo, stem outputs"),
                main_input: None,
                main_output: None,
                aux_inputs: &[],
                aux_outputs: &STEM_TITLES,
            },
        },
    ];

    type SysExMessage = ();
    type BackgroundTask = ();
    type Editor = editor::MsdmEditor;

    fn params(&self) -> Arc<dyn Params> {
        self.params.clone()
    }

    fn editor(&mut self, _async_executor: AsyncExecutor<Self>) -> Option<Self::Editor> {
        editor::create(Arc::clone(&self.shared), self.params.editor_size.state())
    }

    fn activate(
        &mut self,
        _layout: &AudioIOLayout,
        config: &BufferConfig,
        context: &mut impl ActivateContext<Self>,
    ) -> bool {
        self.rate = config.sample_rate.round().max(1.0) as u32;
        self.offline = config.process_mode == ProcessMode::Offline;
        if !self.pool_filled {
            // The only capture allocation: a fixed pool of chunks, filled once.
            for _ in 0..POOL_CHUNKS {
                if self.link.free_filler.try_send(Chunk::new()).is_err() {
                    break;
                }
            }
            self.pool_filled = true;
        }
        self.recorder.reset();
        self.remix_gains = vec![[1.0; STEM_COUNT]; config.max_buffer_size.max(1) as usize];
        self.shared.host_rate.store(self.rate, Ordering::Release);
        self.shared.send(Command::Activated { rate: self.rate });
        self.shared.sync_session();
        // Capture and playback are sample-aligned with the timeline: no latency.
        context.set_latency_samples(0);
        true
    }

    fn reset(&mut self) {
        self.recorder.reset();
    }

    fn deactivate(&mut self) {
        self.recorder.reset();
        self.shared.capture.capturing.store(false, Ordering::Release);
    }

    fn process(
        &mut self,
        buffer: &mut Buffer,
        aux: &mut AuxiliaryBuffers,
        context: &mut impl ProcessContext<Self>,
    ) -> ProcessStatus {
        self.player.receive(&self.link.from_worker, &self.link.garbage);

        let transport = context.transport();
        let beats_per_bar = match (transport.time_sig_numerator, transport.time_sig_denominator) {
            (Some(n), Some(d)) if n > 0 && d > 0 => Some(n as f64 * 4.0 / d as f64),
            _ => None,
        };
        let time = BlockTime {
            playing: transport.playing,
            pos: transport.pos_samples(),
            rate: self.rate,
            tempo: transport.tempo,
            beats_per_bar,
            offline: self.offline,
        };
        if transport.playing && transport.pos_samples.is_none() && transport.pos_seconds.is_none() {
            // Position derived from beats and tempo: wrong across tempo changes.
            self.shared.timeline_warning.store(true, Ordering::Relaxed);
        }
        let frames = buffer.samples();

        {
            let main = buffer.as_slice_immutable();
            let mut inputs: [Option<&[f32]>; CAPTURE_CHANNELS] = [None; CAPTURE_CHANNELS];
            inputs[0] = main.first().map(|s| &**s);
            inputs[1] = main.get(1).map(|s| &**s);
            for (k, port) in aux.inputs.iter().enumerate().take(STEM_COUNT) {
                let chans = port.as_slice_immutable();
                inputs[2 + 2 * k] = chans.first().map(|s| &**s);
                inputs[3 + 2 * k] = chans.get(1).map(|s| &**s).or(inputs[2 + 2 * k]);
            }
            self.recorder.record(&self.shared.capture, &self.link.to_worker, &self.link.free, time, &inputs, frames);
        }

        let remix = self.params.output.value() == OutputMode::Remix && self.player.has_stems();
        if remix {
            // Gains smoothed per sample: a block-rate step would click on long blocks.
            let any_solo = (0..STEM_COUNT).any(|k| self.params.stem(k).solo.value());
            let n = frames.min(self.remix_gains.len());
            for k in 0..STEM_COUNT {
                let p = self.params.stem(k);
                let silent = p.mute.value() || (any_solo && !p.solo.value());
                for g in &mut self.remix_gains[..n] {
                    let v = p.gain.smoothed.next();
                    g[k] = if silent { 0.0 } else { v };
                }
            }
        }
        let gains = &self.remix_gains[..frames.min(self.remix_gains.len())];
        self.player.render(
            time.playing,
            time.pos,
            self.rate,
            frames,
            aux.outputs,
            remix.then(|| (gains, buffer.as_slice())),
        );
        ProcessStatus::Normal
    }
}

impl ClapPlugin for MsdmStems {
    const CLAP_ID: &'static str = "org.msdm-stems.msdm-stems";
    const CLAP_DESCRIPTION: Option<&'static str> =
        Some("Separate a mix into bass, drums, guitar and piano stems, or generate stems that fit given ones");
    const CLAP_MANUAL_URL: Option<&'static str> = None;
    const CLAP_SUPPORT_URL: Option<&'static str> = None;
    const CLAP_FEATURES: &'static [ClapFeature] = &[ClapFeature::AudioEffect, ClapFeature::Stereo, ClapFeature::Utility];
}

impl Vst3Plugin for MsdmStems {
    const VST3_CLASS_ID: [u8; 16] = *b"MsdmStemsPlugin1";
    const VST3_SUBCATEGORIES: &'static [Vst3SubCategory] = &[Vst3SubCategory::Fx, Vst3SubCategory::Tools];
}

nice_export_clap!(MsdmStems);
nice_export_vst3!(MsdmStems);
