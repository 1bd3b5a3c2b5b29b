//! The separation evaluation driver (spec §8), decoupled from the model: separate every chunk of
//! every test track, concatenate each track's chunks in order, and score 4 s windows of the
//! concatenation against the original stems cropped to the separated length.

use super::metric::{track_scores, Summary, TrackScores};
use crate::data::dataset::{mixture, ChunkedTracks};
use anyhow::{bail, Context, Result};

/// The separator the driver calls: a chunk's mixture (L samples) in, 4 stems of L samples out.
pub type SeparateFn<'a> = dyn FnMut(&[f32]) -> Result<Vec<Vec<f32>>> + 'a;

/// Scores of one evaluated track.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrackResult {
    pub track: String,
    pub chunks: usize,
    pub scores: TrackScores,
}

/// Runs the protocol and returns the summary. `limit`: evaluate at most this many tracks (those
/// with at least one full chunk, in name order). `separate` gets each chunk's mixture (L samples)
/// and must return 4 stems (bass, drums, guitar, piano) of L samples. `progress(done, total)` counts
/// chunks.
pub fn evaluate(
    tracks: &ChunkedTracks,
    limit: Option<usize>,
    separate: &mut SeparateFn,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Summary> {
    Ok(evaluate_tracks(tracks, limit, separate, progress)?.0)
}

/// Like [`evaluate`], also returning each track's per-window scores.
pub fn evaluate_tracks(
    tracks: &ChunkedTracks,
    limit: Option<usize>,
    separate: &mut SeparateFn,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(Summary, Vec<TrackResult>)> {
    let l = tracks.chunk_len;
    let selected: Vec<usize> = (0..tracks.tracks().len())
        .filter(|&t| tracks.chunks_in(t) > 0)
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    if selected.is_empty() {
        bail!(
            "nothing to evaluate in {}: no track is at least one chunk ({l} samples) long",
            tracks.split_dir.display()
        );
    }
    let total: usize = selected.iter().map(|&t| tracks.chunks_in(t)).sum();
    let mut done = 0;
    progress(0, total);
    let mut results = Vec::with_capacity(selected.len());
    for &t in &selected {
        let name = &tracks.tracks()[t].name;
        let originals = tracks.load_track(t).with_context(|| format!("loading track {name}"))?;
        let n_chunks = tracks.chunks_in(t);
        let mut separated: Vec<Vec<f32>> = (0..4).map(|_| Vec::with_capacity(n_chunks * l)).collect();
        for c in 0..n_chunks {
            let chunk: Vec<Vec<f32>> = originals.iter().map(|s| s[c * l..(c + 1) * l].to_vec()).collect();
            let mix = mixture(&chunk);
            let est = separate(&mix).with_context(|| format!("separating chunk {c} of track {name}"))?;
            if est.len() != 4 || est.iter().any(|s| s.len() != l) {
                bail!(
                    "the separator returned {} stems of lengths {:?} for chunk {c} of {name}; expected 4 stems of {l} samples",
                    est.len(),
                    est.iter().map(|s| s.len()).collect::<Vec<_>>()
                );
            }
            if est.iter().flatten().any(|x| !x.is_finite()) {
                bail!("the separator returned non-finite samples for chunk {c} of {name}");
            }
            for (acc, s) in separated.iter_mut().zip(est) {
                acc.extend_from_slice(&s);
            }
            done += 1;
            progress(done, total);
        }
        let refs: Vec<Vec<f32>> = originals.iter().map(|s| s[..n_chunks * l].to_vec()).collect();
        results.push(TrackResult { track: name.clone(), chunks: n_chunks, scores: track_scores(&separated, &refs) });
    }
    let scores: Vec<TrackScores> = results.iter().map(|r| r.scores.clone()).collect();
    Ok((Summary::from_tracks(&scores), results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::write_wav_f32;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const L: usize = 262_144;

    /// Writes a small test split: 2 tracks with distinct tonal/noisy stems; one lacks piano.
    fn make_split(root: &std::path::Path) {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        for (i, n) in [(0usize, L + 5000), (1, 2 * L + 100)] {
            let dir = root.join("test").join(format!("Track{i:05}"));
            std::fs::create_dir_all(&dir).unwrap();
            for (s, stem) in crate::STEMS.iter().enumerate() {
                if i == 1 && s == 3 {
                    continue;
                }
                let f = 60.0 * (s + 1) as f32 * (1.0 + i as f32 * 0.1);
                let x: Vec<f32> = (0..n)
                    .map(|k| {
                        let env = if (k / 30_000 + s) % 3 == 0 { 0.0 } else { 0.1 };
                        env * (2.0 * std::f32::consts::PI * f * k as f32 / 22050.0).sin() + 0.01 * (rng.random::<f32>() - 0.5)
                    })
                    .collect();
                write_wav_f32(&dir.join(format!("{stem}.wav")), &x).unwrap();
            }
        }
    }

    #[test]
    fn oracle_and_trivial_separators() {
        let dir = tempfile::tempdir().unwrap();
        make_split(dir.path());
        let tracks = ChunkedTracks::open(dir.path(), "test", L).unwrap();
        assert_eq!(tracks.num_chunks(), 3);

        // Oracle: look the chunk up by its mixture position (chunks arrive in order).
        let mut order: Vec<Vec<Vec<f32>>> = tracks.iter().map(|c| c.unwrap().stems.to_vec()).collect();
        order.reverse();
        let mut calls = Vec::new();
        let mut oracle = |mix: &[f32]| -> Result<Vec<Vec<f32>>> {
            let stems = order.pop().unwrap();
            assert_eq!(mixture(&stems), mix);
            Ok(stems)
        };
        let oracle_sum =
            evaluate(&tracks, None, &mut oracle, &mut |d, t| calls.push((d, t))).unwrap();
        assert_eq!(calls.last(), Some(&(3, 3)));
        assert!(oracle_sum.windows > 0);
        for v in oracle_sum.per_stem.iter().take(3) {
            assert!(*v > 50.0, "oracle SI-SNRi {v}");
        }

        // Mixture/4 for every stem: SI-SNR is scale invariant, so the improvement over the mixture
        // is 0 dB in every window where the reference stem is not all zeros. Where it is exactly
        // zero (track 1 has no piano file), the ε terms make SI-SNR(c·y, 0) = 10·log10(ε/(c²‖y‖²+ε)),
        // so the improvement is 10·log10(16) = 12.04 dB in those windows.
        let mut quarter = |mix: &[f32]| -> Result<Vec<Vec<f32>>> { Ok(vec![mix.iter().map(|x| x / 4.0).collect(); 4]) };
        let (triv, per_track) = evaluate_tracks(&tracks, None, &mut quarter, &mut |_, _| {}).unwrap();
        assert_eq!(triv.windows, oracle_sum.windows);
        assert_eq!(per_track.len(), 2);
        assert_eq!(per_track[1].chunks, 2);
        for v in &triv.per_stem[..3] {
            assert!(v.abs() < 1e-4, "mixture/4 SI-SNRi {v}");
        }
        let zero_piano_windows = per_track[1].scores.windows.len() as f64;
        let expected_piano = 10.0 * 16f64.log10() * zero_piano_windows / triv.windows as f64;
        assert!(zero_piano_windows > 0.0);
        assert!((triv.per_stem[3] - expected_piano).abs() < 1e-3, "piano {} vs {expected_piano}", triv.per_stem[3]);
        assert!((triv.all - expected_piano / 4.0).abs() < 1e-3);

        // limit = 1 track → only the first track's chunk
        let mut n = 0;
        let mut count = |mix: &[f32]| -> Result<Vec<Vec<f32>>> {
            n += 1;
            Ok(vec![mix.to_vec(); 4])
        };
        evaluate(&tracks, Some(1), &mut count, &mut |_, _| {}).unwrap();
        assert_eq!(n, 1);

        // A separator returning the wrong shape is a clear error.
        let mut bad = |_: &[f32]| -> Result<Vec<Vec<f32>>> { Ok(vec![vec![0.0; 10]; 4]) };
        let err = format!("{:#}", evaluate(&tracks, None, &mut bad, &mut |_, _| {}).unwrap_err());
        assert!(err.contains("expected 4 stems of 262144 samples"), "{err}");
    }
}
