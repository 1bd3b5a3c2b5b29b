//! Jobs end to end with small random models: shapes, sums, seeds, windows, predictions, errors.

use super::*;
use crate::config::ModelConfig;
use crate::separator::Likelihood;

fn quick(settings: Settings) -> Settings {
    Settings { steps: 3, ..settings }
}

fn tiny_model() -> Model {
    let mut m = Model::random(ModelConfig::tiny(), 1, &Device::Cpu).unwrap();
    m.meta.window = 1024;
    m
}

/// A reference-style model and a per-stem σ one: every job works with both.
fn both_kinds() -> [Model; 2] {
    let mut per_stem = Model::random(ModelConfig { stem_sigmas: true, ..ModelConfig::tiny() }, 1, &Device::Cpu).unwrap();
    per_stem.meta.window = 1024;
    assert!(per_stem.denoiser.net.takes_stem_sigmas());
    [tiny_model(), per_stem]
}

fn tone(rate: u32, frames: usize, channels: usize) -> AudioBuffer {
    let ch = (0..channels)
        .map(|c| (0..frames).map(|i| 0.3 * ((i as f32 * 0.01 * (c + 1) as f32).sin())).collect())
        .collect();
    AudioBuffer::new(rate, ch)
}

#[test]
fn separation_keeps_rate_length_channels_and_sums_to_the_mix() {
    for m in both_kinds() {
        separation_sums_to_the_mix(&m);
    }
}

fn separation_sums_to_the_mix(m: &Model) {
    let mix = tone(44_100, 5000, 2);
    let out = run(m, &Job::Separate { mix: mix.clone() }, &quick(Settings::separation()), &mut |_| true).unwrap();
    assert_eq!(out.stems.len(), 4);
    for s in &out.stems {
        assert_eq!((s.rate, s.num_channels(), s.frames()), (44_100, 2, 5000));
    }
    for c in 0..2 {
        for i in 0..5000 {
            let sum: f32 = out.stems.iter().map(|s| s.channels[c][i]).sum();
            assert!((sum - mix.channels[c][i]).abs() <= 1e-4);
        }
    }
    assert!(out.residual_max <= 1e-4);
}

#[test]
fn same_seed_same_stems_and_identical_channels_match() {
    let m = tiny_model();
    let mono = tone(22_050, 3000, 1);
    let stereo = AudioBuffer::new(22_050, vec![mono.channels[0].clone(), mono.channels[0].clone()]);
    let s = quick(Settings::separation());
    let a = run(&m, &Job::Separate { mix: stereo.clone() }, &s, &mut |_| true).unwrap();
    let b = run(&m, &Job::Separate { mix: stereo }, &s, &mut |_| true).unwrap();
    assert_eq!(a.stems[1].channels, b.stems[1].channels);
    assert_eq!(a.stems[1].channels[0], a.stems[1].channels[1]);
    let c = run(&m, &Job::Separate { mix: mono }, &Settings { seed: 9, ..s }, &mut |_| true).unwrap();
    assert_ne!(c.stems[1].channels[0], a.stems[1].channels[0]);
}

#[test]
fn imputation_returns_given_stems_unchanged_and_generation_has_the_asked_length() {
    for m in both_kinds() {
        impute_and_generate(&m);
    }
}

