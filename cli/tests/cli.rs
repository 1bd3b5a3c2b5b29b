//! End-to-end runs of the `msdm` binary on real audio files, with a model imported from a
//! reference fixture checkpoint.

use std::path::{Path, PathBuf};
use std::process::Command;

use msdm::audio::{read_audio, write_wav, AudioBuffer, SampleFormat};

mod common;
use common::*;

/// A model imported from the 4-stem parity fixture checkpoint.
fn fixture_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny4.safetensors");
    let ckpt = repo().join("tests/fixtures/parity/msdm_tiny4/model.ckpt");
    let text = ok(&["import", ckpt.to_str().unwrap(), "-o", model.to_str().unwrap()]);
    assert!(text.contains("859084 parameters"), "{text}");
    model
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn separate_a_44k1_stereo_wav_into_stems_that_sum_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_model(tmp.path());
    let input = repo().join("tests/fixtures/audio/sine_44k1_stereo_i16.wav");
    let out = tmp.path().join("stems");
    let text = ok(&["separate", s(&input), "-o", s(&out), "--model", s(&model), "--steps", "4", "-q"]);
    assert!(text.contains("residual"), "the command reports the residual: {text}");
    let mix = read_audio(&input).unwrap();
    let stems: Vec<AudioBuffer> =
        ["bass", "drums", "guitar", "piano"].iter().map(|n| read_audio(&out.join(format!("{n}.wav"))).unwrap()).collect();
    let mut worst = 0f32;
    for st in &stems {
        assert_eq!((st.rate, st.num_channels(), st.frames()), (mix.rate, mix.num_channels(), mix.frames()));
    }
    for c in 0..mix.num_channels() {
        for i in 0..mix.frames() {
            let sum: f32 = stems.iter().map(|st| st.channels[c][i]).sum();
            worst = worst.max((sum - mix.channels[c][i]).abs());
        }
    }
    assert!(worst <= 1e-4, "stems sum to the mix within {worst}");
    // the stems are not trivially the mix split in four
    let quarter: f32 = mix.channels[0].iter().zip(&stems[1].channels[0]).map(|(m, d)| (m / 4.0 - d).abs()).fold(0.0, f32::max);
    assert!(quarter > 1e-3);
    // the mean of 2 posterior samples per window, and the Wiener post-filter (through the
    // resampling to the model's rate and back): other stems, which still sum to the mix
    for (dir, extra, says) in [("avg", "--average", "the mean of 2 samples per window"), ("wiener", "--wiener", "Wiener post-filter")] {
        let value = if extra == "--average" { "2" } else { "256" };
        let text = ok(&["separate", s(&input), "-o", s(&tmp.path().join(dir)), "--model", s(&model), "--steps", "4", extra, value]);
        assert!(text.contains(says), "{text}");
        let other: Vec<AudioBuffer> =
            ["bass", "drums", "guitar", "piano"].iter().map(|n| read_audio(&tmp.path().join(dir).join(format!("{n}.wav"))).unwrap()).collect();
        for c in 0..mix.num_channels() {
            for i in 0..mix.frames() {
                let sum: f32 = other.iter().map(|st| st.channels[c][i]).sum();
                assert!((sum - mix.channels[c][i]).abs() <= 1e-4, "{dir}: the stems sum to the mix");
            }
        }
        assert_ne!(other[1], stems[1], "{dir}: the same stems as without {extra}");
    }

    // Existing stems are never overwritten without --force, and stay untouched.
    let before = std::fs::read(out.join("bass.wav")).unwrap();
    let err = fails(&["separate", s(&input), "-o", s(&out), "--model", s(&model), "--steps", "2", "--seed", "5", "-q"]);
    assert!(err.contains("exist") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(out.join("bass.wav")).unwrap(), before);
    ok(&["separate", s(&input), "-o", s(&out), "--model", s(&model), "--steps", "2", "--seed", "5", "-q", "--force"]);
    assert_ne!(std::fs::read(out.join("bass.wav")).unwrap(), before);
}

