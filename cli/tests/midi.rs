//! `msdm midi`, the `--midi` option of separate/generate/impute, and `msdm eval --midi`, run as the binary
//! on real files: a song rendered by `msdm data synth` and the MIDI it was rendered from.
//! Needs the TimGM6mb SoundFont (the Debian package timgm6mb-soundfont; .ci/run installs it).

use std::path::{Path, PathBuf};

use msdm::transcribe::evaluate::reference_bass;
use msdm::transcribe::{read_midi, score, Tolerance};

mod common;
use common::*;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const SF2: &str = "/usr/share/sounds/sf2/TimGM6mb.sf2";

/// Two 13 s songs of the test split, rendered by the CLI; returns the data root.
fn render(tmp: &Path) -> PathBuf {
    assert!(Path::new(SF2).exists(), "install the Debian package timgm6mb-soundfont (.ci/run does)");
    let data = tmp.join("data");
    ok(&["data", "synth", "-o", s(&data), "--soundfont", SF2, "--split", "test", "--count", "2", "--seconds", "13", "13", "-q"]);
    data
}

/// The first rendered track that has a bass part.
fn track_with_bass(data: &Path) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data.join("test")).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    dirs.into_iter().find(|d| d.join("bass.wav").exists()).expect("a rendered song with bass")
}

#[test]
fn midi_transcribes_a_rendered_bass_stem_and_guards_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = render(tmp.path());
    let track = track_with_bass(&data);
    let out = tmp.path().join("bass.mid");
    let text = ok(&["midi", s(&track.join("bass.wav")), "-o", s(&out)]);
    assert!(text.contains("notes") && text.contains("transcribed in"), "{text}");
    let notes = &read_midi(&out).unwrap()[0].notes;
    let reference = reference_bass(&track.join("song.mid")).unwrap();
    let sc = score(&reference, notes, &Tolerance::default());
    assert!(sc.f1() >= 0.8, "F1 {} ({sc:?})", sc.f1());

    // An existing file is refused and kept; --force replaces it.
    let before = std::fs::read(&out).unwrap();
    let err = fails(&["midi", s(&track.join("bass.wav")), "-o", s(&out), "--bpm", "100"]);
    assert!(err.contains("refusing") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    let text = ok(&["midi", s(&track.join("bass.wav")), "-o", s(&out), "--bpm", "100", "--force"]);
    assert!(text.contains("100 bpm, quantised"), "{text}");
    for n in &read_midi(&out).unwrap()[0].notes {
        let steps = n.onset_s / 0.15; // a sixteenth at 100 bpm
        assert!((steps - steps.round()).abs() < 0.01, "{n:?} is off the sixteenth grid");
    }

    // Bad input: not audio, a bad tempo, a folder as output.
    let bogus = tmp.path().join("notes.txt");
    std::fs::write(&bogus, "not audio").unwrap();
    let err = fails(&["midi", s(&bogus), "-o", s(&tmp.path().join("x.mid"))]);
    assert!(err.contains("notes.txt"), "{err}");
    let err = fails(&["midi", s(&track.join("bass.wav")), "-o", s(&tmp.path().join("y.mid")), "--bpm", "0"]);
    assert!(err.contains("bpm"), "{err}");
    let err = fails(&["midi", s(&track.join("bass.wav")), "-o", s(tmp.path())]);
    assert!(err.contains("folder"), "{err}");
    assert!(!tmp.path().join("x.mid").exists() && !tmp.path().join("y.mid").exists());
}

