//! Streaming separation against the in-memory job, windows, batching and caps.

use super::*;
use crate::audio::AudioReader;
use crate::config::ModelConfig;
use crate::tasks::{self, Job};

fn tiny_model() -> Model {
    let mut m = Model::random(ModelConfig::tiny(), 1, &Device::Cpu).unwrap();
    m.meta.window = 1024;
    m
}

fn mix(rate: u32, frames: usize) -> AudioBuffer {
    let ch = (0..2)
        .map(|c| (0..frames).map(|i| 0.3 * ((i as f32 * 0.013 * (c + 1) as f32).sin()) + 0.05 * ((i * 7919 % 101) as f32 / 101.0 - 0.5)).collect())
        .collect();
    AudioBuffer::new(rate, ch)
}

fn run_buffer(m: &Model, a: &AudioBuffer, s: &Settings, chunk: usize) -> (Vec<Vec<Vec<f32>>>, Report) {
    let mut sink = BufferSink::default();
    let r = separate(m, &mut BufferSource::new(a).with_chunk(chunk), s, &mut sink, &mut |_| true).unwrap();
    (sink.stems, r)
}

/// However the input arrives, the stems are the same, have the input's shape and sum to it;
/// Gaussian and mono go through the same stream.
#[test]
fn stems_do_not_depend_on_how_the_input_arrives() {
    let m = tiny_model();
    let a = mix(44_100, 9_000); // several 1024-sample windows at 22,050 Hz
    for settings in [
        Settings { steps: 2, batch: 3, ..Settings::separation() },
        Settings { steps: 2, batch: 8, ..Settings::separation_gaussian() },
        Settings { steps: 2, mono: true, ..Settings::separation() },
    ] {
        let (whole, report) = run_buffer(&m, &a, &settings, usize::MAX);
        let channels = if settings.mono { 1 } else { 2 };
        assert_eq!(whole.len(), 4);
        assert!(whole.iter().all(|s| s.len() == channels && s.iter().all(|c| c.len() == 9_000)));
        assert_eq!(report.frames, 9_000);
        if matches!(settings.likelihood, Likelihood::Dirac { .. }) {
            assert!(report.residual_max < 1e-5, "{}", report.residual_max);
        }
        for chunk in [1000, 4097, 13] {
            let (got, r) = run_buffer(&m, &a, &settings, chunk);
            assert_eq!(got, whole, "chunks of {chunk}");
            assert_eq!(r.residual_max, report.residual_max);
        }
    }
}

/// The in-memory job and the file-to-file stream give the same stems; a cancelled stream
/// leaves neither stem files nor temporary files behind.
#[test]
fn file_stream_matches_memory_and_cancel_leaves_nothing() {
    let m = tiny_model();
    let a = mix(48_000, 7_000);
    let dir = std::env::temp_dir().join(format!("msdm-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("mix.wav");
    audio::write_wav(&input, &a, audio::SampleFormat::F32).unwrap();
    let s = Settings { steps: 2, ..Settings::separation() };
    let mem = tasks::run(&m, &Job::Separate { mix: a.clone() }, &s, &mut |_| true).unwrap();
    let paths: Vec<_> = ["b", "d", "g", "p"].iter().map(|n| dir.join(format!("{n}.wav"))).collect();
    let writers = |paths: &[std::path::PathBuf]| -> Vec<audio::WavStreamWriter> {
        paths.iter().map(|p| audio::WavStreamWriter::create(p, 2, 48_000, audio::SampleFormat::F32).unwrap()).collect()
    };
    let mut reader = AudioReader::open(&input, &Default::default()).unwrap();
    let mut w = writers(&paths);
    separate(&m, &mut reader, &s, &mut w, &mut |_| true).unwrap();
    w.into_iter().for_each(|w| w.finish().unwrap());
    for (p, stem) in paths.iter().zip(&mem.stems) {
        assert_eq!(&audio::read_audio(p).unwrap(), stem);
        std::fs::remove_file(p).unwrap();
    }
    let mut reader = AudioReader::open(&input, &Default::default()).unwrap();
    let mut w = writers(&paths);
    let err = separate(&m, &mut reader, &s, &mut w, &mut |p| p.done < 3).unwrap_err();
    assert!(err.to_string().contains("cancelled"));
    drop(w);
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("mix.wav")]);
    std::fs::remove_dir_all(&dir).unwrap();
}
