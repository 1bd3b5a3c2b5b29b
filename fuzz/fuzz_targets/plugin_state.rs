//! Saved plugin state → restore → playback: the bytes as the `session` field a host hands back
//! (nice-plug reads it with serde_json), set into a fresh instance's parameters the way a state
//! load does, restored by the worker against a stem cache that holds one real take, and, when a
//! take comes back, played by the audio-thread player at ordinary and extreme host positions.
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use msdm_plugin::cache::Cache;
use msdm_plugin::messages::{Command, ToAudio};
use msdm_plugin::params::MsdmParams;
use msdm_plugin::playback::Player;
use msdm_plugin::session::Session;
use msdm_plugin::shared::Shared;
use msdm_plugin::worker::WorkerOptions;
use nice_plug::params::persist::PersistentField;
use nice_plug::prelude::Buffer;

/// The key of the one cached take (the seeds in corpus/plugin_state name it).
const KEY: &str = "0123456789abcdef0123456789abcdef";
const CLIP: &str = "fedcba9876543210fedcba9876543210";

fn cache_root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("msdm-fuzz-cache-{}", std::process::id()));
        let cache = Cache::at(root.clone());
        let stems: Vec<Vec<Vec<f32>>> = (0..4).map(|k| vec![vec![0.1 * k as f32; 64]; 2]).collect();
        cache.put_stems(KEY, 48_000, &stems).expect("seed stems");
        cache.put_clip(CLIP, 48_000, &vec![vec![0.2f32; 64]; 10]).expect("seed clip");
        root
    })
}

fn play(set_rx: &crossbeam_channel::Receiver<ToAudio>) {
    let (gtx, _grx) = crossbeam_channel::bounded(4);
    let mut p = Player::default();
    p.receive(set_rx, &gtx);
    for pos in [0i64, 1, 63, -5, i64::MIN, i64::MAX, i64::MAX - 10] {
        let mut store = vec![vec![vec![0f32; 32]; 2]; 4];
        let mut slices: Vec<Vec<&mut [f32]>> = store.iter_mut().map(|s| s.iter_mut().map(|c| c.as_mut_slice()).collect()).collect();
        let mut bufs: Vec<Buffer> = slices
            .iter_mut()
            .map(|s| {
                let mut b = Buffer::default();
                // SAFETY: the slices outlive the buffers, which are dropped before `store`.
                unsafe { b.set_slices(32, |out| *out = std::mem::take(s)) };
                b
            })
            .collect();
        p.render(true, Some(pos), 48_000, 32, &mut bufs, None);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(session) = serde_json::from_slice::<Session>(data) else { return };
    let params = Arc::new(MsdmParams::default());
    params.session.set(session);
    let options = WorkerOptions { cache_root: Some(cache_root().clone()), steps_override: Some(1) };
    let (shared, link) = Shared::new(params, options.worker_main());
    shared.send(Command::Activated { rate: 48_000 });
    // Activation publishes "no stems" first; take it so the restored take's stems can follow.
    let _ = link.from_worker.recv_timeout(std::time::Duration::from_secs(10));
    shared.sync_session();
    // Commands run in order: the restore is done when the worker has shut down.
    shared.shutdown();
    play(&link.from_worker);
});
