//! `msdm midi` (a bass stem to a MIDI file), the `--midi` option of the jobs that write a bass
//! stem, and `msdm eval --midi` (the transcriber measured on mini-Slakh's true bass stems).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use msdm::audio::{self, AudioBuffer, OutputPolicy};
use msdm::data::{synthesize, SynthOptions};
use msdm::transcribe::evaluate::{evaluate_split, SplitReport};
use msdm::transcribe::{transcribe_to_midi, Summary, Tolerance, TranscribeOptions, Tuning};

use crate::OutputArgs;

#[derive(Args)]
pub struct MidiArgs {
    /// The bass stem (WAV/FLAC/MP3/OGG, any rate; channels are averaged)
    pub input: PathBuf,
    /// The MIDI file to write
    #[arg(short, long)]
    pub output: PathBuf,
    /// Tempo in quarter notes per minute: written to the file, and notes snap to the grid
    #[arg(long)]
    pub bpm: Option<f64>,
    /// Grid steps per quarter note with --bpm (4 = sixteenths; 0 keeps exact times)
    #[arg(long, default_value_t = 4)]
    pub grid: u32,
    /// Lowest pitch searched, Hz
    #[arg(long, default_value_t = 30.0)]
    pub min_hz: f64,
    /// Highest pitch searched, Hz
    #[arg(long, default_value_t = 400.0)]
    pub max_hz: f64,
    /// Replace OUTPUT if it exists
    #[arg(long)]
    pub force: bool,
}

/// Note name of a MIDI key, with middle C (60) as C4.
pub fn key_name(key: u8) -> String {
    const NAMES: [&str; 12] = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"];
    format!("{}{}", NAMES[key as usize % 12], key as i32 / 12 - 1)
}

fn describe(s: &Summary) -> String {
    let range = match (s.lowest_key, s.highest_key) {
        (Some(lo), Some(hi)) => format!(" ({}–{})", key_name(lo), key_name(hi)),
        _ => String::new(),
    };
    let grid = if s.quantized { ", quantised" } else { "" };
    format!(
        "wrote {}: {} notes{range}, {:.1} s of audio transcribed in {:.2} s, {} bpm{grid}",
        s.path.display(),
        s.notes,
        s.audio_s,
        s.transcribe_s,
        s.bpm
    )
}

pub fn run(args: &MidiArgs) -> Result<()> {
    let opts = TranscribeOptions {
        bpm: args.bpm,
        grid: args.grid,
        min_hz: args.min_hz,
        max_hz: args.max_hz,
        output: if args.force { OutputPolicy::Overwrite } else { OutputPolicy::Refuse },
        ..Default::default()
    };
    // Settings and the destination are checked before the audio is decoded.
    opts.validate()?;
    msdm::transcribe::midi_file::check_output(&args.output, opts.output)?;
    let audio = audio::read_audio(&args.input)?;
    let summary = transcribe_to_midi(&audio, &opts, &args.output)?;
    println!("{}", describe(&summary));
    if summary.notes == 0 {
        eprintln!("warning: no pitched notes found in {} (silent, or not a bass line?)", args.input.display());
    }
    Ok(())
}

/// The file `--midi` writes beside the stems.
pub const BASS_MIDI: &str = "bass.mid";

/// The transcription settings of a job's `--midi`, checked (before any sampling).
pub fn job_options(out: &OutputArgs) -> Result<Option<TranscribeOptions>> {
    if !out.midi {
        return Ok(None);
    }
    let opts = TranscribeOptions {
        bpm: out.midi_bpm,
        output: if out.force { OutputPolicy::Overwrite } else { OutputPolicy::Refuse },
        ..Default::default()
    };
    opts.validate().context("--midi-bpm")?;
    Ok(Some(opts))
}

/// The index of the bass stem, which `--midi` transcribes.
pub fn bass_index(stems: &[String]) -> Result<usize> {
    msdm::stem_index(stems, "bass").map_err(|_| anyhow::anyhow!("--midi transcribes the bass stem, and this model has none (its stems: {})", stems.join(", ")))
}

/// Writes `dir/bass.mid` from a take's bass stem.
pub fn write_job_midi(dir: &Path, bass: &AudioBuffer, opts: &TranscribeOptions) -> Result<()> {
    let summary = transcribe_to_midi(bass, opts, &dir.join(BASS_MIDI))?;
    println!("{}", describe(&summary));
    Ok(())
}

#[derive(Args, Clone, Default)]
pub struct MidiEvalArgs {
    /// Measure the bass transcriber instead of separation: transcribe each track's true bass stem
    /// and score its notes against the track's song.mid
    #[arg(long)]
    pub midi: bool,
    /// With --midi: first render tracks 0..N of the split with the mini-Slakh synthesiser
    /// (30–60 s songs, as `msdm data synth`); tracks already there are reused
    #[arg(long, value_name = "N")]
    pub render: Option<usize>,
    /// With --render: the GM SoundFont
    #[arg(long, default_value = "/usr/share/sounds/sf2/FluidR3_GM.sf2")]
    pub soundfont: PathBuf,
    /// With --midi: the segmenter's thresholds as JSON (any subset of the fields in docs/midi.md)
    #[arg(long)]
    pub tuning: Option<PathBuf>,
}

