//! A minimal CLAP host (clack-host) that loads the plugin library, lists its ports, drives
//! `process()` with a transport, sets parameters through events, and saves/loads state.

use std::ffi::CString;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use clack_extensions::audio_ports::{AudioPortInfoBuffer, PluginAudioPorts};
use clack_extensions::latency::PluginLatency;
use clack_extensions::state::PluginState;
use clack_host::events::event_types::{ParamValueEvent, TransportEvent, TransportFlags};
use clack_host::prelude::*;
use clack_host::utils::ClapId;

pub const PLUGIN_ID: &str = "org.msdm-stems.msdm-stems";
pub const AUX_PORTS: usize = 4;

pub struct TestHost;

pub struct TestShared {
    callback_requested: AtomicBool,
    restart_requested: AtomicBool,
    ports: OnceLock<Option<PluginAudioPorts>>,
    latency: OnceLock<Option<PluginLatency>>,
    state: OnceLock<Option<PluginState>>,
    gui: OnceLock<Option<clack_extensions::gui::PluginGui>>,
    render: OnceLock<Option<clack_extensions::render::PluginRender>>,
}

impl<'a> SharedHandler<'a> for TestShared {
    fn initializing(&self, instance: InitializingPluginHandle<'a>) {
        let _ = self.ports.set(instance.get_extension());
        let _ = self.latency.set(instance.get_extension());
        let _ = self.state.set(instance.get_extension());
        let _ = self.gui.set(instance.get_extension());
        let _ = self.render.set(instance.get_extension());
    }
    fn request_restart(&self) {
        self.restart_requested.store(true, Ordering::SeqCst);
    }
    fn request_process(&self) {}
    fn request_callback(&self) {
        self.callback_requested.store(true, Ordering::SeqCst);
    }
}

pub struct TestMain;
impl<'a> MainThreadHandler<'a> for TestMain {
    fn initialized(&self, _instance: InitializedPluginHandle<'a>) {}
}

impl HostHandlers for TestHost {
    type Shared<'a> = TestShared;
    type MainThread<'a> = TestMain;
    type AudioProcessor<'a> = ();

    fn declare_extensions(builder: &mut HostExtensions<Self>, _shared: &Self::Shared<'_>) {
        // nice-plug's CLAP editor needs the host side of the gui extension.
        builder.register::<clack_extensions::gui::HostGui>();
    }
}

impl clack_extensions::gui::HostGuiImpl for TestShared {
    fn resize_hints_changed(&self) {}
    fn request_resize(&self, _new_size: clack_extensions::gui::GuiSize) -> Result<(), HostError> {
        Ok(())
    }
    fn request_show(&self) -> Result<(), HostError> {
        Ok(())
    }
    fn request_hide(&self) -> Result<(), HostError> {
        Ok(())
    }
    fn closed(&self, _was_destroyed: bool) {}
}

/// One port as the plugin describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    pub name: String,
    pub channels: u32,
    pub is_main: bool,
}

/// Host transport state for one block.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    pub playing: bool,
    /// Timeline position in samples at the host rate (sent as the CLAP seconds timeline).
    pub pos: i64,
    pub tempo: f64,
}

/// The plugin's outputs for one block: `main[ch]`, `aux[port][ch]`.
pub struct Outputs {
    pub main: [Vec<f32>; 2],
    pub aux: Vec<[Vec<f32>; 2]>,
}

pub struct Plugin {
    // Field order matters: the instance must drop before the entry.
    processor: Option<StartedPluginAudioProcessor<TestHost>>,
    instance: PluginInstance<TestHost>,
    _entry: PluginEntry,
    pub rate: f64,
    pub max_frames: u32,
    pending_params: Vec<(u32, f64)>,
    /// Wall time of the last plugin `process()` call alone (no host-side buffer set-up).
    pub last_process: std::time::Duration,
}

