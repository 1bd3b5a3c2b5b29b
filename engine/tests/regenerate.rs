//! Regenerating a time range of stems, on real audio (excerpts of the bundled demo clip) with a
//! small random model: outside the range nothing changes, bit for bit; inside, the chosen stems do.

use std::path::Path;

use candle_core::Device;
use msdm::audio::{read_audio, resample, AudioBuffer};
use msdm::config::ModelConfig;
use msdm::model_file::Model;
use msdm::regenerate::{self, Regeneration};
use msdm::tasks::Settings;

fn tiny_model() -> Model {
    let mut m = Model::random(ModelConfig::tiny(), 7, &Device::Cpu).unwrap();
    m.meta.window = 1024;
    m
}

fn quick() -> Settings {
    Settings { steps: 3, ..Settings::imputation() }
}

/// Four "stems": one-second excerpts of the demo clip from different places, at `rate`.
fn demo_stems(rate: u32, channels: usize) -> Vec<AudioBuffer> {
    let demo = read_audio(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/demo.wav")).unwrap();
    let demo = if demo.rate == rate { demo.channels } else { resample(&demo.channels, demo.rate, rate).unwrap() };
    let n = rate as usize;
    (0..4)
        .map(|s| {
            let at = n / 2 + s * 2 * n;
            AudioBuffer::new(rate, (0..channels).map(|c| demo[c][at..at + n].to_vec()).collect())
        })
        .collect()
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Checks the output against the input: same shape, outside `what.range` (and in the stems left
/// alone) bit-identical, inside the chosen stems changed nearly everywhere.
fn check(input: &[AudioBuffer], out: &[AudioBuffer], what: &Regeneration) {
    assert_eq!(out.len(), input.len());
    let r = what.range.clone();
    for (s, (i, o)) in input.iter().zip(out).enumerate() {
        assert_eq!((o.rate, o.num_channels(), o.frames()), (i.rate, i.num_channels(), i.frames()));
        for (ci, co) in i.channels.iter().zip(&o.channels) {
            if !what.stems.contains(&s) {
                assert!(same_bits(ci, co), "stem {s} was not chosen but changed");
                continue;
            }
            assert!(same_bits(&ci[..r.start], &co[..r.start]), "stem {s} changed before the range");
            assert!(same_bits(&ci[r.end..], &co[r.end..]), "stem {s} changed after the range");
            let changed = r.clone().filter(|&k| (ci[k] - co[k]).abs() > 1e-6).count();
            assert!(changed as f64 > 0.95 * r.len() as f64, "stem {s}: only {changed} of {} samples changed in the range", r.len());
            assert!(co[r.clone()].iter().all(|x| x.is_finite()));
        }
    }
}

#[test]
fn outside_the_range_is_bit_identical_and_inside_is_new() {
    let m = tiny_model();
    // 44.1 kHz stereo; a range of several model windows, so windows run in sequence
    let stems = demo_stems(44_100, 2);
    let range = regenerate::frame_range(0.3, 0.55, 44_100, stems[0].frames()).unwrap();
    assert_eq!(range, 13_230..24_255);
    let what = Regeneration { stems: vec![0], range, crossfade: regenerate::DEFAULT_CROSSFADE_S };
    let windows = regenerate::planned_calls(&m, 44_100, 44_100, &what, &quick()) / 3;
    assert!(windows >= 4, "{windows} windows");
    let mut calls = 0;
    let out = regenerate::regenerate(&m, &stems, &what, &quick(), &mut |p| {
        calls = p.done;
        true
    })
    .unwrap();
    assert_eq!(calls, windows * 3);
    check(&stems, &out.stems, &what);
    assert_eq!(out.names, ["bass", "drums", "guitar", "piano"]);

    // the same seed gives the same take; another seed another one
    let again = regenerate::regenerate(&m, &stems, &what, &quick(), &mut |_| true).unwrap();
    assert_eq!(again.stems, out.stems);
    let other = regenerate::regenerate(&m, &stems, &what, &Settings { seed: 1, ..quick() }, &mut |_| true).unwrap();
    assert_ne!(other.stems[0], out.stems[0]);

    // every edge is measured, per channel
    let edges = regenerate::edge_steps(&stems, &out.stems, &what);
    assert_eq!(edges.len(), 4);
    assert!(edges.iter().all(|e| e.p99 > 0.0 && e.step.is_finite() && e.fade_max >= e.step && e.input_max > 0.0));
}

#[test]
fn ranges_at_the_clip_ends_several_stems_other_rates_and_mono() {
    let m = tiny_model();
    let stems = demo_stems(48_000, 1);
    let n = stems[0].frames();
    for (range, chosen) in [(0..2_000, vec![1, 3]), (n - 3_000..n, vec![2]), (20_000..20_001, vec![0, 1, 2, 3])] {
        let what = Regeneration { stems: chosen, range, crossfade: 0.002 };
        let out = regenerate::regenerate(&m, &stems, &what, &quick(), &mut |_| true).unwrap();
        if what.range.len() > 1 {
            check(&stems, &out.stems, &what);
        }
        // a range of one frame still regenerates it, and only it
        let r = what.range.clone();
        for s in 0..4 {
            assert!(same_bits(&stems[s].channels[0][..r.start], &out.stems[s].channels[0][..r.start]));
            assert!(same_bits(&stems[s].channels[0][r.end..], &out.stems[s].channels[0][r.end..]));
        }
    }
    // --mono: stereo stems, the model sees their downmix; outside the range still bit-identical
    let stereo = demo_stems(22_050, 2);
    let what = Regeneration { stems: vec![0], range: 5_000..9_000, crossfade: 0.0 };
    let out = regenerate::regenerate(&m, &stereo, &what, &Settings { mono: true, ..quick() }, &mut |_| true).unwrap();
    check(&stereo, &out.stems, &what);
    // without a fade both channels get the same new part
    assert_eq!(out.stems[0].channels[0][5_000..9_000], out.stems[0].channels[1][5_000..9_000]);
}

#[test]
fn bad_requests_get_clear_errors() {
    let m = tiny_model();
    let stems = demo_stems(44_100, 1);
    let n = stems[0].frames();
    let what = Regeneration { stems: vec![0], range: 100..200, crossfade: 0.01 };
    let err = |stems: &[AudioBuffer], what: &Regeneration| {
        format!("{:#}", regenerate::regenerate(&m, stems, what, &quick(), &mut |_| true).unwrap_err())
    };
    let mut short = stems.clone();
    short[2].channels[0].truncate(n - 10);
    assert!(err(&short, &what).contains("different lengths"), "{}", err(&short, &what));
    let mut other_rate = stems.clone();
    other_rate[1].rate = 48_000;
    assert!(err(&other_rate, &what).contains("different sample rates"));
    let mut stereo = stems.clone();
    let copy = stereo[3].channels[0].clone();
    stereo[3].channels.push(copy);
    assert!(err(&stereo, &what).contains("channel counts"));
    assert!(err(&stems[..3], &what).contains("all 4 stems"));
    let mut nan = stems.clone();
    nan[0].channels[0][5] = f32::NAN;
    assert!(err(&nan, &what).contains("not a finite number"));
    let past = Regeneration { range: n - 5..n + 5, ..what.clone() };
    assert!(err(&stems, &past).contains("not inside"));
    // cancelling stops the run
    let cancelled = regenerate::regenerate(&m, &stems, &what, &quick(), &mut |p| p.done < 2).unwrap_err();
    assert!(cancelled.to_string().contains("cancelled"));

    // the range as people give it
    let r = |a: f64, b: f64| regenerate::frame_range(a, b, 44_100, n).map_err(|e| e.to_string());
    assert!(r(0.5, 0.5).unwrap_err().contains("must come before"));
    assert!(r(0.6, 0.5).unwrap_err().contains("must come before"));
    assert!(r(-0.1, 0.5).unwrap_err().contains("before the start"));
    assert!(r(0.5, 1.5).unwrap_err().contains("past the end of the stems (1.000 s)"));
    assert!(r(f64::NAN, 0.5).is_err());
    assert_eq!(r(0.0, 1.0).unwrap(), 0..n);
    assert_eq!(regenerate::bars_to_seconds(4.0, 120.0, 4.0).unwrap(), 8.0);
    assert!(regenerate::bars_to_seconds(4.0, 0.0, 4.0).is_err());
    let names: Vec<String> = msdm::STEMS.iter().map(|s| s.to_string()).collect();
    assert_eq!(regenerate::stem_indices(&names, &["piano".into(), "bass".into(), "piano".into()]).unwrap(), [3, 0]);
    assert!(regenerate::stem_indices(&names, &["vocals".into()]).unwrap_err().to_string().contains("bass, drums, guitar, piano"));
}

/// With a per-stem σ model (issue 15) regeneration works the same way: the other stems, given
/// over the whole window, are shown to the network clean, and the chosen stem keeps its audio
/// outside the range; outside the range nothing changes.
#[test]
fn a_per_stem_model_regenerates_a_range_too() {
    let mut m = Model::random(ModelConfig { stem_sigmas: true, ..ModelConfig::tiny() }, 7, &Device::Cpu).unwrap();
    m.meta.window = 1024;
    assert!(m.denoiser.net.takes_stem_sigmas());
    let stems = demo_stems(22_050, 1);
    let range = regenerate::frame_range(0.2, 0.6, 22_050, stems[0].frames()).unwrap();
    let what = Regeneration { stems: vec![2], range, crossfade: regenerate::DEFAULT_CROSSFADE_S };
    let out = regenerate::regenerate(&m, &stems, &what, &quick(), &mut |_| true).unwrap();
    check(&stems, &out.stems, &what);
}