/// Renders the tracks of `0..count` that are not there yet, in contiguous runs.
fn render_missing(data: &Path, split: &str, count: usize, soundfont: &Path, quiet: bool) -> Result<()> {
    let split_dir = data.join(split);
    let missing: Vec<usize> =
        (0..count).filter(|&i| !split_dir.join(msdm::data::synth::track_name(i)).join("meta.json").is_file()).collect();
    if missing.is_empty() {
        eprintln!("reusing the {count} tracks already in {}", split_dir.display());
        return Ok(());
    }
    eprintln!("rendering {} of {count} tracks into {}", missing.len(), split_dir.display());
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for i in missing {
        match runs.last_mut() {
            Some((first, n)) if *first + *n == i => *n += 1,
            _ => runs.push((i, 1)),
        }
    }
    let pb = crate::progress::bar(quiet, "render");
    for (first, n) in runs {
        let mut opts = SynthOptions::new(data, soundfont, split, n);
        opts.first_index = first;
        synthesize(&opts, &|done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
        })?;
    }
    pb.finish_and_clear();
    Ok(())
}

fn read_tuning(path: Option<&Path>) -> Result<Tuning> {
    let Some(path) = path else { return Ok(Tuning::default()) };
    let size = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if size > 1 << 20 {
        bail!("{} is {size} bytes; a tuning file is a small JSON object", path.display());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a valid tuning (see docs/midi.md for the fields)", path.display()))
}

/// `msdm eval --midi`.
pub fn eval(data: &Path, split: &str, limit: Option<usize>, m: &MidiEvalArgs, json: Option<&Path>, quiet: bool) -> Result<()> {
    msdm::data::synth::split_base(split)?;
    let tuning = read_tuning(m.tuning.as_deref())?;
    if let Some(n) = m.render {
        render_missing(data, split, n, &m.soundfont, quiet)?;
    }
    let opts = TranscribeOptions { tuning, ..Default::default() };
    let tolerance = Tolerance::default();
    let pb = crate::progress::bar(quiet, "midi eval");
    let report = evaluate_split(&data.join(split), limit.or(m.render), &opts, &tolerance, &mut |d, t| {
        pb.set_length(t as u64);
        pb.set_position(d as u64);
    })?;
    pb.finish_and_clear();
    println!("{}", table(&report, split));
    if let Some(path) = json {
        let (pooled, pooled_offsets) = report.pooled();
        let (p, r, f1) = report.song_means();
        let v = serde_json::json!({
            "data": data, "split": split, "tuning": opts.tuning, "tolerance": tolerance,
            "pooled": { "precision": pooled.precision(), "recall": pooled.recall(), "f1": pooled.f1(), "counts": pooled },
            "pooled_with_offsets": { "precision": pooled_offsets.precision(), "recall": pooled_offsets.recall(),
                                     "f1": pooled_offsets.f1(), "counts": pooled_offsets },
            "song_mean": { "precision": p, "recall": r, "f1": f1 },
            "excerpt_12s_seconds": report.excerpt_times().map(|(median, max)| serde_json::json!({ "median": median, "max": max })),
            "real_time_factor": report.real_time_factor(),
            "songs": report.songs, "skipped": report.skipped,
        });
        audio::write_file_atomic(path, serde_json::to_string_pretty(&v)?.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

fn table(report: &SplitReport, split: &str) -> String {
    let mut s = format!(
        "bass transcription on {} ({split}): onset within {:.0} ms, pitch within {} semitone\n",
        report.split_dir.display(),
        report.tolerance.onset_s * 1e3,
        report.tolerance.pitch_semitones
    );
    s += &format!(
        "{:<12} {:>6} {:>5} {:>5} {:>6} {:>6} {:>6} {:>9} {:>8} {:>7}\n",
        "track", "sec", "ref", "est", "P", "R", "F1", "F1+offs", "bias ms", "time s"
    );
    for song in &report.songs {
        let n = &song.notes;
        s += &format!(
            "{:<12} {:>6.1} {:>5} {:>5} {:>6.3} {:>6.3} {:>6.3} {:>9.3} {:>8.1} {:>7.3}\n",
            song.track,
            song.audio_s,
            n.reference,
            n.estimated,
            n.precision(),
            n.recall(),
            n.f1(),
            song.notes_with_offsets.f1(),
            n.mean_onset_error_s() * 1e3,
            song.transcribe_s
        );
    }
    let (pooled, offs) = report.pooled();
    let (p, r, f1) = report.song_means();
    s += &format!(
        "all notes    P {:.3}  R {:.3}  F1 {:.3}  (with offsets: F1 {:.3}); {} songs, {} reference notes\n",
        pooled.precision(),
        pooled.recall(),
        pooled.f1(),
        offs.f1(),
        report.songs.len(),
        pooled.reference
    );
    s += &format!("song mean    P {p:.3}  R {r:.3}  F1 {f1:.3}\n");
    if let Some((median, max)) = report.excerpt_times() {
        s += &format!("time         12 s of audio in {median:.3} s (median over songs), {max:.3} s at most; ");
    }
    s += &format!("whole songs at {:.4} s per second of audio", report.real_time_factor());
    for (name, why) in &report.skipped {
        s += &format!("\nskipped {name}: {why}");
    }
    s
}
