//! Procedural multitrack songs ("mini-Slakh"): four stems (bass, drums, guitar, piano) that share
//! one musical context, rendered through a GM SoundFont with one synthesizer per stem.
//!
//! Layout written by [`synthesize`] (the Slakh2100 layout the MSDM reference reads, §3 of the spec):
//!
//! ```text
//! <out>/<split>/TrackNNNNN/{bass,drums,guitar,piano}.wav   22,050 Hz, mono, 32-bit float, equal lengths
//! <out>/<split>/TrackNNNNN/song.mid                        format 1: conductor + one track per present stem
//! <out>/<split>/TrackNNNNN/meta.json                       seed, style, tempo, key, meter, programs, sections, chords, gains
//! ```
//!
//! A stem that is absent from the whole track (as happens in Slakh) has **no wav file**; loaders read
//! it as silence (`meta.json` lists `present` stems). Stems that rest during a section are silent there.
//!
//! **Gain rule.** Each present stem is scaled so that its *active* RMS (RMS over the 50 ms frames
//! louder than −40 dB below the stem's loudest frame) equals a per-stem target (bass 0.09, drums
//! 0.10, guitar 0.07, piano 0.07) times a random factor in [0.7, 1.4] (±3 dB, drawn from the track's
//! seed); the gain is then lowered if needed so the stem's peak is at most 0.5. Finally, if the
//! mixture (sum of stems) peaks above 0.9, every stem is scaled by 0.9 / peak, so the mix never clips.
//! The last 30 ms fade out. `meta.json` records the gains.
//!
//! Determinism: everything is drawn from `ChaCha8Rng::seed_from_u64(seed)` with
//! `seed = seed_base + split_base(split) + index` (train 0, validation 1,000,000, test 2,000,000), so
//! splits use disjoint seeds and the same seed gives the same bytes.

pub mod arrange;
pub mod form;
pub mod midi;
pub mod patterns;
pub mod render;
pub mod theory;

use anyhow::{bail, Context, Result};
use arrange::Song;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Sample rate of the generated data (the model's rate).
pub const SAMPLE_RATE: u32 = crate::MODEL_RATE;
/// Seeds per split: index must stay below this so splits never share seeds.
pub const SPLIT_SEED_STRIDE: u64 = 1_000_000;
/// Release tail after the last bar, seconds.
const TAIL_SECONDS: f64 = 1.0;
const ACTIVE_RMS_TARGET: [f32; 4] = [0.09, 0.10, 0.07, 0.07];
const STEM_PEAK_MAX: f32 = 0.5;
const MIX_PEAK_MAX: f32 = 0.9;

/// Options for [`synthesize`].
#[derive(Clone, Debug)]
pub struct SynthOptions {
    /// Dataset root; tracks go to `<out>/<split>/TrackNNNNN/`.
    pub out: PathBuf,
    /// GM SoundFont 2 file (e.g. /usr/share/sounds/sf2/FluidR3_GM.sf2).
    pub soundfont: PathBuf,
    /// "train", "validation" or "test".
    pub split: String,
    /// Number of tracks.
    pub count: usize,
    /// Index of the first track (track names and seeds continue from here).
    pub first_index: usize,
    /// Track length in seconds, drawn uniformly per track from [min, max].
    pub seconds: (f64, f64),
    /// Added to every seed (a different base gives a different dataset).
    pub seed_base: u64,
    /// Replace existing track folders (otherwise an existing `meta.json` is an error).
    pub overwrite: bool,
    /// Rayon threads (0 = rayon's default).
    pub threads: usize,
}

impl SynthOptions {
    pub fn new(out: impl Into<PathBuf>, soundfont: impl Into<PathBuf>, split: &str, count: usize) -> Self {
        SynthOptions {
            out: out.into(),
            soundfont: soundfont.into(),
            split: split.to_string(),
            count,
            first_index: 0,
            seconds: (30.0, 60.0),
            seed_base: 0,
            overwrite: false,
            threads: 0,
        }
    }
}

/// What [`synthesize`] did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SynthReport {
    pub split_dir: PathBuf,
    pub tracks: usize,
    /// Seconds of audio per stem, summed over tracks.
    pub audio_seconds: f64,
    pub wall_seconds: f64,
    /// Tracks lacking each stem (bass, drums, guitar, piano).
    pub missing_stems: [usize; 4],
}

/// Base seed of a split; the three splits use disjoint seed ranges.
pub fn split_base(split: &str) -> Result<u64> {
    Ok(match split {
        "train" => 0,
        "validation" => SPLIT_SEED_STRIDE,
        "test" => 2 * SPLIT_SEED_STRIDE,
        other => bail!("unknown split {other:?}: use \"train\", \"validation\" or \"test\""),
    })
}

/// The seed of track `index` of `split`.
pub fn track_seed(seed_base: u64, split: &str, index: usize) -> Result<u64> {
    if index as u64 >= SPLIT_SEED_STRIDE {
        bail!("track index {index} is too large: at most {} tracks per split", SPLIT_SEED_STRIDE);
    }
    Ok(seed_base.wrapping_add(split_base(split)?).wrapping_add(index as u64))
}