/// nice-plug's CLAP parameter id for a string parameter id.
pub fn param_hash(id: &str) -> u32 {
    let mut hash: u32 = 0;
    for b in id.bytes() {
        hash = hash.wrapping_mul(31).wrapping_add(b as u32);
    }
    hash & !(1 << 31)
}

impl Plugin {
    pub fn load(lib: &Path) -> Result<Plugin> {
        // SAFETY: loading a CLAP library runs its entry's init; this is our own plugin.
        let entry = unsafe { PluginEntry::load(lib) }
            .map_err(|e| anyhow!("cannot load {}: {e:?}", lib.display()))?;
        let host_info = HostInfo::new("msdm-test-host", "msdm", "https://example.invalid", "0.1")
            .map_err(|e| anyhow!("{e:?}"))?;
        let id = CString::new(PLUGIN_ID)?;
        let instance = PluginInstance::<TestHost>::new(
            |_| TestShared {
                callback_requested: AtomicBool::new(false),
                restart_requested: AtomicBool::new(false),
                ports: OnceLock::new(),
                latency: OnceLock::new(),
                state: OnceLock::new(),
                gui: OnceLock::new(),
                render: OnceLock::new(),
            },
            |_| TestMain,
            &entry,
            &id,
            &host_info,
        )
        .map_err(|e| anyhow!("cannot instantiate the plugin: {e:?}"))?;
        Ok(Plugin {
            processor: None,
            instance,
            _entry: entry,
            rate: 0.0,
            max_frames: 0,
            pending_params: Vec::new(),
            last_process: std::time::Duration::ZERO,
        })
    }

    pub fn descriptor_name(lib: &Path) -> Result<String> {
        let entry = unsafe { PluginEntry::load(lib) }.map_err(|e| anyhow!("{e:?}"))?;
        let factory = entry.get_plugin_factory().context("no plugin factory")?;
        let d = factory.plugin_descriptors().next().context("no plugin in the library")?;
        Ok(d.name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default())
    }

    /// Runs main-thread callbacks the plugin asked for.
    pub fn pump(&mut self) {
        let requested = self.instance.access_shared_handler(|s| s.callback_requested.swap(false, Ordering::SeqCst));
        if requested {
            self.instance.call_on_main_thread_callback();
        }
    }

    pub fn ports(&mut self, input: bool) -> Result<Vec<Port>> {
        let ext = self
            .instance
            .access_shared_handler(|s| s.ports.get().copied().flatten())
            .context("the plugin has no audio-ports extension")?;
        let handle = self.instance.plugin_handle();
        let n = ext.count(&handle, input);
        let mut out = Vec::new();
        for i in 0..n {
            let mut buf = AudioPortInfoBuffer::new();
            let info = ext.get(&handle, i, input, &mut buf).context("port info")?;
            out.push(Port {
                name: String::from_utf8_lossy(info.name).into_owned(),
                channels: info.channel_count,
                is_main: info.flags.contains(clack_extensions::audio_ports::AudioPortFlags::IS_MAIN),
            });
        }
        Ok(out)
    }

    pub fn latency(&mut self) -> Result<u32> {
        let ext = self
            .instance
            .access_shared_handler(|s| s.latency.get().copied().flatten())
            .context("the plugin has no latency extension")?;
        let handle = self.instance.plugin_handle();
        Ok(ext.get(&handle))
    }

    pub fn save_state(&mut self) -> Result<Vec<u8>> {
        let ext = self
            .instance
            .access_shared_handler(|s| s.state.get().copied().flatten())
            .context("the plugin has no state extension")?;
        let mut out = Vec::new();
        ext.save(&self.instance.plugin_handle(), &mut out).map_err(|e| anyhow!("{e}"))?;
        Ok(out)
    }

    pub fn load_state(&mut self, state: &[u8]) -> Result<()> {
        let ext = self
            .instance
            .access_shared_handler(|s| s.state.get().copied().flatten())
            .context("the plugin has no state extension")?;
        let mut r = std::io::Cursor::new(state);
        ext.load(&self.instance.plugin_handle(), &mut r).map_err(|e| anyhow!("{e}"))?;
        self.pump();
        Ok(())
    }