#[test]
fn impute_and_generate_with_takes() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_model(tmp.path());
    let drums = repo().join("tests/fixtures/audio/sine_48k_mono.flac");
    let out = tmp.path().join("imp");
    ok(&[
        "impute", "--given", &format!("drums={}", s(&drums)), "--given", "piano=silence", "-o", s(&out), "--model", s(&model),
        "--steps", "3", "--takes", "2", "-q",
    ]);
    let given = read_audio(&drums).unwrap();
    for take in ["take-1", "take-2"] {
        let d = read_audio(&out.join(take).join("drums.wav")).unwrap();
        assert_eq!(d, given, "a given stem comes back unchanged");
        let p = read_audio(&out.join(take).join("piano.wav")).unwrap();
        assert!(p.channels[0].iter().all(|&x| x == 0.0), "a silent stem stays silent");
    }
    let b1 = read_audio(&out.join("take-1/bass.wav")).unwrap();
    let b2 = read_audio(&out.join("take-2/bass.wav")).unwrap();
    assert_eq!(b1.frames(), given.frames());
    assert_ne!(b1, b2, "takes use different seeds");

    // a given stem at another rate and length is resampled and padded, and the user is told
    let other = repo().join("tests/fixtures/audio/sine_44k1_stereo_i16.wav");
    let text = ok(&[
        "impute", "--given", &format!("drums={}", s(&drums)), "--given", &format!("guitar={}", s(&other)), "-o",
        s(&tmp.path().join("mixed")), "--model", s(&model), "--steps", "2", "-q",
    ]);
    assert!(text.contains("note: the given guitar stem is at 44100 Hz: resampled to 48000 Hz"), "{text}");
    assert!(text.contains("padded with silence"), "{text}");

    let gen = tmp.path().join("gen");
    ok(&["generate", "-o", s(&gen), "--model", s(&model), "--seconds", "0.5", "--rate", "48000", "--steps", "3", "-q"]);
    let g = read_audio(&gen.join("guitar.wav")).unwrap();
    assert_eq!((g.rate, g.frames()), (48_000, 24_000));
}

#[test]
fn bad_inputs_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let fx = repo().join("tests/fixtures/audio");
    let out = tmp.path().join("o");
    // no model at all
    let err = fails(&["separate", s(&fx.join("sine_44k1_stereo_i16.wav")), "-o", s(&out)]);
    assert!(err.contains("bundled default model") && err.contains("--model"), "{err}");
    let model = fixture_model(tmp.path());
    let m = s(&model);
    // unreadable, truncated, empty and missing audio
    for (file, needle) in [("garbage.wav", "format"), ("truncated.wav", "truncated"), ("empty.wav", "no audio samples"), ("missing.wav", "")]
    {
        let err = fails(&["separate", s(&fx.join(file)), "-o", s(&out), "--model", m]);
        assert!(err.contains(file) && err.contains(needle), "{file}: {err}");
    }
    // NaN samples
    let nan = tmp.path().join("nan.wav");
    let a = AudioBuffer::new(22_050, vec![vec![0.1; 2000]]);
    write_wav(&nan, &a, SampleFormat::F32).unwrap();
    let mut bytes = std::fs::read(&nan).unwrap();
    let n = bytes.len();
    bytes[n - 400..n - 396].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&nan, bytes).unwrap();
    let err = fails(&["separate", s(&nan), "-o", s(&out), "--model", m]);
    assert!(err.contains("NaN"), "{err}");
    // a model file that is not a model, and weights that do not fit their config
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a model").unwrap();
    let err = fails(&["info", s(&junk)]);
    assert!(err.contains("not a safetensors file"), "{err}");
    // bad option values
    let err = fails(&["impute", "--given", "vocals=x.wav", "-o", s(&out), "--model", m]);
    assert!(err.contains("vocals") && err.contains("bass, drums, guitar, piano"), "{err}");
    let err = fails(&["separate", s(&fx.join("sine_44k1_stereo_i16.wav")), "-o", s(&out), "--model", m, "--constrained-source", "7"]);
    assert!(err.contains("constrained"), "{err}");
    let err = fails(&["generate", "--seconds", "1", "-o", s(&out), "--model", m, "--guidance", "1"]);
    assert!(err.contains("steer imputation"), "{err}");
    let err = fails(&["impute", "--given", &format!("drums={}", s(&fx.join("sine_44k1_stereo_i16.wav"))), "-o", s(&out), "--model", m, "--guidance-interval", "5"]);
    assert!(err.contains("LO,HI"), "{err}");
    let err = fails(&["impute", "--given", &format!("drums={}", s(&fx.join("sine_44k1_stereo_i16.wav"))), "-o", s(&out), "--model", m, "--average", "2"]);
    assert!(err.contains("--average averages separations") && err.contains("--takes"), "{err}");
    let err = fails(&["separate", s(&fx.join("sine_44k1_stereo_i16.wav")), "-o", s(&out), "--model", m, "--average", "0"]);
    assert!(err.contains("average 0") && err.contains("posterior samples"), "{err}");
    for bad in [["--sigma-min", "2"], ["--rho", "0"], ["--sigma-min", "0"]] {
        let err = fails(&["separate", s(&fx.join("sine_44k1_stereo_i16.wav")), "-o", s(&out), "--model", m, bad[0], bad[1]]);
        assert!(err.contains("sigma_min < sigma_max") && err.contains("rho > 0"), "{bad:?}: {err}");
    }
    assert!(!out.join("bass.wav").exists(), "nothing is written on errors");
}

