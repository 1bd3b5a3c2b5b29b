use super::*;

/// Seeded white noise: sources whose spectra overlap everywhere, so only where they sit between
/// the channels can tell them apart.
fn noise(seed: u64, n: usize, a: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            a * (((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5)
        })
        .collect()
}

fn scaled(x: &[f32], g: f32) -> Vec<f32> {
    x.iter().map(|v| v * g).collect()
}

fn add(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

fn snr(got: &[f32], want: &[f32]) -> f64 {
    let e: f64 = want.iter().map(|&v| v as f64 * v as f64).sum();
    let d: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).powi(2)).sum();
    10.0 * (e / d.max(1e-30)).log10()
}

const FILTER: WienerFilter = WienerFilter { frame: 2048, exponent: 1.25 };

/// Two sources with the same spectrum, panned hard to opposite sides: from their mid stems alone
/// the mono filter cannot tell which channel holds which, the fitted gains can (pulled halfway
/// to the centre, they still put each source mostly back in its own channel).
#[test]
fn panned_sources_go_back_to_their_channels() {
    let n = 20_000;
    let (g, p) = (noise(1, n, 0.5), noise(2, n, 0.5));
    let mixes = [scaled(&g, 2.0), scaled(&p, 2.0)];
    // the mid's true stems, as a perfect separation of the mid would give them
    let stems = [g.clone(), p.clone()];
    let out = share_channels(&FILTER, &stems, &mixes, Some(1)).unwrap();
    for (c, src) in [&g, &p].into_iter().enumerate() {
        let shared = snr(&out[c][c], &scaled(src, 2.0));
        let naive = snr(&FILTER.apply(&stems, &mixes[c], Some(1)).unwrap()[c], &scaled(src, 2.0));
        assert!(naive < 12.0, "the mono filter should not manage this ({naive:.1} dB): the test would not show the gains");
        assert!(shared > naive + 4.0, "stem {c} in channel {c}: {shared:.1} dB with the gains, {naive:.1} dB without");
    }
}

/// Partly panned sources: the fitted gains are each source's level in the channel relative to the
/// mid, pulled halfway to 1, in every band (a mask cannot split sources whose spectra overlap
/// this much, so the gains are what is checked here).
#[test]
fn gains_are_the_pan_of_each_stem() {
    let n = 20_000;
    let (g, p) = (noise(5, n, 0.5), noise(6, n, 0.5));
    let stft = Stft::new(FILTER.frame, n);
    let specs = [stft.analyse(&g), stft.analyse(&p)];
    for (gl, pl) in [(1.4f32, 0.6f32), (0.3, 1.9)] {
        let gains = band_gains(&specs, &stft.analyse(&add(&scaled(&g, gl), &scaled(&p, pl))), band_bins(FILTER.frame));
        for (s, pan) in [gl, pl].into_iter().enumerate() {
            let want = (pan + PULL as f32) / (1.0 + PULL as f32);
            let worst = gains[s].iter().fold(0f32, |m, &h| m.max((h - want).abs()));
            let mean = gains[s].iter().sum::<f32>() / gains[s].len() as f32;
            assert!((mean - want).abs() < 0.03 && worst < 0.2, "stem {s} panned to {pan}: gains {mean} on average, {worst} off {want} at worst");
        }
    }
}

/// Each channel's stems sum to its mix; when the channels are equal and the stems sum to them
/// (a Dirac separation of the mid) every stem is what the mono filter gives (the gains are 1).
#[test]
fn stems_sum_to_each_channel_and_equal_channels_match_the_mono_filter() {
    let n = 9_000;
    let stems: Vec<Vec<f32>> = (0..4).map(|s| noise(10 + s, n, 0.1 + 0.1 * s as f32)).collect();
    let mix: Vec<f32> = (0..n).map(|i| stems.iter().map(|s| s[i]).sum::<f32>()).collect();
    let mixes = [mix.clone(), mix.clone()];
    let out = share_channels(&FILTER, &stems, &mixes, Some(0)).unwrap();
    let mono = FILTER.apply(&stems, &mix, Some(0)).unwrap();
    for ch in &out {
        for i in 0..n {
            let s: f32 = ch.iter().map(|s| s[i]).sum();
            assert!((s - mix[i]).abs() < 1e-6, "sample {i}: {s} vs {}", mix[i]);
        }
        for (a, b) in ch.iter().zip(&mono) {
            let q = snr(a, b);
            assert!(q > 40.0, "equal channels differ from the mono filter: {q:.1} dB");
        }
    }
    let other = share_channels(&FILTER, &stems, &[scaled(&mix, 1.5), scaled(&mix, 0.5)], None).unwrap();
    for (ch, g) in other.iter().zip([1.5f32, 0.5]) {
        for i in (0..n).step_by(97) {
            let s: f32 = ch.iter().map(|s| s[i]).sum();
            assert!((s - g * mix[i]).abs() < 1e-4, "sample {i}: {s} vs {}", g * mix[i]);
        }
    }
}

/// A silent channel gets silent stems, a silent stem nothing, and bad input a clear error.
#[test]
fn silence_and_bad_input() {
    let n = 5_000;
    let stems = vec![noise(3, n, 0.3), vec![0.0; n], noise(4, n, 0.2)];
    let mix: Vec<f32> = add(&stems[0], &stems[2]);
    let out = share_channels(&FILTER, &stems, &[scaled(&mix, 2.0), vec![0.0; n]], None).unwrap();
    assert!(out[1].iter().flatten().all(|&v| v == 0.0), "the silent channel got audio");
    assert!(out[0][1].iter().all(|&v| v.abs() < 1e-6), "the silent stem got audio");
    let err = share_channels(&FILTER, &stems, &[vec![0.0; n - 1]], None).unwrap_err().to_string();
    assert!(err.contains("equal length"), "{err}");
    let bad = WienerFilter { frame: 30, exponent: 1.0 };
    assert!(share_channels(&bad, &stems, &[mix], None).unwrap_err().to_string().contains("--wiener"));
}

/// The network sees one item per window with the mid, as many as the channels without it.
#[test]
fn network_items_per_window() {
    assert_eq!(StereoMode::Mid.network_channels(2), 1);
    assert_eq!(StereoMode::Mid.network_channels(1), 1);
    assert_eq!(StereoMode::Each.network_channels(2), 2);
    assert_eq!(serde_json::to_string(&StereoMode::Mid).unwrap(), "\"mid\"");
    assert!(serde_json::from_str::<StereoMode>("\"side\"").is_err());
}

