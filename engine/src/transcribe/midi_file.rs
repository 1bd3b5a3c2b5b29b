//! Standard MIDI files: writing a transcribed line, and reading any file's notes back in seconds
//! (through its tempo map) to score a transcription against it.

use super::note::Note;
use super::quantize::make_monophonic;
use crate::audio::OutputPolicy;
use anyhow::{bail, Context, Result};
use midly::num::{u15, u24, u28, u4, u7};
use midly::{Format, Header, MetaMessage, MidiMessage, Smf, Timing, TrackEvent, TrackEventKind};
use std::collections::{HashMap, VecDeque};
use std::path::Path;

/// Ticks per quarter note of the files we write.
pub const PPQ: u16 = 480;
/// Largest MIDI file read (64 MiB; a song's MIDI is kilobytes). Checked before reading, so a
/// huge or endless file is refused instead of filling memory.
pub const MAX_MIDI_BYTES: u64 = 64 << 20;
/// The tempo a MIDI file has when it says none (120 quarter notes per minute).
const DEFAULT_TEMPO_US: u32 = 500_000;

/// What goes into a written file besides the notes.
#[derive(Clone, Debug)]
pub struct MidiOptions {
    /// Quarter notes per minute (the tempo meta event; notes are placed in real time at this tempo).
    pub bpm: f64,
    /// The track's name (the DAW shows it on the imported track).
    pub track_name: String,
    /// GM program, 0-based (33 = Electric Bass (finger)).
    pub program: u8,
    /// MIDI channel, 0-based.
    pub channel: u8,
}

/// A format-0 Standard MIDI File of `notes` (one track: name, tempo, 4/4, program, notes).
pub fn to_smf_bytes(notes: &[Note], opts: &MidiOptions) -> Result<Vec<u8>> {
    if !(opts.bpm.is_finite() && opts.bpm > 0.0) {
        bail!("tempo {} bpm is not a positive number", opts.bpm);
    }
    let mut line = notes.to_vec();
    make_monophonic(&mut line);
    let ticks_per_s = opts.bpm / 60.0 * PPQ as f64;
    let to_tick = |s: f64| -> Result<u32> {
        let t = (s.max(0.0) * ticks_per_s).round();
        if t > u28::max_value().as_int() as f64 {
            bail!("a note at {s:.1} s is beyond the longest time a MIDI file can hold at {} bpm", opts.bpm);
        }
        Ok(t as u32)
    };
    // (tick, is note-on, key, velocity); at equal ticks note-offs first, so a note ending where
    // the next starts is released before it is struck.
    let mut events: Vec<(u32, bool, u8, u8)> = Vec::with_capacity(line.len() * 2);
    for n in &line {
        let on = to_tick(n.onset_s)?;
        let off = to_tick(n.offset_s)?.max(on + 1);
        events.push((on, true, n.key.min(127), n.velocity.clamp(1, 127)));
        events.push((off, false, n.key.min(127), 0));
    }
    events.sort_by_key(|e| (e.0, e.1, e.2));
    let tempo_us = (60_000_000.0 / opts.bpm).round();
    if !(1.0..=u24::max_value().as_int() as f64).contains(&tempo_us) {
        bail!("tempo {} bpm cannot be written to a MIDI file (use 4 to 1000 bpm)", opts.bpm);
    }
    let channel = u4::new(opts.channel & 0x0f);
    let meta = |m: MetaMessage<'static>| TrackEvent { delta: u28::new(0), kind: TrackEventKind::Meta(m) };
    let name = opts.track_name.clone().into_bytes();
    let mut track = vec![
        TrackEvent { delta: u28::new(0), kind: TrackEventKind::Meta(MetaMessage::TrackName(&name)) },
        meta(MetaMessage::Tempo(u24::new(tempo_us as u32))),
        meta(MetaMessage::TimeSignature(4, 2, 24, 8)),
        TrackEvent {
            delta: u28::new(0),
            kind: TrackEventKind::Midi { channel, message: MidiMessage::ProgramChange { program: u7::new(opts.program & 0x7f) } },
        },
    ];
    let mut last = 0u32;
    for (tick, on, key, vel) in events {
        let message = if on {
            MidiMessage::NoteOn { key: u7::new(key), vel: u7::new(vel) }
        } else {
            MidiMessage::NoteOff { key: u7::new(key), vel: u7::new(64) }
        };
        track.push(TrackEvent { delta: u28::new(tick - last), kind: TrackEventKind::Midi { channel, message } });
        last = tick;
    }
    track.push(meta(MetaMessage::EndOfTrack));
    let mut smf = Smf::new(Header::new(Format::SingleTrack, Timing::Metrical(u15::new(PPQ))));
    smf.tracks.push(track);
    let mut bytes = Vec::new();
    smf.write_std(&mut bytes).context("encoding the MIDI file")?;
    Ok(bytes)
}