/// Track folder name, Slakh style.
pub fn track_name(index: usize) -> String {
    format!("Track{index:05}")
}

/// Synthesizes `opts.count` tracks in parallel. `progress(done, total)` is called after each track
/// (from worker threads).
pub fn synthesize(opts: &SynthOptions, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<SynthReport> {
    let t0 = std::time::Instant::now();
    split_base(&opts.split)?;
    let (lo, hi) = opts.seconds;
    if !(lo.is_finite() && hi.is_finite() && lo >= 2.0 && hi >= lo && hi <= 600.0) {
        bail!("track length range {lo}..{hi} s is invalid: need 2 <= min <= max <= 600 seconds");
    }
    if opts.first_index + opts.count > SPLIT_SEED_STRIDE as usize {
        bail!("first_index + count must stay below {}", SPLIT_SEED_STRIDE);
    }
    let font = render::load_soundfont(&opts.soundfont)?;
    let split_dir = opts.out.join(&opts.split);
    std::fs::create_dir_all(&split_dir).with_context(|| format!("creating {}", split_dir.display()))?;
    let done = AtomicUsize::new(0);
    let work = || -> Result<Vec<TrackSummary>> {
        (0..opts.count)
            .into_par_iter()
            .map(|i| {
                let index = opts.first_index + i;
                let r = synthesize_track(&font, opts, index);
                let n = done.fetch_add(1, Ordering::SeqCst) + 1;
                progress(n, opts.count);
                r
            })
            .collect()
    };
    let summaries = if opts.threads > 0 {
        rayon::ThreadPoolBuilder::new().num_threads(opts.threads).build().context("building thread pool")?.install(work)?
    } else {
        work()?
    };
    let mut missing = [0usize; 4];
    for s in &summaries {
        for (m, p) in missing.iter_mut().zip(s.present) {
            *m += usize::from(!p);
        }
    }
    Ok(SynthReport {
        split_dir,
        tracks: summaries.len(),
        audio_seconds: summaries.iter().map(|s| s.seconds).sum(),
        wall_seconds: t0.elapsed().as_secs_f64(),
        missing_stems: missing,
    })
}

struct TrackSummary {
    seconds: f64,
    present: [bool; 4],
}

/// Composes, renders and writes one track.
fn synthesize_track(font: &Arc<rustysynth::SoundFont>, opts: &SynthOptions, index: usize) -> Result<TrackSummary> {
    let seed = track_seed(opts.seed_base, &opts.split, index)?;
    let dir = opts.out.join(&opts.split).join(track_name(index));
    if dir.join("meta.json").exists() && !opts.overwrite {
        bail!("{} already exists; pass overwrite (--overwrite) or choose another --first-index", dir.display());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (lo, hi) = opts.seconds;
    let seconds = if hi > lo { rng.random_range(lo..=hi) } else { lo };
    let samples = (seconds * SAMPLE_RATE as f64).round() as usize;
    let kits = render::drum_kits(font);
    let song = arrange::compose(&mut rng, seconds - TAIL_SECONDS, &kits);
    let mut stems: [Option<Vec<f32>>; 4] = Default::default();
    for (s, slot) in stems.iter_mut().enumerate() {
        if song.present[s] {
            *slot = Some(render::render_stem(font, &song, s, SAMPLE_RATE, samples)?);
        }
    }
    let gains = apply_gain_rule(&mut stems, &mut rng);

    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for (s, stem) in stems.iter().enumerate() {
        if let Some(x) = stem {
            write_wav_f32(&dir.join(format!("{}.wav", crate::STEMS[s])), x)?;
        }
    }
    midi::write_song(&song, &dir.join("song.mid"))?;
    let meta = meta_json(&song, font, opts, index, seed, samples, &gains);
    std::fs::write(dir.join("meta.json"), serde_json::to_string_pretty(&meta)?)
        .with_context(|| format!("writing {}", dir.join("meta.json").display()))?;
    Ok(TrackSummary { seconds: samples as f64 / SAMPLE_RATE as f64, present: song.present })
}

/// Writes a 22,050 Hz mono 32-bit float WAV file.
pub fn write_wav_f32(path: &Path, x: &[f32]) -> Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 32,
        sample_format: hound::SampleFormat::Float,
    };
    let mut w = hound::WavWriter::create(path, spec).with_context(|| format!("creating {}", path.display()))?;
    for &v in x {
        w.write_sample(v)?;
    }
    w.finalize().with_context(|| format!("finishing {}", path.display()))?;
    Ok(())
}

/// RMS over the 50 ms frames louder than −40 dB below the loudest frame (0 for silence).
pub fn active_rms(x: &[f32]) -> f32 {
    let frame = (SAMPLE_RATE as usize) / 20;
    let energies: Vec<f64> =
        x.chunks(frame).map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / c.len() as f64).collect();
    let max = energies.iter().cloned().fold(0.0, f64::max);
    if max <= 0.0 {
        return 0.0;
    }
    let thr = max * 1e-4; // −40 dB in energy
    let (sum, n) = energies.iter().filter(|&&e| e >= thr).fold((0.0, 0usize), |(s, n), &e| (s + e, n + 1));
    (sum / n as f64).sqrt() as f32
}

