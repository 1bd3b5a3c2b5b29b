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

/// Averaged separation is the mean of separate posterior samples (sample k of an item draws from
/// `sample_seed(seed, k)`), and one sample is a plain run bit for bit.
#[test]
fn averaged_separation_is_the_mean_of_its_posterior_samples() {
    use crate::noise::ItemNoise;
    use crate::separator::{sample_seed, separate_mean, MAX_AVERAGE};
    let m = tiny_model();
    let a = mix(22_050, 1024);
    let y = Tensor::from_vec([a.channels[0].clone(), a.channels[1].clone()].concat(), (2, 1, 1024), &Device::Cpu).unwrap();
    let s = Settings { steps: 3, ..Settings::separation() };
    let (config, d) = (s.sampler_config(), m.stems_denoiser());
    let seeds = [3u64, 7];
    let plain = |k: usize| {
        let mut noise = ItemNoise::new(&seeds.map(|s| sample_seed(s, k)));
        separator::separate(d, &y, s.likelihood, &config, &mut noise, &mut |_, _| true).unwrap()
    };
    let vec4 = |t: &Tensor| t.to_vec3::<f32>().unwrap();
    let one = separate_mean(d, &y, s.likelihood, &config, &seeds, 1, None, &mut |_, _| true).unwrap();
    assert_eq!(vec4(&one), vec4(&plain(0)));
    let three = separate_mean(d, &y, s.likelihood, &config, &seeds, 3, None, &mut |_, _| true).unwrap();
    // the same six runs in one batch, the mean taken by hand: sample k of item b is row k·2 + b
    let all: Vec<u64> = (0..3).flat_map(|k| seeds.map(|s| sample_seed(s, k))).collect();
    let batch = separator::separate(d, &y.repeat((3, 1, 1)).unwrap(), s.likelihood, &config, &mut ItemNoise::new(&all), &mut |_, _| true).unwrap();
    let row = |k: usize| batch.narrow(0, 2 * k, 2).unwrap();
    let by_hand = ((row(0) + row(1)).unwrap() + row(2)).unwrap().affine(1.0 / 3.0, 0.0).unwrap();
    let max = |t: Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let gap = max((&three - &by_hand).unwrap());
    assert!(gap < 1e-6, "the mean against the batch's samples averaged by hand: {gap}");
    // and each of those samples is the one a plain run with its seed makes (batch size changes
    // the float rounding a little, which sampling carries along)
    let samples: Vec<Tensor> = (0..3).map(plain).collect();
    for (k, sample) in samples.iter().enumerate() {
        let d = max((row(k) - sample).unwrap());
        assert!(d < 2e-3 * max(sample.clone()), "sample {k} differs from its plain run by {d}");
    }
    let spread = max((&samples[0] - &samples[1]).unwrap());
    assert!(spread > 0.05 * max(samples[0].clone()), "the samples must differ for a mean to mean anything: {spread}");
    for bad in [0, MAX_AVERAGE + 1] {
        let err = separate_mean(d, &y, s.likelihood, &config, &seeds, bad, None, &mut |_, _| true).unwrap_err();
        assert!(err.to_string().contains("posterior samples"), "{err}");
        assert!(Settings { average: bad, ..s.clone() }.validate().is_err());
    }
}

/// The streaming separation averages when asked: the stems change and, with the Dirac
/// likelihood, still sum to the input.
#[test]
fn streaming_separation_averages_posterior_samples() {
    let m = tiny_model();
    let a = mix(44_100, 5_000);
    let s = Settings { steps: 2, ..Settings::separation() };
    let (single, _) = run_buffer(&m, &a, &s, usize::MAX);
    let (mean, report) = run_buffer(&m, &a, &Settings { average: 2, ..s }, 777);
    assert!(report.residual_max < 1e-5, "{}", report.residual_max);
    assert_ne!(mean, single);
}

/// The Wiener post-filter changes the streamed stems, keeps them summing to the input and, like
/// the rest, does not depend on how the input arrives.
#[test]
fn streaming_separation_with_the_wiener_post_filter() {
    let m = tiny_model();
    let a = mix(44_100, 5_000);
    let s = Settings { steps: 2, ..Settings::separation() };
    let (plain, _) = run_buffer(&m, &a, &s, usize::MAX);
    let w = Settings { wiener: Some(crate::wiener::WienerFilter { frame: 256, exponent: 1.25 }), ..s };
    let (filtered, report) = run_buffer(&m, &a, &w, 777);
    assert!(report.residual_max < 1e-5, "{}", report.residual_max);
    assert_ne!(filtered, plain);
    let (whole, _) = run_buffer(&m, &a, &w, usize::MAX);
    assert_eq!(whole, filtered);
}

/// The mid mode separates one item per window for a stereo mix (half the calls), shares every
/// channel out so its stems sum to it, does not depend on how the input arrives, and gives a mix
/// whose channels are equal the same stems in both.
#[test]
fn stereo_from_the_mid() {
    use crate::stereo::StereoMode;
    let m = tiny_model();
    let a = mix(44_100, 9_000);
    let each = Settings { steps: 2, batch: 1, wiener: Some(crate::wiener::WienerFilter { frame: 256, exponent: 1.25 }), ..Settings::separation() };
    let mid = Settings { stereo: StereoMode::Mid, ..each.clone() };
    let calls = |s: &Settings| {
        let mut n = 0;
        separate(&m, &mut BufferSource::new(&a), s, &mut BufferSink::default(), &mut |_| {
            n += 1;
            true
        })
        .unwrap();
        n
    };
    assert_eq!(calls(&mid) * 2, calls(&each));
    let (whole, report) = run_buffer(&m, &a, &mid, usize::MAX);
    assert!(report.residual_max < 1e-5, "{}", report.residual_max);
    assert!(whole.iter().all(|s| s.len() == 2 && s.iter().all(|c| c.len() == 9_000)));
    assert_ne!(whole, run_buffer(&m, &a, &each, usize::MAX).0);
    assert_eq!(run_buffer(&m, &a, &mid, 4097).0, whole);

    // a mix whose channels are equal gets equal stems in both
    let left = a.channels[0].clone();
    let (twin, _) = run_buffer(&m, &AudioBuffer::new(44_100, vec![left.clone(), left]), &mid, usize::MAX);
    assert!(twin.iter().all(|s| s[0] == s[1]));
}