fn impute_and_generate(m: &Model) {
    let drums = tone(48_000, 6000, 2);
    let given = vec![Given::Generate, Given::Audio(drums.clone()), Given::Silent, Given::Generate];
    let out = run(m, &Job::Impute { given }, &quick(Settings::imputation()), &mut |_| true).unwrap();
    assert_eq!(out.stems[1], drums);
    // a silent stem comes back as silence of the given stem's rate, length and channels
    assert_eq!(out.stems[2], AudioBuffer::new(48_000, vec![vec![0.0; 6000]; 2]));
    assert_eq!((out.stems[0].rate, out.stems[0].frames(), out.stems[0].num_channels()), (48_000, 6000, 2));
    let g = run(m, &Job::Generate { seconds: 0.2, rate: 44_100, channels: 1 }, &quick(Settings::generation()), &mut |_| true)
        .unwrap();
    assert_eq!(g.stems[0].frames(), 8820);
    assert!(g.stems.iter().all(|s| s.channels[0].iter().all(|x| x.is_finite())));
    // the stems the model made start and end at silence (no click), and are not silent between
    for s in g.stems.iter().chain([&out.stems[0], &out.stems[3]]) {
        for c in &s.channels {
            assert_eq!((c[0], c[c.len() - 1]), (0.0, 0.0));
            assert!(c[c.len() / 2 - 50..c.len() / 2 + 50].iter().any(|&x| x != 0.0));
        }
    }
}

/// A later window is given the previous one's overlap up to the fade only and is faded in
/// over the rest: the clip's start is the one-window clip's, its fade region is not.
#[test]
fn a_later_window_makes_its_fade_region_and_leaves_the_earlier_part() {
    let m = tiny_model();
    let (window, ov) = (m.window(), seams::overlap(m.window()));
    // (without the take's end fades, which a one-window clip has where the longer one goes on)
    let gen = |frames: usize| {
        let silence = AudioBuffer::new(22_050, vec![vec![0.0; frames]]);
        run_sequential(&m, &[None, None, None, None], &silence, &quick(Settings::generation()), &mut |_| true).unwrap().stems
    };
    let (one, two) = (gen(window), gen(window + window / 2));
    let seam = window; // the second window starts at window − ov; its own part ov later
    let fade_from = seam - seams::fade(ov);
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(a.channels[0][..fade_from], b.channels[0][..fade_from]);
        let moved = (fade_from..seam).filter(|&i| a.channels[0][i] != b.channels[0][i]).count();
        assert!(moved > seams::fade(ov) / 2, "the fade region was kept as given ({moved} samples moved)");
    }
}

/// A guided imputation is predicted at two network calls per step, and its real time is
/// recorded per network call, so the unguided prediction does not double after it.
#[test]
fn guided_imputation_is_predicted_at_two_calls_per_step() {
    let [_, m] = both_kinds();
    let job = Job::Impute { given: vec![Given::Generate, Given::Audio(tone(22_050, 3000, 1)), Given::Silent, Given::Generate] };
    let plain = quick(Settings::imputation());
    let guided = Settings { guidance: 2.0, ..plain.clone() };
    record_seconds(&m, &job, &plain, 1.0);
    let (a, b) = (known_seconds(&m, &job, &plain).unwrap(), known_seconds(&m, &job, &guided).unwrap());
    assert!((b / a - 2.0).abs() < 1e-9, "guided {b} s against unguided {a} s");
    record_seconds(&m, &job, &guided, 2.0);
    assert!((known_seconds(&m, &job, &plain).unwrap() - 1.0).abs() < 1e-9);
    // a guidance interval that takes in no step costs nothing extra
    let none = Settings { guidance_interval: Some((100.0, 200.0)), ..guided };
    assert!((known_seconds(&m, &job, &none).unwrap() - 1.0).abs() < 1e-9);
}

#[test]
fn gaussian_settings_take_the_released_gaussian_schedule_over_a_dirac_one() {
    assert_eq!(Settings::separation().with_gaussian(0.75), Settings::separation_gaussian());
    // a model file's Dirac defaults (the bundled file's schedule): only seed, mono, batch,
    // average and the Wiener post-filter come along
    let wiener = Some(crate::wiener::WienerFilter { frame: 4096, exponent: 1.5 });
    let own = Settings { steps: 16, churn: 2.0, sigma_max: 0.3, seed: 7, mono: true, batch: 3, average: 2, wiener, ..Settings::separation() };
    let g = own.with_gaussian(0.5);
    let want =
        Settings { likelihood: Likelihood::Gaussian { gamma_coeff: 0.5 }, seed: 7, mono: true, batch: 3, average: 2, wiener, ..Settings::separation_gaussian() };
    assert_eq!(g, want);
    // Gaussian settings keep their own schedule, with the γ asked for
    let own_gaussian = Settings { steps: 48, churn: 0.0, resamples: 1, ..Settings::separation_gaussian() };
    let g = own_gaussian.with_gaussian(0.5);
    assert_eq!((g.churn, g.steps, g.resamples, g.likelihood), (0.0, 48, 1, Likelihood::Gaussian { gamma_coeff: 0.5 }));
}

