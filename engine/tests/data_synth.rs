//! Synthetic multitrack data: layout, format, determinism, musical consistency (bass on chord roots,
//! drums on the grid), and that the dataset loaders read it.
//! Needs the TimGM6mb SoundFont (`apt-get install timgm6mb-soundfont`); skipped with a note if absent.

use msdm::data::synth::{self, arrange, midi, SynthOptions};
use msdm::data::{ChunkedTracks, MultiSourceDataset};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

mod common;
use common::soundfont;

fn read_wav(p: &Path) -> (hound::WavSpec, Vec<f32>) {
    let mut r = hound::WavReader::open(p).unwrap();
    let spec = r.spec();
    let x: Vec<f32> = r.samples::<f32>().map(|s| s.unwrap()).collect();
    (spec, x)
}

fn meta(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap()
}

fn opts(out: &Path, sf: &Path, count: usize, first: usize, seconds: f64) -> SynthOptions {
    let mut o = SynthOptions::new(out, sf, "train", count);
    o.first_index = first;
    o.seconds = (seconds, seconds);
    o.threads = 2;
    o
}

/// Mean positive spectral-flux-like energy rise at the given times (±1 hop).
fn onset_strength_at(x: &[f32], times: &[f64], sr: f64) -> f64 {
    let hop = 128usize;
    let energy: Vec<f64> = x.chunks(hop).map(|c| c.iter().map(|&v| (v as f64).powi(2)).sum()).collect();
    let flux: Vec<f64> = energy.windows(2).map(|w| (w[1] - w[0]).max(0.0)).collect();
    let mut sum = 0.0;
    for &t in times {
        let f = (t * sr / hop as f64).round() as i64;
        let lo = (f - 2).max(0) as usize;
        let hi = ((f + 2).max(0) as usize).min(flux.len());
        sum += flux[lo.min(hi)..hi].iter().cloned().fold(0.0, f64::max);
    }
    sum / times.len().max(1) as f64
}

