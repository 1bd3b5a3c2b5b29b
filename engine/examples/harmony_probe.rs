//! Does the denoiser know the song's notes at the noise levels where imputation picks them?
//!
//! For the first songs of a split that have a bass, the bass of the first WINDOWS model windows is
//! noised at fixed σ and denoised once, with the drums, guitar and piano of the song itself and of
//! the next song (clean, σ = 0, for a per-stem σ model; noised at the same σ for a reference model,
//! as its imputation sees them). The estimates are written as WAVs for
//! `tools/eval/harmony_probe.py`, which scores their pitch classes against the song's chords: a
//! network that knows the harmony puts more of its bass estimate on chord tones with the song's own
//! stems than with another song's, at σ where the noisy bass alone no longer tells the notes.
//! Sampler-free, so it isolates what the network learned from how the sampler uses it.
//!
//! `cargo run --release -p msdm --example harmony_probe -- MODEL SPLIT_DIR OUT [TRACKS] [WINDOWS]`
//! writes `OUT/sigma-{σ}/{TrackNNNNN}/{own,other}.wav` (22,050 Hz mono) and `OUT/tracks.txt`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use msdm::audio::{read_audio, write_wav, AudioBuffer, SampleFormat};
use msdm::denoiser::Denoiser;
use msdm::model_file::Model;
use msdm::noise::SeededNoise;

const SIGMAS: [f32; 5] = [0.5, 1.0, 2.0, 3.0, 5.0];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, split, out, ..] = args.as_slice() else {
        bail!("usage: harmony_probe MODEL SPLIT_DIR OUT [TRACKS] [WINDOWS]");
    };
    let tracks: usize = args.get(4).map(|s| s.parse()).transpose().context("TRACKS must be a number")?.unwrap_or(8);
    let windows: usize = args.get(5).map(|s| s.parse()).transpose().context("WINDOWS must be a number")?.unwrap_or(4);
    let model = Model::load(Path::new(model), &Device::Cpu)?;
    let n = model.window() * windows;
    let songs = songs_with_bass(Path::new(split), tracks, n)?;
    if songs.len() < 2 {
        bail!("{split}: need at least 2 songs with a bass and {n} samples (found {})", songs.len());
    }
    let per_stem = model.denoiser.takes_stem_sigmas();
    std::fs::create_dir_all(out)?;
    let names: Vec<String> = songs.iter().map(|(name, _)| name.clone()).collect();
    std::fs::write(Path::new(out).join("tracks.txt"), names.join("\n") + "\n")?;
    for (si, &sigma) in SIGMAS.iter().enumerate() {
        for (k, (name, stems)) in songs.iter().enumerate() {
            let other = &songs[(k + 1) % songs.len()].1;
            let noise = SeededNoise::new(7000 + 100 * si as u64 + k as u64).standard_normal(4 * n);
            let mut estimates = [Vec::with_capacity(n), Vec::with_capacity(n)];
            for w in 0..windows {
                let span = w * model.window()..(w + 1) * model.window();
                for (context, est) in [stems, other].into_iter().zip(estimates.iter_mut()) {
                    let mut x = Vec::with_capacity(4 * model.window());
                    for c in 0..4 {
                        let src = if c == 0 { stems } else { context };
                        let noisy = c == 0 || !per_stem; // a reference model sees every stem at σ
                        x.extend(src[c][span.clone()].iter().zip(&noise[c * n + span.start..c * n + span.end]).map(|(v, e)| {
                            if noisy { v + sigma * e } else { *v }
                        }));
                    }
                    let x = Tensor::from_vec(x, (1, 4, model.window()), &Device::Cpu)?;
                    let d = if per_stem {
                        model.denoiser.denoise_stems(&x, &[sigma, 0.0, 0.0, 0.0])?
                    } else {
                        model.denoiser.denoise(&x, sigma)?
                    };
                    est.extend(d.narrow(1, 0, 1)?.flatten_all()?.to_vec1::<f32>()?);
                }
            }
            let dir: PathBuf = Path::new(out).join(format!("sigma-{sigma}")).join(name);
            std::fs::create_dir_all(&dir)?;
            for (file, est) in ["own.wav", "other.wav"].into_iter().zip(estimates) {
                write_wav(&dir.join(file), &AudioBuffer::new(msdm::MODEL_RATE, vec![est]), SampleFormat::F32)?;
            }
        }
        eprintln!("σ {sigma}: {} songs", songs.len());
    }
    Ok(())
}

/// The first `limit` songs (sorted by name) with a bass and at least `n` samples: their four stems
/// (a missing drums, guitar or piano file is silence), each cut to `n`.
fn songs_with_bass(split: &Path, limit: usize, n: usize) -> Result<Vec<(String, Vec<Vec<f32>>)>> {
    let mut names: Vec<String> = std::fs::read_dir(split)
        .with_context(|| format!("cannot read the split folder {}", split.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|name| split.join(name).join("bass.wav").is_file())
        .collect();
    names.sort();
    let mut songs = vec![];
    for name in names {
        if songs.len() == limit {
            break;
        }
        let mut stems = vec![];
        for stem in msdm::STEMS {
            let path = split.join(&name).join(format!("{stem}.wav"));
            let mut mono = if path.is_file() { mix_down(read_audio(&path)?, &path)? } else { vec![0.0; n] };
            if mono.len() < n {
                break;
            }
            mono.truncate(n);
            stems.push(mono);
        }
        if stems.len() == 4 {
            songs.push((name, stems));
        }
    }
    Ok(songs)
}

fn mix_down(audio: AudioBuffer, path: &Path) -> Result<Vec<f32>> {
    if audio.rate != msdm::MODEL_RATE {
        bail!("{}: {} Hz, the probe needs the model's {} Hz (mini-Slakh's)", path.display(), audio.rate, msdm::MODEL_RATE);
    }
    let k = audio.channels.len() as f32;
    Ok((0..audio.frames()).map(|i| audio.channels.iter().map(|c| c[i]).sum::<f32>() / k).collect())
}
