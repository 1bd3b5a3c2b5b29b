//! The worker on a real render: the editor's Cancel.

use super::*;
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

/// The editor's Cancel stops a running render: no take, no stems, a "cancelled" message.
#[test]
fn cancel_stops_a_running_render() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny.safetensors");
    msdm::model_file::Model::random(msdm::config::ModelConfig::tiny(), 3, &candle_core::Device::Cpu)
        .unwrap()
        .save(&model, msdm::model_file::StoreDType::F32)
        .unwrap();
    let params = Arc::new(MsdmParams::default());
    params.session.update(|s| s.model_path = Some(model.display().to_string()));
    let options = WorkerOptions { cache_root: Some(dir.path().join("cache")), steps_override: Some(10_000) };
    let (shared, link) = Shared::new(params, options.worker_main());
    shared.send(Command::Activated { rate: 48_000 });
    let mut c = Chunk::new();
    c.start = 0;
    c.len = CHUNK_FRAMES;
    c.rate = 48_000;
    for ch in 0..CAPTURE_CHANNELS.min(2) {
        for i in 0..CHUNK_FRAMES {
            c.data[ch * CHUNK_FRAMES + i] = (i as f32 * 0.05).sin() * 0.3;
        }
    }
    link.to_worker.send(ToWorker::Chunk(c)).unwrap();
    link.to_worker.send(ToWorker::Stopped).unwrap();
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