#[test]
fn info_and_import_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_model(tmp.path());
    let text = ok(&["info", s(&model), "--json"]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["parameters"], 859084);
    assert_eq!(v["config"]["attentions"], serde_json::json!([false, true, true]));
    // import refuses to replace a file, and refuses non-checkpoints
    let err = fails(&["import", s(&repo().join("tests/fixtures/parity/msdm_tiny4/model.ckpt")), "-o", s(&model)]);
    assert!(err.contains("--force"), "{err}");
    let err = fails(&["import", s(&repo().join("tests/fixtures/audio/garbage.wav")), "-o", s(&tmp.path().join("x.safetensors"))]);
    assert!(err.contains("zip"), "{err}");
}

#[test]
fn exported_model_carries_its_default_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture_model(tmp.path());
    let defaults = tmp.path().join("defaults.json");
    std::fs::write(
        &defaults,
        r#"{"separate": {"steps": 3, "churn": 5.0, "resamples": 1, "sigma_min": 0.0001, "sigma_max": 1.0, "rho": 7.0,
            "likelihood": {"dirac": {"constrained": 0}}, "seed": 0, "mono": false, "batch": 2,
            "wiener": {"frame": 1024, "exponent": 1.5}}}"#,
    )
    .unwrap();
    let shipped = tmp.path().join("shipped.safetensors");
    ok(&["export", s(&model), "-o", s(&shipped), "--f16", "--defaults", s(&defaults)]);
    assert!(std::fs::metadata(&shipped).unwrap().len() < std::fs::metadata(&model).unwrap().len());
    let input = repo().join("tests/fixtures/audio/sine_22k05_mono_f32.wav");
    let text = ok(&["separate", s(&input), "-o", s(&tmp.path().join("o")), "--model", s(&shipped)]);
    assert!(text.contains("3 steps x 1 resamples, churn 5"), "{text}");
    assert!(text.contains("Wiener post-filter (frame 1024, exponent 1.5)"), "{text}");
    // the command line still wins
    let text = ok(&["separate", s(&input), "-o", s(&tmp.path().join("o2")), "--model", s(&shipped), "--steps", "2", "-q"]);
    assert!(text.contains("2 steps x 1 resamples"), "{text}");
    let text = ok(&["separate", s(&input), "-o", s(&tmp.path().join("o3")), "--model", s(&shipped), "--wiener-exponent", "2"]);
    assert!(text.contains("Wiener post-filter (frame 1024, exponent 2)"), "{text}");
    let text = ok(&["separate", s(&input), "-o", s(&tmp.path().join("o4")), "--model", s(&shipped), "--wiener", "0"]);
    assert!(text.contains("3 steps x 1 resamples") && !text.contains("Wiener"), "{text}");
    // the filter changes the stems, and they still sum to the mix (the Dirac likelihood)
    let read = |dir: &str, stem: &str| msdm::audio::read_audio(&tmp.path().join(dir).join(format!("{stem}.wav"))).unwrap().channels;
    let mix = msdm::audio::read_audio(&input).unwrap().channels;
    let (filtered, plain) = (read("o", "bass"), read("o4", "bass"));
    assert_ne!(filtered, plain, "the Wiener post-filter left the stems as they were");
    let parts: Vec<Vec<Vec<f32>>> = ["bass", "drums", "guitar", "piano"].iter().map(|st| read("o", st)).collect();
    let sum: Vec<f32> = (0..mix[0].len()).map(|i| parts.iter().map(|p| p[0][i]).sum()).collect();
    let err = sum.iter().zip(&mix[0]).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err < 1e-4, "the filtered stems miss the mix by {err}");
    let err = fails(&["separate", s(&input), "-o", s(&tmp.path().join("o5")), "--model", s(&shipped), "--wiener", "1026"]);
    assert!(err.contains("Wiener frame 1026") && err.contains("--wiener"), "{err}");
    let err = fails(&["generate", "--seconds", "1", "-o", s(&tmp.path().join("o6")), "--model", s(&shipped), "--wiener", "4096"]);
    assert!(err.contains("no mix to share out"), "{err}");
    // a stereo mode stored with the model reaches `msdm separate`; the command line wins
    std::fs::write(&defaults, r#"{"separate": {"steps": 2, "churn": 0.0, "resamples": 1, "sigma_min": 0.0001, "sigma_max": 1.0, "rho": 7.0,
        "likelihood": {"dirac": {"constrained": 0}}, "seed": 0, "mono": false, "batch": 2, "stereo": "mid"}}"#).unwrap();
    let mid_model = tmp.path().join("mid.safetensors");
    ok(&["export", s(&model), "-o", s(&mid_model), "--defaults", s(&defaults)]);
    let stereo = repo().join("tests/fixtures/audio/sine_44k1_stereo_i16.wav");
    let text = ok(&["separate", s(&stereo), "-o", s(&tmp.path().join("m1")), "--model", s(&mid_model)]);
    assert!(text.contains("stereo from the mid"), "{text}");
    let text = ok(&["separate", s(&stereo), "-o", s(&tmp.path().join("m2")), "--model", s(&mid_model), "--stereo", "each"]);
    assert!(!text.contains("stereo from the mid"), "{text}");
    let mix = msdm::audio::read_audio(&stereo).unwrap().channels;
    let parts: Vec<Vec<Vec<f32>>> = ["bass", "drums", "guitar", "piano"].iter().map(|st| read("m1", st)).collect();
    assert_ne!(parts[0], read("m2", "bass"), "the mid mode left the stems as they were");
    for (c, ch) in mix.iter().enumerate() {
        let err = (0..ch.len()).fold(0f32, |m, i| m.max((parts.iter().map(|p| p[c][i]).sum::<f32>() - ch[i]).abs()));
        assert!(err < 1e-4, "channel {c}: the stems miss the mix by {err}");
    }
    let err = fails(&["generate", "--seconds", "1", "-o", s(&tmp.path().join("m3")), "--model", s(&shipped), "--stereo", "mid"]);
    assert!(err.contains("no mix to separate"), "{err}");
    // bad defaults are refused
    std::fs::write(&defaults, r#"{"separate": {"steps": "many"}}"#).unwrap();
    let err = fails(&["export", s(&model), "-o", s(&tmp.path().join("bad.safetensors")), "--defaults", s(&defaults)]);
    assert!(err.contains("defaults.separate"), "{err}");
}