#[test]
fn predicted_calls_are_the_calls_made() {
    let m = tiny_model();
    let stereo = tone(48_000, 9001, 2);
    let jobs = [
        (Job::Separate { mix: stereo.clone() }, Settings { batch: 3, ..quick(Settings::separation()) }),
        (Job::Separate { mix: tone(44_100, 7000, 1) }, Settings { batch: 8, ..quick(Settings::separation()) }),
        (Job::Separate { mix: stereo.clone() }, Settings { batch: 4, average: 2, ..quick(Settings::separation()) }),
        (Job::Separate { mix: stereo.clone() }, Settings { batch: 2, stereo: crate::stereo::StereoMode::Mid, ..quick(Settings::separation()) }),
        (
            Job::Impute { given: vec![Given::Generate, Given::Audio(stereo), Given::Silent, Given::Generate] },
            quick(Settings::imputation()),
        ),
        (Job::Generate { seconds: 0.17, rate: 44_100, channels: 1 }, quick(Settings::generation())),
    ];
    for (k, (job, settings)) in jobs.into_iter().enumerate() {
        let mut calls = 0;
        let mut last = None;
        run(&m, &job, &settings, &mut |p| {
            calls += 1;
            last = Some(p);
            true
        })
        .unwrap();
        let (planned, items) = plan_calls(&m, &job, &settings);
        assert!(calls > settings.steps, "one window only: the test would not see a batch plan");
        if let Job::Separate { .. } = job {
            // the posterior samples averaged count against the batch: memory stays bounded
            assert!(items <= settings.batch && items % settings.average == 0, "job {k}: {items} items per call");
        }
        assert_eq!((planned, last.map(|p| p.total)), (calls, Some(calls)), "job {k}");
    }
}

#[test]
fn cancel_and_bad_input_give_clear_errors() {
    let m = tiny_model();
    let mix = tone(22_050, 2000, 1);
    let err = run(&m, &Job::Separate { mix: mix.clone() }, &quick(Settings::separation()), &mut |p| p.done < 2).unwrap_err();
    assert!(err.to_string().contains("cancelled"));
    let mut bad = mix.clone();
    bad.channels[0][100] = f32::NAN;
    let err = format!("{:#}", run(&m, &Job::Separate { mix: bad }, &quick(Settings::separation()), &mut |_| true).unwrap_err());
    assert!(err.contains("invalid") || err.contains("NaN"), "{err}");
    let empty = AudioBuffer::new(22_050, vec![vec![]]);
    assert!(run(&m, &Job::Separate { mix: empty }, &Settings::separation(), &mut |_| true).is_err());
    let all_given = vec![Given::Audio(mix.clone()), Given::Silent, Given::Audio(mix.clone()), Given::Audio(mix)];
    let err = run(&m, &Job::Impute { given: all_given }, &Settings::imputation(), &mut |_| true).unwrap_err();
    assert!(err.to_string().contains("nothing to generate"), "{err}");
    let only_silence = vec![Given::Generate, Given::Silent, Given::Silent, Given::Generate];
    let err = run(&m, &Job::Impute { given: only_silence }, &Settings::imputation(), &mut |_| true).unwrap_err();
    assert!(err.to_string().contains("silence alone gives no length"), "{err}");
}