#[test]
fn eval_midi_scores_the_true_bass_stems_against_their_midi() {
    let tmp = tempfile::tempdir().unwrap();
    let data = render(tmp.path());
    let json = tmp.path().join("midi.json");
    let text = ok(&["eval", "--midi", "--data", s(&data), "--split", "test", "--json", s(&json), "-q"]);
    assert!(text.contains("all notes") && text.contains("12 s of audio in"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let f1 = v["pooled"]["f1"].as_f64().unwrap();
    assert!(f1 >= 0.8, "pooled F1 {f1}: {v}");
    assert!(v["songs"].as_array().unwrap().len() + v["skipped"].as_array().unwrap().len() == 2, "{v}");
    assert!(v["excerpt_12s_seconds"]["max"].as_f64().unwrap() > 0.0);
    // a tuning file with a misspelt field is refused, naming it
    let bad = tmp.path().join("tuning.json");
    std::fs::write(&bad, r#"{"yin_treshold": 0.3}"#).unwrap();
    let err = fails(&["eval", "--midi", "--data", s(&data), "--split", "test", "--tuning", s(&bad), "-q"]);
    assert!(err.contains("tuning") && err.contains("yin_treshold"), "{err}");
    // a folder that is not a split
    let err = fails(&["eval", "--midi", "--data", s(tmp.path()), "--split", "validation", "-q"]);
    assert!(err.contains("msdm data synth"), "{err}");
    // --render belongs to --midi
    let err = fails(&["eval", "--data", s(&data), "--render", "2"]);
    assert!(err.contains("--midi"), "{err}");
}

#[test]
fn separate_generate_and_impute_write_bass_mid_beside_the_stems() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny4.safetensors");
    let ckpt = repo().join("tests/fixtures/parity/msdm_tiny4/model.ckpt");
    ok(&["import", s(&ckpt), "-o", s(&model)]);
    let gen = tmp.path().join("gen");
    let text = ok(&[
        "generate", "-o", s(&gen), "--model", s(&model), "--seconds", "0.5", "--steps", "2", "--takes", "2", "--midi", "--midi-bpm",
        "120", "-q",
    ]);
    for take in ["take-1", "take-2"] {
        let mid = gen.join(take).join("bass.mid");
        assert!(mid.exists(), "{text}");
        assert_eq!(read_midi(&mid).unwrap()[0].name, "bass");
    }
    // bass.mid is guarded like the stems: refused before any sampling, kept as it was
    let before = std::fs::read(gen.join("take-1/bass.mid")).unwrap();
    std::fs::remove_file(gen.join("take-1/bass.wav")).unwrap();
    let err = fails(&["generate", "-o", s(&gen.join("take-1")), "--model", s(&model), "--seconds", "0.5", "--steps", "2", "--midi"]);
    assert!(err.contains("bass.mid") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(gen.join("take-1/bass.mid")).unwrap(), before);
    assert!(!gen.join("take-1/bass.wav").exists(), "nothing was written");
    // --midi-bpm needs --midi, and a bad tempo is refused before sampling
    let err = fails(&["generate", "-o", s(&tmp.path().join("g2")), "--model", s(&model), "--midi-bpm", "120"]);
    assert!(err.contains("--midi"), "{err}");
    let err = fails(&["generate", "-o", s(&tmp.path().join("g3")), "--model", s(&model), "--midi", "--midi-bpm", "9999"]);
    assert!(err.contains("bpm"), "{err}");

    let drums = repo().join("tests/fixtures/audio/sine_48k_mono.flac");
    let imp = tmp.path().join("imp");
    ok(&["impute", "--given", &format!("drums={}", s(&drums)), "-o", s(&imp), "--model", s(&model), "--steps", "2", "--midi", "-q"]);
    assert!(imp.join("bass.mid").exists() && imp.join("bass.wav").exists());

    // separate streams its stems to disk; --midi reads the bass back and transcribes it
    let mix = repo().join("tests/fixtures/audio/sine_44k1_stereo_i16.wav");
    let sep = tmp.path().join("sep");
    let text = ok(&["separate", s(&mix), "-o", s(&sep), "--model", s(&model), "--steps", "2", "--midi", "-q"]);
    assert!(text.contains("bass.mid"), "{text}");
    assert_eq!(read_midi(&sep.join("bass.mid")).unwrap()[0].name, "bass");
}
