//! The worker on a real render: the editor's Cancel and "Regenerate range".

use super::*;
use std::time::Instant;
use crate::messages::{Chunk, ToAudio, CAPTURE_CHANNELS, CHUNK_FRAMES};
use crate::params::MsdmParams;

fn wait_until(shared: &Shared, what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        if let Phase::Error(e) = &shared.status().phase {
            panic!("waiting for {what}, the worker failed: {e}");
        }
        if t.elapsed() > Duration::from_secs(120) {
            let st = shared.status();
            panic!("timed out waiting for {what}: phase {:?}, message {:?}, warning {:?}", st.phase, st.message, st.warning);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A worker with a tiny model, `steps` per render, that has captured `chunks` chunks of a tone
/// (which starts a render).
fn captured(dir: &std::path::Path, steps: usize, chunks: usize) -> (Arc<Shared>, crate::shared::AudioLink) {
    let model = dir.join("tiny.safetensors");
    msdm::model_file::Model::random(msdm::config::ModelConfig::tiny(), 3, &candle_core::Device::Cpu)
        .unwrap()
        .save(&model, msdm::model_file::StoreDType::F32)
        .unwrap();
    let params = Arc::new(MsdmParams::default());
    params.session.update(|s| s.model_path = Some(model.display().to_string()));
    let options = WorkerOptions { cache_root: Some(dir.join("cache")), steps_override: Some(steps) };
    let (shared, link) = Shared::new(params, options.worker_main());
    shared.send(Command::Activated { rate: 48_000 });
    for k in 0..chunks {
        let mut c = Chunk::new();
        c.start = (k * CHUNK_FRAMES) as i64;
        c.len = CHUNK_FRAMES;
        c.rate = 48_000;
        for ch in 0..CAPTURE_CHANNELS.min(2) {
            for i in 0..CHUNK_FRAMES {
                c.data[ch * CHUNK_FRAMES + i] = ((k * CHUNK_FRAMES + i) as f32 * 0.05).sin() * 0.3;
            }
        }
        link.to_worker.send(ToWorker::Chunk(c)).unwrap();
    }
    link.to_worker.send(ToWorker::Stopped).unwrap();
    (shared, link)
}

/// "Regenerate range" makes a new take from the current one: the chosen stem changes inside the
/// range only, every other sample is the parent take's; both takes stay selectable.
#[test]
fn regenerate_range_makes_a_new_take_that_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (shared, _link) = captured(dir.path(), 2, 8);
    wait_until(&shared, "the first take", || shared.params.session.get().takes.len() == 1 && matches!(shared.status().phase, Phase::Ready));
    shared.send(Command::Regenerate { stem: 0, from: 0.25, to: 0.5 });
    wait_until(&shared, "the regenerated take", || shared.params.session.get().takes.len() == 2 && matches!(shared.status().phase, Phase::Ready));
    let session = shared.params.session.get();
    assert_eq!(session.current, Some(1));
    let (parent, child) = (&session.takes[0], &session.takes[1]);
    let range = child.spec.range.clone().expect("the new take records its range");
    assert_eq!((range.parent.as_str(), range.stem), (parent.stems_key.as_str(), 0));
    assert_eq!((range.from, range.to), (parent.len / 4, parent.len / 2));
    let cache = Cache::at(dir.path().join("cache"));
    let (_, a) = cache.get_stems(&parent.stems_key).unwrap();
    let (_, b) = cache.get_stems(&child.stems_key).unwrap();
    for k in 0..4 {
        for c in 0..2 {
            let (x, y) = (&a[k][c], &b[k][c]);
            assert_eq!(x.len(), y.len());
            assert_eq!(x[..range.from], y[..range.from], "stem {k}: changed before the range");
            assert_eq!(x[range.to..], y[range.to..], "stem {k}: changed after the range");
            let changed = (range.from..range.to).filter(|&i| x[i] != y[i]).count();
            if k == 0 {
                assert!(changed > (range.to - range.from) / 2, "the bass barely changed inside the range ({changed})");
            } else {
                assert_eq!(changed, 0, "stem {k} changed inside the range");
            }
        }
    }
    // Back to the parent take.
    shared.send(Command::SelectTake(0));
    wait_until(&shared, "the parent take", || shared.params.session.get().current == Some(0));
    shared.shutdown();
}

/// The editor's Cancel stops a running render: no take, no stems, a "cancelled" message.
#[test]
fn cancel_stops_a_running_render() {
    let dir = tempfile::tempdir().unwrap();
    let (shared, link) = captured(dir.path(), 10_000, 1);
    wait_until(&shared, "denoiser progress", || matches!(shared.status().phase, Phase::Processing { done, .. } if done > 0));
    shared.send(Command::Cancel);
    wait_until(&shared, "the render to stop", || !matches!(shared.status().phase, Phase::Processing { .. }));
    assert_eq!(shared.status().message, "Render cancelled.");
    assert!(shared.params.session.get().takes.is_empty());
    assert!(shared.params.session.get().clip.is_some(), "the capture is kept for re-processing");
    std::thread::sleep(Duration::from_millis(50));
    assert!(!matches!(link.from_worker.try_recv(), Ok(ToAudio::Play(_))), "stems published after cancel");
    shared.shutdown();
}

/// Saved state is untrusted: a project whose session names paths instead of cache keys, lengths
/// the cached stems do not have, a take index past the list or extreme timeline positions
/// restores with a warning (or plays what the cache really holds), never a panic or a huge
/// allocation; a sound state restores its take.
#[test]
fn damaged_states_restore_with_a_message() {
    use nice_plug::params::persist::PersistentField;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path().join("cache"));
    let key = "0123456789abcdef0123456789abcdef";
    cache.put_stems(key, 48_000, &(0..4).map(|k| vec![vec![0.1 * k as f32; 64]; 2]).collect::<Vec<_>>()).unwrap();
    let sound = r#"{"clip":null,"takes":[{"clip":null,"start":0,"rate":48000,"len":64,"model_id":"x","seed":7,
        "spec":{"job":"Separate","roles":["Generate","Given","Given","Given"],"quality":"Draft","steps":16,"resamples":1,"bars":4,"seconds":0.0013},
        "stems_key":"0123456789abcdef0123456789abcdef","residual_max":0.0}],"current":0,"seed":7,"model_path":null,"export_dir":null}"#;
    let restore = |json: &str| {
        let session: crate::session::Session = serde_json::from_str(json).unwrap();
        let params = Arc::new(MsdmParams::default());
        params.session.set(session);
        let options = WorkerOptions { cache_root: Some(dir.path().join("cache")), steps_override: Some(1) };
        let (shared, link) = Shared::new(params, options.worker_main());
        shared.send(Command::Activated { rate: 48_000 });
        // Activation publishes "no stems" first; take it so the restored take's stems can follow.
        let _ = link.from_worker.recv_timeout(std::time::Duration::from_secs(10));
        shared.sync_session();
        shared.shutdown();
        let st = shared.status().clone();
        (st.message, st.warning, matches!(link.from_worker.try_recv(), Ok(ToAudio::Play(_))))
    };
    let (message, warning, plays) = restore(sound);
    assert_eq!((message.as_str(), warning, plays), ("Restored take 1 from the cache.", None, true));
    for (what, from, to) in [
        ("a path as the key", "\"stems_key\":\"0123456789abcdef0123456789abcdef\"", "\"stems_key\":\"../../../../etc/passwd\""),
        ("a length the stems do not have", "\"len\":64", "\"len\":1152921504606846976"),
        ("a take index past the list", "\"current\":0", "\"current\":99"),
        ("another rate", "\"rate\":48000", "\"rate\":0"),
    ] {
        let (message, warning, plays) = restore(&sound.replace(from, to));
        assert!(!plays, "{what}: stems were published");
        assert!(message.starts_with("Restored") && (warning.is_some() || what.contains("index")), "{what}: {message:?} {warning:?}");
    }
    // Extreme positions: the take plays (the player handles any start).
    let (_, warning, plays) = restore(&sound.replace("\"start\":0", "\"start\":-9223372036854775808"));
    assert!(plays && warning.is_none());
}