    /// Switches the plugin to offline rendering (a bounce, faster than real time).
    pub fn set_offline(&mut self, offline: bool) -> Result<()> {
        use clack_extensions::render::RenderMode;
        let ext = self
            .instance
            .access_shared_handler(|s| s.render.get().copied().flatten())
            .context("the plugin has no render extension")?;
        let mode = if offline { RenderMode::Offline } else { RenderMode::Realtime };
        ext.set(&self.instance.plugin_handle(), mode).map_err(|e| anyhow!("render mode: {e}"))?;
        self.pump();
        Ok(())
    }

    /// Opens the plugin's editor embedded in the X11 window `parent`; returns its size.
    pub fn open_gui_x11(&mut self, parent: u64) -> Result<(u32, u32)> {
        use clack_extensions::gui::{GuiApiType, GuiConfiguration, Window};
        let ext = self
            .instance
            .access_shared_handler(|s| s.gui.get().copied().flatten())
            .context("the plugin has no gui extension")?;
        let handle = self.instance.plugin_handle();
        let config = GuiConfiguration { api_type: GuiApiType::X11, is_floating: false };
        ext.create(&handle, config).map_err(|e| anyhow!("gui create: {e:?}"))?;
        let size = ext.get_size(&handle).context("gui size")?;
        // SAFETY: `parent` is a live X11 window owned by the caller.
        unsafe { ext.set_parent(&handle, Window::from_x11_handle(parent as _)) }
            .map_err(|e| anyhow!("gui set_parent: {e:?}"))?;
        ext.show(&handle).map_err(|e| anyhow!("gui show: {e:?}"))?;
        self.pump();
        Ok((size.width, size.height))
    }

    pub fn close_gui(&mut self) {
        if let Some(ext) = self.instance.access_shared_handler(|s| s.gui.get().copied().flatten()) {
            ext.destroy(&self.instance.plugin_handle());
        }
        self.pump();
    }

    pub fn activate(&mut self, rate: f64, max_frames: u32) -> Result<()> {
        if self.processor.is_some() {
            bail!("already active");
        }
        let config = PluginAudioConfiguration { sample_rate: rate, min_frames_count: 1, max_frames_count: max_frames };
        let stopped = self.instance.activate(|_, _| (), config).map_err(|e| anyhow!("activate failed: {e:?}"))?;
        let started = stopped.start_processing().map_err(|e| anyhow!("start_processing failed: {e:?}"))?;
        self.processor = Some(started);
        self.rate = rate;
        self.max_frames = max_frames;
        self.pump();
        Ok(())
    }

    pub fn deactivate(&mut self) {
        if let Some(p) = self.processor.take() {
            let stopped = p.stop_processing();
            self.instance.deactivate(stopped);
        }
        self.pump();
    }

    /// Queues a parameter change (plain CLAP value: the index for enums, 0/1 for bools) for the
    /// next block.
    pub fn set_param(&mut self, id: &str, value: f64) {
        self.pending_params.push((param_hash(id), value));
    }

