//! Multi-source datasets in the Slakh2100 layout the MSDM reference reads
//! (`<root>/<split>/<Track>/{bass,drums,guitar,piano}.wav`, 22,050 Hz): the training dataset
//! (spec §3.1) and the chunked evaluation tracks (spec §3.2). Works for the real Slakh2100 22 kHz
//! data and for the synthetic tracks of [`super::synth`].
//!
//! Audio is read lazily, window by window; only per-track lengths are kept in memory.

use super::wav;
use crate::{MODEL_RATE, STEMS};
use anyhow::{bail, Context, Result};
use rand::Rng;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Largest stem-length difference tolerated inside a track (0.1 s, as the reference's evaluation
/// data allows); longer stems are cropped to the shortest.
pub const MAX_LENGTH_MISMATCH: usize = (MODEL_RATE as usize) / 10;

/// One track: its folder, its stem files (None = missing, read as silence) and its length.
#[derive(Clone, Debug)]
pub struct TrackEntry {
    pub name: String,
    pub dir: PathBuf,
    pub stems: [Option<PathBuf>; 4],
    /// Samples (the shortest present stem).
    pub len: usize,
}

impl TrackEntry {
    /// Reads `len` samples of every stem from `offset` (missing stems and samples past the end are zeros).
    pub fn read(&self, offset: usize, len: usize) -> Result<[Vec<f32>; 4]> {
        let mut out: [Vec<f32>; 4] = Default::default();
        for (s, p) in self.stems.iter().enumerate() {
            out[s] = match p {
                Some(p) => wav::read_mono(p, offset, len)?,
                None => vec![0.0; len],
            };
        }
        Ok(out)
    }
}

/// A track left out when opening a dataset, and why.
#[derive(Clone, Debug)]
pub struct SkippedTrack {
    pub name: String,
    pub reason: String,
}

/// Stem files (None = missing) and their lengths in samples.
type ProbedTrack = ([Option<PathBuf>; 4], [usize; 4]);

/// Per-stem lengths of a track folder. Errors on wrong sample rates; `Ok(None)` when no stem exists.
/// Every track folder of a split with its present stems: `(track cropped to its shortest stem,
/// longest stem length)`, plus the folders without any stem file.
fn probe_split(root: &Path, split: &str) -> Result<(PathBuf, Vec<(TrackEntry, usize)>, Vec<SkippedTrack>)> {
    let (split_dir, listed) = list_tracks(root, split)?;
    let mut probed = Vec::new();
    let mut skipped = Vec::new();
    for (name, dir) in listed {
        let Some((stems, lens)) = probe_track(&dir)? else {
            skipped.push(SkippedTrack { name, reason: "no stem wav files".into() });
            continue;
        };
        let present: Vec<usize> = (0..4).filter(|&s| stems[s].is_some()).map(|s| lens[s]).collect();
        let (lo, hi) = (*present.iter().min().unwrap(), *present.iter().max().unwrap());
        probed.push((TrackEntry { name, dir, stems, len: lo }, hi));
    }
    Ok((split_dir, probed, skipped))
}

fn probe_track(dir: &Path) -> Result<Option<ProbedTrack>> {
    let mut paths: [Option<PathBuf>; 4] = Default::default();
    let mut lens = [0usize; 4];
    for (s, stem) in STEMS.iter().enumerate() {
        let p = dir.join(format!("{stem}.wav"));
        if p.is_file() {
            let info = wav::probe(&p)?;
            wav::require_rate(&p, &info, MODEL_RATE)?;
            lens[s] = info.frames;
            paths[s] = Some(p);
        }
    }
    if paths.iter().all(|p| p.is_none()) {
        return Ok(None);
    }
    Ok(Some((paths, lens)))
}

/// Track folders of `<root>/<split>`, sorted by name.
fn list_tracks(root: &Path, split: &str) -> Result<(PathBuf, Vec<(String, PathBuf)>)> {
    let dir = root.join(split);
    if !dir.is_dir() {
        bail!(
            "dataset folder {} not found: expected <root>/{split}/<Track>/{{bass,drums,guitar,piano}}.wav at 22,050 Hz \
             (generate one with the synthetic-data command, or lay out Slakh2100 with its data/convert_data_format.sh)",
            dir.display()
        );
    }
    let mut tracks = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let e = e?;
        if e.file_type()?.is_dir() {
            tracks.push((e.file_name().to_string_lossy().into_owned(), e.path()));
        }
    }
    tracks.sort();
    Ok((dir, tracks))
}

