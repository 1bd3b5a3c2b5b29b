//! State shared between the audio thread, the worker and the editor, and the channels that
//! connect them. The audio thread only touches atomics and `try_*` channel operations; the
//! mutexes here are for the worker and the editor.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::messages::{CaptureFlags, Chunk, Command, PlaySet, ToAudio, ToWorker, POOL_CHUNKS};
use crate::params::MsdmParams;
use crate::worker_thread::WorkerThread;

/// What the worker is doing, for the editor.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Phase {
    #[default]
    Idle,
    Processing {
        done: usize,
        total: usize,
        started: Instant,
    },
    Ready,
    Error(String),
}

/// Min/max peaks of one channel, for drawing.
#[derive(Clone, Debug, Default)]
pub struct Peaks {
    pub min: Vec<f32>,
    pub max: Vec<f32>,
}

/// Waveforms of the captured clip (mono sum of the main input) and of the four stems.
#[derive(Clone, Debug, Default)]
pub struct Waveforms {
    pub clip: Option<Peaks>,
    pub stems: Option<[Peaks; 4]>,
}

/// Editor-facing status, written by the worker.
#[derive(Clone, Debug, Default)]
pub struct Status {
    pub phase: Phase,
    /// One line about the last thing that happened (export written, take restored, ...).
    pub message: String,
    /// A warning that stays until the next capture or render (cache missing, tempo unknown, ...).
    pub warning: Option<String>,
    pub model: Option<String>,
    pub device: Option<String>,
    /// Predicted render seconds of the current clip at (draft, final) quality.
    pub predicted: Option<(f64, f64)>,
    /// Max |mix - sum of stems| reported by the engine and RMS residual at the host rate.
    pub residual: Option<(f32, f32)>,
    pub waves: Arc<Waveforms>,
}

/// Worker-side ends of the channels (taken when the worker thread starts).
pub struct WorkerEnds {
    pub from_audio: Receiver<ToWorker>,
    pub free: Sender<Box<Chunk>>,
    pub to_audio: Sender<ToAudio>,
    pub garbage: Receiver<Box<PlaySet>>,
    pub commands: Receiver<Command>,
}

/// Audio-side ends of the channels (owned by the plugin object).
pub struct AudioLink {
    pub to_worker: Sender<ToWorker>,
    pub free: Receiver<Box<Chunk>>,
    /// Used on the main thread to fill the pool once, at the first activation.
    pub free_filler: Sender<Box<Chunk>>,
    pub from_worker: Receiver<ToAudio>,
    pub garbage: Sender<Box<PlaySet>>,
}

/// What runs on the worker thread (the plugin passes `worker::run` with its options; this module
/// does not name the worker, so the worker may depend on it without a cycle).
pub type WorkerMain = Box<dyn FnOnce(Arc<Shared>, WorkerEnds) + Send>;

pub struct Shared {
    pub params: Arc<MsdmParams>,
    /// What the audio thread's recorder sets.
    pub capture: CaptureFlags,
    /// Length of the capture being assembled, in frames at `capture_rate`.
    pub capture_frames: AtomicU64,
    pub capture_rate: AtomicU32,
    /// Current host sample rate (0 before the first activation).
    pub host_rate: AtomicU32,
    /// The host gives no tempo, or only a beat timeline.
    pub timeline_warning: AtomicBool,
    /// Load generation of the session that the worker restored last.
    pub restored_generation: AtomicU64,
    pub status: Mutex<Status>,
    repaint: Mutex<Option<Box<dyn Fn() + Send>>>,
    commands: Sender<Command>,
    worker: WorkerThread<Arc<Shared>>,
}

impl Shared {
    /// Creates the shared state and the channels; no thread is started.
    pub fn new(params: Arc<MsdmParams>, worker_main: WorkerMain) -> (Arc<Shared>, AudioLink) {
        let (to_worker, from_audio) = bounded(POOL_CHUNKS + 16);
        let (free_tx, free_rx) = bounded(POOL_CHUNKS);
        let (to_audio, from_worker) = bounded(1);
        let (garbage_tx, garbage_rx) = bounded(4);
        let (commands, commands_rx) = unbounded();
        let ends = WorkerEnds {
            from_audio,
            free: free_tx.clone(),
            to_audio,
            garbage: garbage_rx,
            commands: commands_rx,
        };
        let shared = Arc::new(Shared {
            params,
            capture: CaptureFlags::default(),
            capture_frames: AtomicU64::new(0),
            capture_rate: AtomicU32::new(0),
            host_rate: AtomicU32::new(0),
            timeline_warning: AtomicBool::new(false),
            restored_generation: AtomicU64::new(0),
            status: Mutex::new(Status::default()),
            repaint: Mutex::new(None),
            commands,
            worker: WorkerThread::new(Box::new(move |shared| worker_main(shared, ends))),
        });
        let link = AudioLink {
            to_worker,
            free: free_rx,
            free_filler: free_tx,
            from_worker,
            garbage: garbage_tx,
        };
        (shared, link)
    }

    /// Sends a command to the worker, starting the worker thread on first use.
    pub fn send(self: &Arc<Self>, command: Command) {
        self.ensure_worker();
        let _ = self.commands.send(command);
    }

    /// Starts the worker thread if it is not running (never from `Default`: hosts create
    /// instances just to scan them).
    pub fn ensure_worker(self: &Arc<Self>) {
        if let Err(e) = self.worker.ensure_started(|| Arc::clone(self)) {
            self.set_phase(Phase::Error(format!("Could not start the worker thread: {e}")));
        }
    }

    /// Stops the worker (cancelling a running render) and waits for it.
    pub fn shutdown(&self) {
        self.worker.stop(|| {
            let _ = self.commands.send(Command::Shutdown);
        });
    }

    pub fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Not for the audio thread (locks, may log).
    pub fn set_phase(&self, phase: Phase) {
        if let Phase::Error(e) = &phase {
            nice_plug::nice_warn!("msdm: {e}");
        }
        self.status().phase = phase;
        self.request_repaint();
    }

    pub fn set_message(&self, message: impl Into<String>) {
        self.status().message = message.into();
        self.request_repaint();
    }

    pub fn set_repaint(&self, f: Option<Box<dyn Fn() + Send>>) {
        *self.repaint.lock().unwrap_or_else(|e| e.into_inner()) = f;
    }

    /// Asks the editor (if open) to redraw. Not for the audio thread.
    pub fn request_repaint(&self) {
        if let Some(f) = self.repaint.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            f();
        }
    }

    /// Restores the session from the cache if the host loaded a state since the last restore.
    pub fn sync_session(self: &Arc<Self>) {
        let generation = self.params.session.load_generation();
        if generation != 0 && self.restored_generation.swap(generation, Ordering::AcqRel) != generation {
            self.send(Command::Restore);
        }
    }
}
