use super::*;

fn sine(f: f32, n: usize, a: f32) -> Vec<f32> {
    (0..n).map(|i| a * (2.0 * std::f32::consts::PI * f * i as f32 / 22_050.0).sin()).collect()
}

fn energy(x: &[f32]) -> f64 {
    x.iter().map(|&v| v as f64 * v as f64).sum()
}

fn diff(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

fn small() -> WienerFilter {
    WienerFilter { frame: 1024, exponent: 1.25 }
}

/// With one stem the mask is 1 everywhere: the analysis and overlap-add give the mixture back,
/// ends included (the mirrored padding and the window-square normalisation).
#[test]
fn one_stem_gets_the_mixture_back() {
    let mix: Vec<f32> = sine(97.0, 5000, 0.4).iter().zip(sine(1234.5, 5000, 0.2)).map(|(a, b)| a + b + 0.01).collect();
    for frame in [64, 1024, 8192] {
        let out = WienerFilter { frame, exponent: 1.0 }.apply(&[vec![0.3; 5000]], &mix, None).unwrap();
        let err = diff(&out[0], &mix).iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(err < 1e-5, "frame {frame}: max error {err}");
    }
}

/// The stems sum to the mixture; a stem the filter saw as silent everywhere gets nothing, and
/// where every stem is silent the mixture is shared out equally.
#[test]
fn stems_sum_to_the_mixture_and_silence_is_shared() {
    let n = 4000;
    let mix: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 0.5).collect();
    let stems = vec![sine(60.0, n, 0.3), sine(700.0, n, 0.1), vec![0.0; n], sine(3000.0, n, 0.05)];
    let f = small();
    let exact = f.apply(&stems, &mix, Some(0)).unwrap();
    let loose = f.apply(&stems, &mix, None).unwrap();
    for i in 0..n {
        let s: f32 = exact.iter().map(|s| s[i]).sum();
        assert!((s - mix[i]).abs() < 1e-6, "sample {i}: {s} vs {}", mix[i]);
        let l: f32 = loose.iter().map(|s| s[i]).sum();
        assert!((l - mix[i]).abs() < 1e-4, "sample {i}: {l} vs {}", mix[i]);
    }
    assert!(loose[2].iter().all(|&x| x.abs() < 1e-6), "the silent stem got audio");

    let silent = vec![vec![0.0; n]; 4];
    let shared = f.apply(&silent, &mix, None).unwrap();
    for s in &shared {
        let err = diff(s, &mix.iter().map(|x| x / 4.0).collect::<Vec<_>>()).iter().fold(0f32, |m, x| m.max(x.abs()));
        assert!(err < 1e-5, "{err}");
    }
}

/// Stems whose spectra do not overlap pass through; an error that two estimates carry with
/// opposite signs (as a Dirac separation's constrained stem does) is taken out.
#[test]
fn a_cancelling_error_is_taken_out() {
    let n = 22_050;
    let (bass, guitar) = (sine(55.0, n, 0.4), sine(880.0, n, 0.2));
    let mix: Vec<f32> = bass.iter().zip(&guitar).map(|(a, b)| a + b).collect();
    let f = WienerFilter::DEFAULT;
    let clean = f.apply(&[bass.clone(), guitar.clone()], &mix, Some(0)).unwrap();
    for (got, want) in clean.iter().zip([&bass, &guitar]) {
        let snr = 10.0 * (energy(want) / energy(&diff(got, want))).log10();
        assert!(snr > 30.0, "a correct separation changed: SNR {snr:.1} dB");
    }
    let e = sine(3_000.0, n, 0.3);
    let est = [bass.iter().zip(&e).map(|(a, b)| a + b).collect::<Vec<f32>>(), guitar.iter().zip(&e).map(|(a, b)| a - b).collect()];
    let out = f.apply(&est, &mix, Some(0)).unwrap();
    for ((got, before), want) in out.iter().zip(&est).zip([&bass, &guitar]) {
        let (after, before) = (energy(&diff(got, want)), energy(&diff(before, want)));
        assert!(after < before / 100.0, "error energy {after} after the filter, {before} before");
    }
}

/// Frames longer than the window still work (the mirror folds), and bad settings get errors
/// that say what to give.
#[test]
fn long_frames_and_bad_settings() {
    let mix = sine(440.0, 100, 0.5);
    let out = WienerFilter::DEFAULT.apply(&[mix.clone(), vec![0.01; 100]], &mix, Some(1)).unwrap();
    assert!(out.iter().flatten().all(|x| x.is_finite()));
    assert!((0..100).all(|i| (out[0][i] + out[1][i] - mix[i]).abs() < 1e-6));

    assert_eq!([-1, 0, 4, 5, 6, -9, 13].map(|i| mirror(i, 5)), [1, 0, 4, 3, 2, 1, 3]);
    assert_eq!(mirror(-3, 1), 0);

    for (bad, what) in [
        (WienerFilter { frame: 0, exponent: 1.0 }, "frame 0"),
        (WienerFilter { frame: 1026, exponent: 1.0 }, "frame 1026"),
        (WienerFilter { frame: MAX_FRAME + 4, exponent: 1.0 }, "multiple of 4"),
        (WienerFilter { frame: 1024, exponent: 0.0 }, "exponent 0"),
        (WienerFilter { frame: 1024, exponent: f32::NAN }, "exponent NaN"),
        (WienerFilter { frame: 1024, exponent: 9.0 }, "at most 8"),
    ] {
        let err = format!("{:#}", bad.apply(&[mix.clone()], &mix, None).unwrap_err());
        assert!(err.contains(what), "{err}");
    }
    assert!(WienerFilter::DEFAULT.validate().is_ok());
    let err = small().apply(&[vec![0.0; 99]], &mix, None).unwrap_err().to_string();
    assert!(err.contains("as long as the mixture"), "{err}");
}