#[test]
fn synthesized_tracks_have_the_promised_properties() {
    let Some(sf) = soundfont() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("a");
    let t0 = std::time::Instant::now();
    let report = synth::synthesize(&opts(&root, &sf, 2, 0, 13.0), &|_, _| {}).unwrap();
    eprintln!("synthesized 2 x 13 s in {:.2} s", t0.elapsed().as_secs_f64());
    assert_eq!(report.tracks, 2);
    assert!((report.audio_seconds - 26.0).abs() < 0.01);

    let mut sample_sets = Vec::new();
    for i in 0..2 {
        let dir = root.join("train").join(format!("Track{i:05}"));
        let m = meta(&dir);
        assert_eq!(m["seed"].as_u64().unwrap(), i as u64);
        let samples = m["samples"].as_u64().unwrap() as usize;
        assert_eq!(samples, 13 * 22050);
        let mut mix = vec![0f32; samples];
        let mut stems = Vec::new();
        for stem in msdm::STEMS {
            let p = dir.join(format!("{stem}.wav"));
            let present = m["present"][stem].as_bool().unwrap();
            assert_eq!(p.exists(), present, "{stem} file vs meta.present");
            if !present {
                continue;
            }
            let (spec, x) = read_wav(&p);
            assert_eq!((spec.sample_rate, spec.channels, spec.bits_per_sample), (22050, 1, 32));
            assert_eq!(spec.sample_format, hound::SampleFormat::Float);
            assert_eq!(x.len(), samples, "{stem} length");
            let rms = (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
            let peak = x.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert!(rms > 3e-3, "{stem} present but nearly silent (rms {rms})");
            assert!(peak <= 0.5 + 1e-6, "{stem} peak {peak}");
            for (a, b) in mix.iter_mut().zip(&x) {
                *a += b;
            }
            stems.push(x);
        }
        assert!(stems.len() >= 2);
        let mix_peak = mix.iter().fold(0f32, |a, v| a.max(v.abs()));
        assert!(mix_peak <= 0.9 + 1e-4, "mix peak {mix_peak}");
        sample_sets.push(stems);

        // MIDI holds exactly the present stems, on their GM channels, with the meta's programs.
        let (ppq, tracks) = midi::read_song(&dir.join("song.mid")).unwrap();
        assert_eq!(ppq, arrange::PPQ);
        for (s, stem) in msdm::STEMS.iter().enumerate() {
            let t = tracks.iter().find(|t| t.name == *stem);
            assert_eq!(t.is_some(), m["present"][stem].as_bool().unwrap());
            if let Some(t) = t {
                assert_eq!(t.channel, Some(midi::CHANNELS[s]));
                let key = if s == 1 { "kit" } else { "program" };
                assert_eq!(t.program.map(u64::from), m["programs"][stem][key].as_u64());
                assert!(!t.notes.is_empty());
            }
        }

        // Bass: every note struck at a chord change (± humanisation) is that chord's root.
        if let Some(bass) = tracks.iter().find(|t| t.name == "bass") {
            let mut checked = 0;
            for c in m["chords"].as_array().unwrap() {
                let start = c["start_tick"].as_u64().unwrap() as i64;
                let root = c["root"].as_u64().unwrap() as u8;
                for n in bass.notes.iter().filter(|n| (n.start as i64 - start).abs() <= 40) {
                    assert_eq!(n.key % 12, root, "bass note {} at tick {} under chord {}", n.key, n.start, c["name"]);
                    checked += 1;
                }
            }
            assert!(checked > 0, "no bass note at any chord change");
        }

        // Drums: onsets sit on the rhythmic grid (sixteenths, or eighths in 12/8), not between.
        if m["present"]["drums"].as_bool().unwrap() {
            let (_, drums) = read_wav(&dir.join("drums.wav"));
            let qbpm = m["quarter_bpm"].as_f64().unwrap();
            let per_quarter = if m["meter"] == "12/8" { 2.0 } else { 4.0 };
            let step = 60.0 / qbpm / per_quarter;
            let n = (12.0 / step) as usize;
            let on: Vec<f64> = (0..n).map(|k| k as f64 * step).collect();
            let off: Vec<f64> = on.iter().map(|t| t + step / 2.0).collect();
            let (a, b) = (onset_strength_at(&drums, &on, 22050.0), onset_strength_at(&drums, &off, 22050.0));
            assert!(a > 3.0 * b, "drum onsets not on the grid: on-grid {a} vs off-grid {b}");
        }
    }
    assert_ne!(sample_sets[0][0], sample_sets[1][0], "different seeds gave the same audio");

    // Determinism: the same seed (track 1 alone, into another folder) gives identical bytes.
    let root_b = tmp.path().join("b");
    synth::synthesize(&opts(&root_b, &sf, 1, 1, 13.0), &|_, _| {}).unwrap();
    let da = root.join("train/Track00001");
    let db = root_b.join("train/Track00001");
    for f in ["bass.wav", "drums.wav", "guitar.wav", "piano.wav", "song.mid", "meta.json"] {
        assert_eq!(da.join(f).exists(), db.join(f).exists());
        if da.join(f).exists() {
            assert!(std::fs::read(da.join(f)).unwrap() == std::fs::read(db.join(f)).unwrap(), "{f} differs");
        }
    }

    // Both loaders read the generated layout.
    let ds = MultiSourceDataset::open(&root, "train", 262_144, 12.0, 640.0).unwrap();
    assert_eq!(ds.tracks().len(), 2);
    assert_eq!(ds.len(), (2 * 13 * 22050) / 262_144);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let batch = ds.batch(&[0], &mut rng).unwrap();
    assert_eq!(batch.len(), 4 * 262_144);
    let ch = ChunkedTracks::open(&root, "train", 262_144).unwrap();
    assert_eq!(ch.num_chunks(), 2);

    // Existing tracks are not silently overwritten.
    let err = synth::synthesize(&opts(&root_b, &sf, 1, 1, 13.0), &|_, _| {}).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn compositions_keep_bass_on_roots_and_vary_in_style() {
    // Composition only (no rendering): many seeds, cheap.
    let mut styles = std::collections::HashSet::new();
    let mut meters = std::collections::HashSet::new();
    let mut missing = 0;
    for seed in 0..200u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let song = arrange::compose(&mut rng, 40.0, &[0, 8, 16, 24, 25, 32, 40, 48]);
        styles.insert(format!("{:?}", song.style));
        meters.insert(format!("{:?}", song.meter));
        missing += song.present.iter().filter(|p| !**p).count();
        assert!(song.present.iter().filter(|p| **p).count() >= 3);
        let total = song.total_ticks();
        for (s, notes) in song.notes.iter().enumerate() {
            assert_eq!(!notes.is_empty(), song.present[s], "seed {seed} stem {s}");
            assert!(notes.iter().all(|n| n.end > n.start && n.end <= total && n.vel >= 1 && n.vel <= 127));
        }
        // exact (un-humanised) root check: the bass note nearest to each chord start
        for c in &song.chords {
            if let Some(n) = song.notes[arrange::BASS].iter().find(|n| (n.start as i64 - c.start as i64).abs() <= 30) {
                assert_eq!(n.key % 12, c.chord.root, "seed {seed}");
            }
        }
        // guitar and piano share the mid register
        for s in [arrange::GUITAR, arrange::PIANO] {
            if song.present[s] {
                let mean = song.notes[s].iter().map(|n| n.key as f64).sum::<f64>() / song.notes[s].len() as f64;
                assert!((45.0..80.0).contains(&mean), "seed {seed} stem {s} mean key {mean}");
            }
        }
        // musical length ≈ requested
        let secs = song.ticks_to_seconds(total);
        assert!(secs <= 40.0 + 1e-6 && secs > 40.0 - 2.0 * song.ticks_to_seconds(song.meter.bar_ticks()), "{secs}");
    }
    assert_eq!(styles.len(), 8, "{styles:?}");
    assert_eq!(meters.len(), 3, "{meters:?}");
    assert!(missing > 20 && missing < 120, "{missing} missing stems in 200 songs");
}

#[test]
fn bad_inputs_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let o = SynthOptions::new(tmp.path(), tmp.path().join("nope.sf2"), "train", 1);
    let e = format!("{:#}", synth::synthesize(&o, &|_, _| {}).unwrap_err());
    assert!(e.contains("SoundFont") && e.contains("fluid-soundfont-gm"), "{e}");
    let o = SynthOptions::new(tmp.path(), tmp.path().join("nope.sf2"), "dev", 1);
    let e = format!("{:#}", synth::synthesize(&o, &|_, _| {}).unwrap_err());
    assert!(e.contains("validation"), "{e}");
}