/// The training dataset (spec §3.1): all kept tracks concatenated, cut into items of
/// `sample_length` samples with a random shift.
#[derive(Clone, Debug)]
pub struct MultiSourceDataset {
    pub split_dir: PathBuf,
    pub sample_length: usize,
    tracks: Vec<TrackEntry>,
    /// Exclusive end of each track in the concatenation.
    ends: Vec<u64>,
    skipped: Vec<SkippedTrack>,
}

impl MultiSourceDataset {
    /// Opens `<root>/<split>`. A track is kept when every stem file present lasts at least
    /// `min_duration_s` and less than `max_duration_s` seconds and the stems' lengths differ by at
    /// most 0.1 s (longer stems are cropped to the shortest; the reference requires exact equality,
    /// which the synthetic and the prepared Slakh data satisfy). Missing stems read as silence.
    pub fn open(root: &Path, split: &str, sample_length: usize, min_duration_s: f64, max_duration_s: f64) -> Result<Self> {
        if sample_length == 0 {
            bail!("sample_length must be positive");
        }
        if !(min_duration_s >= 0.0 && max_duration_s > min_duration_s) {
            bail!("invalid duration filter: need 0 <= min_duration ({min_duration_s}) < max_duration ({max_duration_s})");
        }
        let (split_dir, probed, mut skipped) = probe_split(root, split)?;
        let sr = MODEL_RATE as f64;
        let mut tracks = Vec::new();
        for (track, hi) in probed {
            let (lo, name) = (track.len, track.name.clone());
            let reason = if (lo as f64) / sr < min_duration_s {
                Some(format!("shorter than {min_duration_s} s ({:.2} s)", lo as f64 / sr))
            } else if (hi as f64) / sr >= max_duration_s {
                Some(format!("not shorter than {max_duration_s} s ({:.2} s)", hi as f64 / sr))
            } else if hi - lo > MAX_LENGTH_MISMATCH {
                Some(format!("stem lengths differ by {} samples (> 0.1 s)", hi - lo))
            } else {
                None
            };
            match reason {
                Some(reason) => skipped.push(SkippedTrack { name, reason }),
                None => tracks.push(track),
            }
        }
        if tracks.is_empty() {
            bail!(
                "no usable tracks in {} ({} skipped{}); check the duration filter ({min_duration_s}..{max_duration_s} s)",
                split_dir.display(),
                skipped.len(),
                skipped.first().map(|s| format!(", e.g. {}: {}", s.name, s.reason)).unwrap_or_default()
            );
        }
        let mut ends = Vec::with_capacity(tracks.len());
        let mut acc = 0u64;
        for t in &tracks {
            acc += t.len as u64;
            ends.push(acc);
        }
        Ok(MultiSourceDataset { split_dir, sample_length, tracks, ends, skipped })
    }

