//! `msdm regenerate` end to end: stems written by `msdm separate` from the bundled demo clip, a
//! range of one stem regenerated, everything else checked bit for bit; and its errors.

use std::path::Path;

use msdm::audio::{read_audio, write_wav, AudioBuffer, SampleFormat};

mod common;
use common::*;

const STEMS: [&str; 4] = ["bass", "drums", "guitar", "piano"];

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stems(dir: &Path) -> Vec<AudioBuffer> {
    STEMS.iter().map(|n| read_audio(&dir.join(format!("{n}.wav"))).unwrap()).collect()
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Outside `from..to` (frames) every stem is the input bit for bit, and so is every stem but
/// `chosen` inside; `chosen` is new inside.
fn check(input: &[AudioBuffer], out: &[AudioBuffer], chosen: usize, from: usize, to: usize) {
    for (k, (i, o)) in input.iter().zip(out).enumerate() {
        assert_eq!((o.rate, o.num_channels(), o.frames()), (i.rate, i.num_channels(), i.frames()), "{} keeps its shape", STEMS[k]);
        for (ci, co) in i.channels.iter().zip(&o.channels) {
            if k != chosen {
                assert!(same_bits(ci, co), "{} was not chosen but changed", STEMS[k]);
            } else {
                assert!(same_bits(&ci[..from], &co[..from]) && same_bits(&ci[to..], &co[to..]), "{} changed outside the range", STEMS[k]);
                let changed = (from..to).filter(|&j| (ci[j] - co[j]).abs() > 1e-6).count();
                assert!(changed > (to - from) * 9 / 10, "only {changed} of {} samples are new", to - from);
            }
        }
    }
}

#[test]
fn regenerate_a_range_of_separated_stems() {
    let tmp = tempfile::tempdir().unwrap();
    // the 4-stem parity fixture network, with a short window so the test runs several windows
    let model = tmp.path().join("tiny4.safetensors");
    let ckpt = repo().join("tests/fixtures/parity/msdm_tiny4/model.ckpt");
    ok(&["import", s(&ckpt), "-o", s(&model), "--window", "8192"]);
    let m = s(&model);
    let sep = tmp.path().join("stems");
    let demo = repo().join("assets/demo.wav");
    ok(&["separate", s(&demo), "-o", s(&sep), "--model", m, "--steps", "2", "--resamples", "1", "-q"]);
    let input = stems(&sep);
    let rate = input[0].rate as usize;

    let out = tmp.path().join("out");
    let text = ok(&["regenerate", s(&sep), "--stem", "bass", "--from", "2.0", "--to", "3.5", "-o", s(&out), "--model", m, "--steps", "3", "-q"]);
    check(&input, &stems(&out), 0, 2 * rate, 7 * rate / 2);
    assert!(text.contains("bass edge at 2.000 s") && text.contains("bass edge at 3.500 s"), "the edges are reported: {text}");

    // bars: at 120 bpm in 4/4 a bar is 2 s, so bars 1..2 are 2 s..4 s; two takes, two seeds
    let bars = tmp.path().join("bars");
    ok(&["regenerate", s(&sep), "--stem", "piano", "--bpm", "120", "--from", "1", "--to", "2", "-o", s(&bars), "--takes", "2", "--model", m, "--steps", "2", "-q"]);
    let (t1, t2) = (stems(&bars.join("take-1")), stems(&bars.join("take-2")));
    check(&input, &t1, 3, 2 * rate, 4 * rate);
    check(&input, &t2, 3, 2 * rate, 4 * rate);
    assert_ne!(t1[3], t2[3], "takes use different seeds");

    // existing results are not overwritten without --force, and the input folder never is
    let err = fails(&["regenerate", s(&sep), "--stem", "bass", "--from", "2", "--to", "3", "-o", s(&out), "--model", m, "--steps", "2"]);
    assert!(err.contains("--force"), "{err}");
    let err = fails(&["regenerate", s(&sep), "--stem", "bass", "--from", "2", "--to", "3", "-o", s(&sep), "--force", "--model", m]);
    assert!(err.contains("stems' own folder"), "{err}");
    assert_eq!(stems(&sep), input, "the input stems are untouched");
}

#[test]
fn regenerate_refuses_bad_input_with_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stems");
    std::fs::create_dir(&dir).unwrap();
    let tone = |rate: u32, frames: usize| AudioBuffer::new(rate, vec![(0..frames).map(|i| (i as f32 * 0.05).sin() * 0.2).collect()]);
    for n in ["bass", "drums", "guitar"] {
        write_wav(&dir.join(format!("{n}.wav")), &tone(22_050, 44_100), SampleFormat::F32).unwrap();
    }
    // the bundled model reads fine and stays unused: every error comes before any sampling
    let bundled = repo().join("assets/msdm-small.safetensors");
    let m = s(&bundled);
    let out = tmp.path().join("out");
    let run = |extra: &[&str]| {
        let mut args = vec!["regenerate", s(&dir), "-o", s(&out), "--model", m];
        args.extend_from_slice(extra);
        fails(&args)
    };
    let err = run(&["--stem", "bass", "--from", "0.5", "--to", "1"]);
    assert!(err.contains("piano.wav is missing") && err.contains("msdm separate"), "{err}");
    write_wav(&dir.join("piano.wav"), &tone(22_050, 40_000), SampleFormat::F32).unwrap();
    let err = run(&["--stem", "bass", "--from", "0.5", "--to", "1"]);
    assert!(err.contains("different lengths") && err.contains("piano 40000 frames"), "{err}");
    write_wav(&dir.join("piano.wav"), &tone(44_100, 88_200), SampleFormat::F32).unwrap();
    let err = run(&["--stem", "bass", "--from", "0.5", "--to", "1"]);
    assert!(err.contains("different sample rates") && err.contains("piano 44100 Hz"), "{err}");
    write_wav(&dir.join("piano.wav"), &tone(22_050, 44_100), SampleFormat::F32).unwrap();
    for (from, to, needle) in [
        ("1.5", "1.0", "must come before"),
        ("1.0", "1.0", "must come before"),
        ("1.0", "2.5", "past the end of the stems (2.000 s)"),
        ("-1", "1.0", "before the start"),
    ] {
        let err = run(&["--stem", "bass", "--from", from, "--to", to]);
        assert!(err.contains(needle), "--from {from} --to {to}: {err}");
    }
    let err = run(&["--stem", "bass", "--bpm", "120", "--from", "0", "--to", "2"]);
    assert!(err.contains("past the end") && err.contains("bar"), "{err}");
    let err = run(&["--stem", "vocals", "--from", "0.5", "--to", "1"]);
    assert!(err.contains("vocals") && err.contains("bass, drums, guitar, piano"), "{err}");
    let err = fails(&["regenerate", s(&tmp.path().join("nowhere")), "--stem", "bass", "--from", "0", "--to", "1", "-o", s(&out), "--model", m]);
    assert!(err.contains("not a folder"), "{err}");
    assert!(!out.exists(), "nothing is written on errors");
}