/// Refuses an existing `path` under [`OutputPolicy::Refuse`], with what to do instead.
pub fn check_output(path: &Path, policy: OutputPolicy) -> Result<()> {
    if path.is_dir() {
        bail!("{} is a folder; give the MIDI file's name, e.g. {}", path.display(), path.join("bass.mid").display());
    }
    if policy == OutputPolicy::Refuse && path.exists() {
        bail!("refusing to overwrite existing file {}; choose another name or ask to replace it (`--force`)", path.display());
    }
    Ok(())
}

/// Writes `notes` to `path` as a MIDI file, atomically (temporary file, then rename).
pub fn write_midi(notes: &[Note], opts: &MidiOptions, path: &Path, policy: OutputPolicy) -> Result<()> {
    check_output(path, policy)?;
    let bytes = to_smf_bytes(notes, opts)?;
    crate::audio::write_file_atomic(path, &bytes)
}

/// The notes of one track of a MIDI file, in seconds.
#[derive(Clone, Debug, Default)]
pub struct MidiTrackNotes {
    /// The track name meta event ("" when there is none).
    pub name: String,
    /// The channel of the track's first channel message.
    pub channel: Option<u8>,
    pub notes: Vec<Note>,
}

/// Reads every track's notes from a MIDI file, converting ticks to seconds through the file's
/// tempo changes. A note-off ends the earliest open note of its key and channel; notes still open
/// at the end of their track end there.
pub fn read_midi(path: &Path) -> Result<Vec<MidiTrackNotes>> {
    let shown = path.display();
    let size = std::fs::metadata(path).with_context(|| format!("cannot read MIDI file {shown}"))?.len();
    if size > MAX_MIDI_BYTES {
        bail!("{shown} is {size} bytes, more than the {MAX_MIDI_BYTES} a MIDI file may have here; is it a MIDI file?");
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read MIDI file {shown}"))?;
    parse_midi(&bytes).with_context(|| format!("{shown} is not a readable MIDI file"))
}

/// [`read_midi`] of bytes in memory.
pub fn parse_midi(bytes: &[u8]) -> Result<Vec<MidiTrackNotes>> {
    let smf = Smf::parse(bytes).map_err(|e| anyhow::anyhow!("{e}"))?;
    let clock = match smf.header.timing {
        Timing::Metrical(ppq) if ppq.as_int() > 0 => Clock::Metrical(ppq.as_int() as f64),
        Timing::Metrical(_) => bail!("the header says 0 ticks per quarter note"),
        Timing::Timecode(fps, sub) if sub > 0 => Clock::Fixed(1.0 / (fps.as_f32() as f64 * sub as f64)),
        Timing::Timecode(..) => bail!("the header says 0 ticks per frame"),
    };
    // Format 0 and 1 share one tempo map (in the first track, by convention, but taken from all);
    // in format 2 every track is its own song with its own tempo.
    let shared = if smf.header.format == Format::Sequential { None } else { Some(TempoMap::new(&smf.tracks, &clock)) };
    let mut out = Vec::with_capacity(smf.tracks.len());
    for track in &smf.tracks {
        let own;
        let tempos = match &shared {
            Some(t) => t,
            None => {
                own = TempoMap::new(std::slice::from_ref(track), &clock);
                &own
            }
        };
        out.push(track_notes(track, tempos));
    }
    Ok(out)
}

enum Clock {
    /// Ticks per quarter note (the tempo map gives seconds per quarter).
    Metrical(f64),
    /// Seconds per tick (SMPTE timing ignores tempo events).
    Fixed(f64),
}

/// Ticks to seconds: the tempo segments as (first tick, seconds at that tick, seconds per tick),
/// sorted, so a lookup is a binary search however many tempo events a file has.
struct TempoMap {
    segments: Vec<(u64, f64, f64)>,
}

impl TempoMap {
    fn new(tracks: &[Vec<TrackEvent>], clock: &Clock) -> TempoMap {
        let ppq = match *clock {
            Clock::Fixed(s) => return TempoMap { segments: vec![(0, 0.0, s)] },
            Clock::Metrical(ppq) => ppq,
        };
        let mut changes = vec![(0u64, DEFAULT_TEMPO_US)];
        for track in tracks {
            let mut tick = 0u64;
            for ev in track {
                tick += ev.delta.as_int() as u64;
                if let TrackEventKind::Meta(MetaMessage::Tempo(us)) = ev.kind {
                    if us.as_int() > 0 {
                        changes.push((tick, us.as_int()));
                    }
                }
            }
        }
        // Stable sort: at equal ticks the last tempo event read wins, as a sequencer applies them.
        changes.sort_by_key(|c| c.0);
        let mut segments: Vec<(u64, f64, f64)> = Vec::with_capacity(changes.len());
        for (tick, us) in changes {
            let per_tick = us as f64 / 1e6 / ppq;
            match segments.last_mut() {
                Some(last) if last.0 == tick => last.2 = per_tick,
                Some(&mut (start, secs, rate)) => segments.push((tick, secs + (tick - start) as f64 * rate, per_tick)),
                None => segments.push((tick, 0.0, per_tick)),
            }
        }
        TempoMap { segments }
    }

    /// Seconds at absolute `tick`.
    fn seconds(&self, tick: u64) -> f64 {
        let i = self.segments.partition_point(|s| s.0 <= tick).max(1) - 1;
        let (start, secs, per_tick) = self.segments[i];
        secs + (tick - start) as f64 * per_tick
    }
}

fn track_notes(track: &[TrackEvent], tempos: &TempoMap) -> MidiTrackNotes {
    let mut t = MidiTrackNotes::default();
    let mut open: HashMap<(u8, u8), VecDeque<(u64, u8)>> = HashMap::new();
    let mut closed: Vec<(u64, u64, u8, u8)> = Vec::new();
    let mut tick = 0u64;
    for ev in track {
        tick += ev.delta.as_int() as u64;
        match ev.kind {
            TrackEventKind::Meta(MetaMessage::TrackName(n)) if t.name.is_empty() => {
                t.name = String::from_utf8_lossy(n).into_owned()
            }
            TrackEventKind::Midi { channel, message } => {
                let ch = channel.as_int();
                t.channel.get_or_insert(ch);
                match message {
                    MidiMessage::NoteOn { key, vel } if vel.as_int() > 0 => {
                        open.entry((ch, key.as_int())).or_default().push_back((tick, vel.as_int()));
                    }
                    MidiMessage::NoteOn { key, .. } | MidiMessage::NoteOff { key, .. } => {
                        if let Some((start, vel)) = open.get_mut(&(ch, key.as_int())).and_then(|q| q.pop_front()) {
                            closed.push((start, tick, key.as_int(), vel));
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    for ((_, key), queue) in open {
        for (start, vel) in queue {
            closed.push((start, tick, key, vel));
        }
    }
    t.notes = closed
        .into_iter()
        .map(|(on, off, key, velocity)| Note {
            onset_s: tempos.seconds(on),
            offset_s: tempos.seconds(off),
            key,
            velocity,
        })
        .collect();
    t.notes.sort_by(|a, b| a.onset_s.total_cmp(&b.onset_s).then(a.key.cmp(&b.key)));
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(bpm: f64) -> MidiOptions {
        MidiOptions { bpm, track_name: "bass".into(), program: 33, channel: 0 }
    }

    #[test]
    fn written_notes_read_back_at_their_times() {
        let notes = vec![
            Note { onset_s: 0.0, offset_s: 0.5, key: 40, velocity: 100 },
            Note { onset_s: 0.5, offset_s: 0.75, key: 40, velocity: 60 },
            Note { onset_s: 1.1, offset_s: 2.0, key: 47, velocity: 127 },
        ];
        let bytes = to_smf_bytes(&notes, &opts(93.0)).unwrap();
        let tracks = parse_midi(&bytes).unwrap();
        assert_eq!(tracks.len(), 1);
        assert_eq!(tracks[0].name, "bass");
        assert_eq!(tracks[0].channel, Some(0));
        let back = &tracks[0].notes;
        assert_eq!(back.len(), 3);
        // one tick at 93 bpm and 480 ppq is 1.3 ms
        for (a, b) in notes.iter().zip(back) {
            assert_eq!((a.key, a.velocity), (b.key, b.velocity));
            assert!((a.onset_s - b.onset_s).abs() < 1.5e-3 && (a.offset_s - b.offset_s).abs() < 1.5e-3, "{a:?} {b:?}");
        }
        let smf = Smf::parse(&bytes).unwrap();
        assert_eq!(smf.header.format, Format::SingleTrack);
        assert!(smf.tracks[0].iter().any(|e| matches!(e.kind, TrackEventKind::Meta(MetaMessage::Tempo(t)) if t.as_int() == 645_161)));
    }

    #[test]
    fn a_tempo_change_in_a_conductor_track_moves_later_notes() {
        // format 1: conductor at 120 bpm, then 60 bpm from tick 960 (1 s); a note at tick 1440
        let mut smf = Smf::new(Header::new(Format::Parallel, Timing::Metrical(u15::new(480))));
        let meta = |d: u32, m: MetaMessage<'static>| TrackEvent { delta: u28::new(d), kind: TrackEventKind::Meta(m) };
        smf.tracks.push(vec![
            meta(0, MetaMessage::Tempo(u24::new(500_000))),
            meta(960, MetaMessage::Tempo(u24::new(1_000_000))),
            meta(0, MetaMessage::EndOfTrack),
        ]);
        let ch = u4::new(3);
        let midi = |d: u32, message| TrackEvent { delta: u28::new(d), kind: TrackEventKind::Midi { channel: ch, message } };
        smf.tracks.push(vec![
            meta(0, MetaMessage::TrackName(b"bass")),
            midi(1440, MidiMessage::NoteOn { key: u7::new(40), vel: u7::new(90) }),
            midi(480, MidiMessage::NoteOn { key: u7::new(40), vel: u7::new(0) }),
            midi(0, MidiMessage::NoteOn { key: u7::new(45), vel: u7::new(80) }), // never closed
            meta(480, MetaMessage::EndOfTrack),
        ]);
        let mut bytes = Vec::new();
        smf.write_std(&mut bytes).unwrap();
        let tracks = parse_midi(&bytes).unwrap();
        let n = &tracks[1].notes;
        assert_eq!((tracks[1].name.as_str(), tracks[1].channel), ("bass", Some(3)));
        assert_eq!(n.len(), 2);
        assert!((n[0].onset_s - 2.0).abs() < 1e-9 && (n[0].offset_s - 3.0).abs() < 1e-9, "{n:?}");
        assert!((n[1].onset_s - 3.0).abs() < 1e-9 && (n[1].offset_s - 4.0).abs() < 1e-9, "{n:?}");
    }

    #[test]
    fn bad_files_and_existing_outputs_get_clear_errors() {
        let err = parse_midi(b"RIFF not a midi file").unwrap_err().to_string();
        assert!(!err.is_empty());
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x.mid");
        std::fs::write(&p, b"mine").unwrap();
        let err = write_midi(&[], &opts(120.0), &p, OutputPolicy::Refuse).unwrap_err().to_string();
        assert!(err.contains("refusing") && err.contains("--force"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), b"mine");
        write_midi(&[], &opts(120.0), &p, OutputPolicy::Overwrite).unwrap();
        assert!(parse_midi(&std::fs::read(&p).unwrap()).unwrap()[0].notes.is_empty());
        let err = format!("{:#}", read_midi(&tmp.path().join("missing.mid")).unwrap_err());
        assert!(err.contains("missing.mid"), "{err}");
        let err = format!("{:#}", write_midi(&[], &opts(0.0), &tmp.path().join("y.mid"), OutputPolicy::Refuse).unwrap_err());
        assert!(err.contains("bpm"), "{err}");
        let err = format!("{:#}", write_midi(&[], &opts(120.0), tmp.path(), OutputPolicy::Overwrite).unwrap_err());
        assert!(err.contains("folder"), "{err}");
    }
}