    /// Number of items: floor(total samples / sample_length).
    pub fn len(&self) -> usize {
        (self.total_samples() / self.sample_length as u64) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn total_samples(&self) -> u64 {
        *self.ends.last().unwrap_or(&0)
    }

    pub fn tracks(&self) -> &[TrackEntry] {
        &self.tracks
    }

    pub fn skipped(&self) -> &[SkippedTrack] {
        &self.skipped
    }

    /// Draws the item shift, uniform in {−L/2, …, L/2 − 1}.
    pub fn draw_shift<R: Rng + ?Sized>(&self, rng: &mut R) -> i64 {
        let half = (self.sample_length / 2) as i64;
        if half == 0 {
            0
        } else {
            rng.random_range(-half..half)
        }
    }

    /// Where item `k` with `shift` lands: (track index, offset in the track). The window starts at
    /// k·L + shift in the concatenation; it belongs to the track holding its midpoint, and is moved
    /// back inside that track by half a window when it sticks out (as the reference does), then
    /// clamped.
    pub fn locate(&self, k: usize, shift: i64) -> Result<(usize, usize)> {
        if k >= self.len() {
            bail!("item {k} out of range: the dataset has {} items", self.len());
        }
        let l = self.sample_length as i64;
        let half = l / 2;
        let total = self.total_samples() as i64;
        let mut offset = k as i64 * l + shift;
        let mid = (offset + half).clamp(0, total - 1);
        let t = self.ends.partition_point(|&e| e as i64 <= mid);
        let start = if t == 0 { 0 } else { self.ends[t - 1] as i64 };
        let end = self.ends[t] as i64;
        if offset > end - l {
            offset = start.max(offset - half);
        } else if offset < start {
            offset = (end - l).min(offset + half);
        }
        let offset = offset.clamp(start, (end - l).max(start));
        Ok((t, (offset - start) as usize))
    }

    /// Item `k` with a random shift: the four stems, `sample_length` samples each.
    pub fn item<R: Rng + ?Sized>(&self, k: usize, rng: &mut R) -> Result<[Vec<f32>; 4]> {
        let shift = self.draw_shift(rng);
        self.item_shifted(k, shift)
    }

    /// Item `k` without a shift (deterministic).
    pub fn item_unshifted(&self, k: usize) -> Result<[Vec<f32>; 4]> {
        self.item_shifted(k, 0)
    }

    /// Item `k` with the given shift.
    pub fn item_shifted(&self, k: usize, shift: i64) -> Result<[Vec<f32>; 4]> {
        let (t, off) = self.locate(k, shift)?;
        self.tracks[t].read(off, self.sample_length)
    }

    /// A batch, flattened as [B, 4, L] (batch-major, then stem, then time). Shifts are drawn in
    /// order from `rng`; reading is parallel.
    pub fn batch<R: Rng + ?Sized>(&self, indices: &[usize], rng: &mut R) -> Result<Vec<f32>> {
        let shifts: Vec<i64> = indices.iter().map(|_| self.draw_shift(rng)).collect();
        let items: Vec<[Vec<f32>; 4]> =
            indices.par_iter().zip(shifts.par_iter()).map(|(&k, &sh)| self.item_shifted(k, sh)).collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(indices.len() * 4 * self.sample_length);
        for it in items {
            for s in it {
                out.extend_from_slice(&s);
            }
        }
        Ok(out)
    }
}

/// One evaluation chunk.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub track: String,
    /// Chunk index inside the track.
    pub index: usize,
    /// First sample of the chunk in the track.
    pub start: usize,
    pub stems: [Vec<f32>; 4],
}

impl Chunk {
    /// The mixture: plain sum of the stems.
    pub fn mixture(&self) -> Vec<f32> {
        mixture(&self.stems)
    }
}

/// Sum of the stems.
pub fn mixture(stems: &[Vec<f32>]) -> Vec<f32> {
    let n = stems.iter().map(|s| s.len()).min().unwrap_or(0);
    (0..n).map(|i| stems.iter().map(|s| s[i]).sum()).collect()
}

/// Evaluation tracks (spec §3.2): every track's stems cropped to the shortest, cut into
/// non-overlapping chunks of `chunk_len` samples from 0, trailing partial chunk dropped;
/// no silence or multi-source filtering.
#[derive(Clone, Debug)]
pub struct ChunkedTracks {
    pub split_dir: PathBuf,
    pub chunk_len: usize,
    tracks: Vec<TrackEntry>,
    skipped: Vec<SkippedTrack>,
}

impl ChunkedTracks {
    /// Opens `<root>/<split>`. Errors when a track's stem lengths differ by more than 0.1 s or a file
    /// is not at 22,050 Hz; folders without any stem file are skipped.
    pub fn open(root: &Path, split: &str, chunk_len: usize) -> Result<Self> {
        if chunk_len == 0 {
            bail!("chunk length must be positive");
        }
        let (split_dir, probed, skipped) = probe_split(root, split)?;
        let mut tracks = Vec::new();
        for (track, hi) in probed {
            if hi - track.len > MAX_LENGTH_MISMATCH {
                bail!(
                    "{}: stem lengths differ by {} samples (more than 0.1 s = {MAX_LENGTH_MISMATCH}); the stems are not aligned",
                    track.dir.display(),
                    hi - track.len
                );
            }
            tracks.push(track);
        }
        Ok(ChunkedTracks { split_dir, chunk_len, tracks, skipped })
    }