    /// Processes one block. `main_in` is stereo; `side_in[k]` the stereo sidechain of stem `k`
    /// (None = silence).
    pub fn process(
        &mut self,
        main_in: [&[f32]; 2],
        side_in: [Option<[&[f32]; 2]>; AUX_PORTS],
        transport: Transport,
    ) -> Result<Outputs> {
        let n = main_in[0].len();
        let processor = self.processor.as_mut().context("not active")?;
        let mut ins: Vec<Vec<f32>> = Vec::with_capacity(2 + 2 * AUX_PORTS);
        ins.push(main_in[0].to_vec());
        ins.push(main_in[1].to_vec());
        for s in side_in {
            match s {
                Some([l, r]) => {
                    ins.push(l.to_vec());
                    ins.push(r.to_vec());
                }
                None => {
                    ins.push(vec![0.0; n]);
                    ins.push(vec![0.0; n]);
                }
            }
        }
        let mut outs: Vec<Vec<f32>> = vec![vec![0.0; n]; 2 + 2 * AUX_PORTS];

        let mut in_ports = AudioPorts::with_capacity(2 + 2 * AUX_PORTS, 1 + AUX_PORTS);
        let mut out_ports = AudioPorts::with_capacity(2 + 2 * AUX_PORTS, 1 + AUX_PORTS);
        let mut in_iter = ins.chunks_mut(2);
        let input = in_ports.with_input_buffers((0..1 + AUX_PORTS).map(|_| {
            let pair = in_iter.next().unwrap();
            AudioPortBuffer {
                latency: 0,
                channels: AudioPortBufferType::f32_input_only(pair.iter_mut().map(InputChannel::variable)),
            }
        }));
        let mut out_iter = outs.chunks_mut(2);
        let mut output = out_ports.with_output_buffers((0..1 + AUX_PORTS).map(|_| {
            let pair = out_iter.next().unwrap();
            AudioPortBuffer {
                latency: 0,
                channels: AudioPortBufferType::f32_output_only(pair.iter_mut().map(|c| c.as_mut_slice())),
            }
        }));

        let t = transport_event(transport, self.rate);
        let events: Vec<ParamValueEvent> = self
            .pending_params
            .drain(..)
            .map(|(id, v)| ParamValueEvent::new(0, ClapId::new(id), Pckn::match_all(), v))
            .collect();
        let input_events = InputEvents::from_buffer(&events);
        let mut out_buf = EventBuffer::new();
        let mut output_events = OutputEvents::from_buffer(&mut out_buf);
        let t0 = std::time::Instant::now();
        let r = processor.process(&input, &mut output, &input_events, &mut output_events, None, Some(&t));
        self.last_process = t0.elapsed();
        r.map_err(|e| anyhow!("process failed: {e:?}"))?;
        let mut it = outs.into_iter();
        let main = [it.next().unwrap(), it.next().unwrap()];
        let mut aux = Vec::new();
        for _ in 0..AUX_PORTS {
            aux.push([it.next().unwrap(), it.next().unwrap()]);
        }
        self.pump();
        Ok(Outputs { main, aux })
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.deactivate();
    }
}

fn transport_event(t: Transport, rate: f64) -> TransportEvent {
    use clack_host::utils::{BeatTime, SecondsTime};
    // Sample-exact seconds timeline: bits = pos * 2^31 / rate, rounded.
    let bits = ((t.pos as i128 * SecondsTime::FACTOR as i128 * 2 + rate as i128) / (2 * rate as i128)) as i64;
    let beats = t.pos as f64 / rate * t.tempo / 60.0;
    let mut flags = TransportFlags::HAS_TEMPO
        | TransportFlags::HAS_SECONDS_TIMELINE
        | TransportFlags::HAS_BEATS_TIMELINE
        | TransportFlags::HAS_TIME_SIGNATURE;
    if t.playing {
        flags |= TransportFlags::IS_PLAYING;
    }
    TransportEvent {
        header: clack_host::events::EventHeader::new_core(0, clack_host::events::EventFlags::empty()),
        flags,
        song_pos_beats: BeatTime::from_float(beats),
        song_pos_seconds: SecondsTime::from_bits(bits),
        tempo: t.tempo,
        tempo_inc: 0.0,
        loop_start_beats: BeatTime::from_int(0),
        loop_end_beats: BeatTime::from_int(0),
        loop_start_seconds: SecondsTime::from_int(0),
        loop_end_seconds: SecondsTime::from_int(0),
        bar_start: BeatTime::from_float((beats / 4.0).floor() * 4.0),
        bar_number: (beats / 4.0).floor() as i32,
        time_signature_numerator: 4,
        time_signature_denominator: 4,
    }
}