fn peak(x: &[f32]) -> f32 {
    x.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

/// The gain rule documented at the top of this module. Returns the gain applied to each stem.
fn apply_gain_rule<R: Rng>(stems: &mut [Option<Vec<f32>>; 4], rng: &mut R) -> [f32; 4] {
    let mut gains = [0f32; 4];
    for (s, stem) in stems.iter_mut().enumerate() {
        let jitter: f32 = rng.random_range(0.7..1.4);
        if let Some(x) = stem {
            let rms = active_rms(x);
            let pk = peak(x);
            let mut g = if rms > 0.0 { ACTIVE_RMS_TARGET[s] * jitter / rms } else { 1.0 };
            if pk * g > STEM_PEAK_MAX {
                g = STEM_PEAK_MAX / pk;
            }
            gains[s] = g;
        }
    }
    let len = stems.iter().flatten().map(|x| x.len()).next().unwrap_or(0);
    let mut mix_peak = 0f32;
    for i in 0..len {
        let m: f32 = stems.iter().enumerate().filter_map(|(s, x)| x.as_ref().map(|x| x[i] * gains[s])).sum();
        mix_peak = mix_peak.max(m.abs());
    }
    if mix_peak > MIX_PEAK_MAX {
        for g in gains.iter_mut() {
            *g *= MIX_PEAK_MAX / mix_peak;
        }
    }
    let fade = (SAMPLE_RATE as usize * 30 / 1000).min(len);
    for (s, stem) in stems.iter_mut().enumerate() {
        if let Some(x) = stem {
            for v in x.iter_mut() {
                *v *= gains[s];
            }
            for i in 0..fade {
                x[len - fade + i] *= 1.0 - (i as f32 + 1.0) / fade as f32;
            }
        }
    }
    gains
}

fn meta_json(
    song: &Song,
    font: &rustysynth::SoundFont,
    opts: &SynthOptions,
    index: usize,
    seed: u64,
    samples: usize,
    gains: &[f32; 4],
) -> serde_json::Value {
    let stem_map = |f: &dyn Fn(usize) -> serde_json::Value| {
        let mut m = serde_json::Map::new();
        for (s, name) in crate::STEMS.iter().enumerate() {
            m.insert(name.to_string(), f(s));
        }
        serde_json::Value::Object(m)
    };
    let programs = stem_map(&|s| {
        let p = song.programs.get(s);
        if s == arrange::DRUMS {
            json!({ "bank": 128, "kit": p, "name": render::preset_name(font, 128, p) })
        } else {
            json!({ "program": p, "gm_program_1based": p as u32 + 1, "name": render::preset_name(font, 0, p) })
        }
    });
    let bar_ticks = song.meter.bar_ticks();
    let sections: Vec<serde_json::Value> = song
        .sections
        .iter()
        .map(|sec| {
            let start = sec.start_bar as u32 * bar_ticks;
            let end = (sec.start_bar + sec.bars) as u32 * bar_ticks;
            json!({
                "kind": sec.kind, "start_bar": sec.start_bar, "bars": sec.bars,
                "start_s": song.ticks_to_seconds(start), "end_s": song.ticks_to_seconds(end),
                "energy": sec.energy,
                "active": stem_map(&|s| json!(sec.active[s])),
                "guitar_role": sec.guitar, "piano_role": sec.piano,
            })
        })
        .collect();
    let chords: Vec<serde_json::Value> = song
        .chords
        .iter()
        .map(|c| {
            json!({
                "start_tick": c.start, "end_tick": c.end,
                "start_s": song.ticks_to_seconds(c.start), "end_s": song.ticks_to_seconds(c.end),
                "root": c.chord.root, "name": c.chord.name(),
                "pitch_classes": c.chord.pitch_classes(),
            })
        })
        .collect();
    json!({
        "name": track_name(index),
        "split": opts.split,
        "index": index,
        "seed": seed,
        "generator": "msdm::data::synth",
        "sample_rate": SAMPLE_RATE,
        "samples": samples,
        "seconds": samples as f64 / SAMPLE_RATE as f64,
        "soundfont": opts.soundfont.file_name().map(|f| f.to_string_lossy().into_owned()),
        "style": song.style,
        "meter": song.meter,
        "beat_bpm": song.beat_bpm,
        "quarter_bpm": song.quarter_bpm,
        "ppq": arrange::PPQ,
        "bars": song.bars,
        "key": song.key.name(),
        "key_tonic": song.key.tonic,
        "key_mode": song.key.mode,
        "swing": song.swing,
        "programs": programs,
        "present": stem_map(&|s| json!(song.present[s])),
        "gains": stem_map(&|s| json!(gains[s])),
        "gain_rule": "active RMS -> per-stem target x U[0.7,1.4], stem peak <= 0.5, mix peak <= 0.9",
        "sections": sections,
        "chords": chords,
        "midi": "song.mid",
        "midi_channels": stem_map(&|s| json!(midi::CHANNELS[s])),
    })
}