#[test]
fn synth_data_then_evaluate_with_the_paper_protocol() {
    let sf2 = Path::new("/usr/share/sounds/sf2/TimGM6mb.sf2");
    assert!(sf2.exists(), "install the Debian package timgm6mb-soundfont (.ci/run does)");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let text = ok(&["data", "synth", "-o", s(&data), "--soundfont", s(sf2), "--split", "test", "--count", "1", "--seconds", "13", "13", "-q"]);
    assert!(text.contains("1 tracks"), "{text}");
    let model = fixture_model(tmp.path());
    let json = tmp.path().join("eval.json");
    let text = ok(&["eval", "--data", s(&data), "--model", s(&model), "--steps", "2", "--resamples", "1", "--json", s(&json), "-q"]);
    assert!(text.contains("All"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["summary"]["windows"].as_u64().unwrap() > 0, "{v}");
    assert!(v["summary"]["all"].as_f64().unwrap().is_finite());
    // a folder that is not a dataset
    let err = fails(&["eval", "--data", s(tmp.path()), "--model", s(&model)]);
    assert!(err.contains("test"), "{err}");
}

/// A reader that stops early (`msdm info model | head -1`) ends `msdm` quietly, with no panic.
#[test]
#[cfg(unix)]
fn closed_stdout_is_not_a_panic() {
    use std::process::Stdio;
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/msdm-small.safetensors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_msdm"))
        .arg("info")
        .arg(&bundled)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run msdm");
    drop(child.stdout.take()); // the reader goes away before msdm writes
    let out = child.wait_with_output().expect("wait for msdm");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "msdm info panicked on a closed stdout:\n{err}");
}