    pub fn tracks(&self) -> &[TrackEntry] {
        &self.tracks
    }

    pub fn skipped(&self) -> &[SkippedTrack] {
        &self.skipped
    }

    /// Full chunks in track `t`.
    pub fn chunks_in(&self, t: usize) -> usize {
        self.tracks[t].len / self.chunk_len
    }

    /// Total number of chunks.
    pub fn num_chunks(&self) -> usize {
        (0..self.tracks.len()).map(|t| self.chunks_in(t)).sum()
    }

    /// Track `t`'s stems, cropped to the track length (missing stems are zeros).
    pub fn load_track(&self, t: usize) -> Result<[Vec<f32>; 4]> {
        let tr = &self.tracks[t];
        tr.read(0, tr.len)
    }

    /// Chunk `c` of track `t`.
    pub fn chunk(&self, t: usize, c: usize) -> Result<Chunk> {
        if c >= self.chunks_in(t) {
            bail!("chunk {c} out of range for track {} ({} chunks)", self.tracks[t].name, self.chunks_in(t));
        }
        let start = c * self.chunk_len;
        let stems = self.tracks[t].read(start, self.chunk_len)?;
        Ok(Chunk { track: self.tracks[t].name.clone(), index: c, start, stems })
    }

    /// All chunks in order (track by track, chunk by chunk), read lazily.
    pub fn iter(&self) -> impl Iterator<Item = Result<Chunk>> + '_ {
        (0..self.tracks.len()).flat_map(move |t| (0..self.chunks_in(t)).map(move |c| self.chunk(t, c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// Writes `<root>/train/<name>/<stem>.wav` with sample i of stem s = code(track, s, i).
    fn write_track(root: &Path, name: &str, lens: [Option<usize>; 4], rate: u32, channels: u16) {
        let dir = root.join("train").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let t: usize = name[5..].parse().unwrap();
        for (s, len) in lens.iter().enumerate() {
            let Some(len) = len else { continue };
            let spec = hound::WavSpec { channels, sample_rate: rate, bits_per_sample: 32, sample_format: hound::SampleFormat::Float };
            let mut w = hound::WavWriter::create(dir.join(format!("{}.wav", STEMS[s])), spec).unwrap();
            for i in 0..*len {
                for c in 0..channels {
                    // channels average to code(); a deliberately different value per channel
                    w.write_sample(code(t, s, i) + if c == 0 { 0.25 } else { -0.25 } * (channels > 1) as u8 as f32).unwrap();
                }
            }
            w.finalize().unwrap();
        }
    }

    fn code(t: usize, s: usize, i: usize) -> f32 {
        (t * 10 + s) as f32 + i as f32 * 1e-5
    }

    fn sr(x: f64) -> usize {
        (x * MODEL_RATE as f64) as usize
    }

    #[test]
    fn filter_index_shift_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let l = 4000;
        let (a, b, c) = (sr(0.5), sr(0.7) , sr(0.45));
        write_track(root, "Track00001", [Some(a), Some(a), Some(a), None], MODEL_RATE, 1); // piano missing
        write_track(root, "Track00002", [Some(b), Some(b + 100), Some(b), Some(b)], MODEL_RATE, 2); // stereo, 100-sample mismatch
        write_track(root, "Track00003", [Some(c); 4], MODEL_RATE, 1);
        write_track(root, "Track00004", [Some(sr(0.2)); 4], MODEL_RATE, 1); // too short
        write_track(root, "Track00005", [Some(sr(0.5)), Some(sr(0.5) + 3000), None, None], MODEL_RATE, 1); // misaligned
        std::fs::create_dir_all(root.join("train/notatrack")).unwrap();

        let ds = MultiSourceDataset::open(root, "train", l, 0.3, 640.0).unwrap();
        let names: Vec<&str> = ds.tracks().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["Track00001", "Track00002", "Track00003"]);
        assert_eq!(ds.skipped().len(), 3);
        assert_eq!(ds.tracks()[1].len, b);
        let total = a + b + c;
        assert_eq!(ds.len(), total / l);

        // Every (item, shift) lands inside one track, in the track holding the window's midpoint
        // whenever the window fits there.
        let lens = [a, b, c];
        let starts = [0, a, a + b];
        for k in 0..ds.len() {
            for shift in [-(l as i64) / 2, -1000, -1, 0, 1, 999, l as i64 / 2 - 1] {
                let (t, off) = ds.locate(k, shift).unwrap();
                assert!(off + l <= lens[t], "k {k} shift {shift}: offset {off} in track {t}");
                let mid = (k * l) as i64 + shift + (l / 2) as i64;
                let holder = (0..3).rev().find(|&i| starts[i] as i64 <= mid).unwrap();
                assert_eq!(t, holder, "k {k} shift {shift}");
                let want = (k * l) as i64 + shift - starts[t] as i64;
                if want >= 0 && want as usize + l <= lens[t] {
                    assert_eq!(off as i64, want, "an in-track window must not move");
                }
            }
        }
        // Unshifted item 0 is the start of track 1; the missing piano is silence.
        let it = ds.item_unshifted(0).unwrap();
        for i in [0, 17, l - 1] {
            assert!((it[0][i] - code(1, 0, i)).abs() < 1e-6);
            assert!((it[2][i] - code(1, 2, i)).abs() < 1e-6);
        }
        assert!(it[3].iter().all(|&x| x == 0.0));
        // Stereo track 2 reads as the channel average.
        let (t, off) = ds.locate(3, 0).unwrap();
        assert_eq!(t, 1);
        let it = ds.item_shifted(3, 0).unwrap();
        assert!((it[1][5] - code(2, 1, off + 5)).abs() < 1e-5);

        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let batch = ds.batch(&[0, 2, 1], &mut rng).unwrap();
        assert_eq!(batch.len(), 3 * 4 * l);
        let mut rng2 = ChaCha8Rng::seed_from_u64(1);
        let shifts: Vec<i64> = (0..3).map(|_| ds.draw_shift(&mut rng2)).collect();
        let expect = ds.item_shifted(2, shifts[1]).unwrap();
        assert_eq!(&batch[4 * l + 2 * l..4 * l + 3 * l], &expect[2][..]);
        assert!(ds.item_unshifted(ds.len()).is_err());

        // Evaluation chunks: non-overlapping from 0, partial tail dropped, missing stems zero.
        let ch = ChunkedTracks::open(root, "train", l).err();
        assert!(ch.is_some(), "the misaligned track must be an error for evaluation");
        std::fs::remove_dir_all(root.join("train/Track00005")).unwrap();
        let ch = ChunkedTracks::open(root, "train", l).unwrap();
        assert_eq!(ch.tracks().len(), 4);
        assert_eq!(ch.chunks_in(0), a / l);
        assert_eq!(ch.num_chunks(), a / l + b / l + c / l + sr(0.2) / l);
        let chunks: Vec<Chunk> = ch.iter().map(|c| c.unwrap()).collect();
        assert_eq!(chunks.len(), ch.num_chunks());
        let c1 = chunks.iter().find(|c| c.track == "Track00002" && c.index == 1).unwrap();
        assert_eq!(c1.start, l);
        assert!((c1.stems[0][0] - code(2, 0, l)).abs() < 1e-5);
        assert_eq!(c1.mixture().len(), l);
    }

    #[test]
    fn clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = MultiSourceDataset::open(dir.path(), "train", 100, 0.0, 10.0).unwrap_err().to_string();
        assert!(e.contains("not found") && e.contains("bass,drums,guitar,piano"), "{e}");
        write_track(dir.path(), "Track00001", [Some(1000); 4], 44100, 1);
        let e = MultiSourceDataset::open(dir.path(), "train", 100, 0.0, 10.0).unwrap_err().to_string();
        assert!(e.contains("44100 Hz") && e.contains("22050"), "{e}");
        let e = ChunkedTracks::open(dir.path(), "train", 100).unwrap_err().to_string();
        assert!(e.contains("44100 Hz"), "{e}");
    }
}
