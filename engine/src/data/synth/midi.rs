//! MIDI: the song as one multitrack Standard MIDI File (`song.mid`), and a reader for the notes back.

use super::arrange::{Note, Song, PPQ};
use anyhow::{bail, Context, Result};
use midly::num::{u15, u24, u28, u4, u7};
use midly::{Format, Header, MetaMessage, MidiMessage, Smf, Timing, TrackEvent, TrackEventKind};
use std::path::Path;

/// MIDI channel per stem (bass, drums, guitar, piano); drums on GM channel 10 (index 9).
pub const CHANNELS: [u8; 4] = [0, 9, 1, 2];

/// A note-on / note-off at a tick, for one channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NoteEvent {
    pub tick: u32,
    pub on: bool,
    pub key: u8,
    pub vel: u8,
}

/// Note-ons and note-offs in time order; at equal ticks note-offs come first, so a note that
/// ends exactly where the same key starts again is released before it is struck.
pub fn note_events(notes: &[Note]) -> Vec<NoteEvent> {
    let mut ev: Vec<NoteEvent> = Vec::with_capacity(notes.len() * 2);
    for n in notes {
        ev.push(NoteEvent { tick: n.start, on: true, key: n.key, vel: n.vel });
        ev.push(NoteEvent { tick: n.end, on: false, key: n.key, vel: 0 });
    }
    ev.sort_by_key(|e| (e.tick, e.on, e.key));
    ev
}

/// Microseconds per quarter note (what the MIDI tempo meta event stores).
pub fn tempo_us(quarter_bpm: f64) -> u32 {
    (60_000_000.0 / quarter_bpm).round() as u32
}

/// Number of sharps (positive) or flats (negative) of a key signature.
fn key_signature(tonic: u8, minor: bool) -> i8 {
    let major_tonic = if minor { (tonic + 3) % 12 } else { tonic };
    let fifths = (major_tonic as i32 * 7) % 12;
    (if fifths > 6 { fifths - 12 } else { fifths }) as i8
}

/// Writes the present stems of `song` as a format-1 MIDI file: a conductor track (tempo, meter,
/// key) and one track per present stem, named after the stem, with its program change.
pub fn write_song(song: &Song, path: &Path) -> Result<()> {
    let mut smf = Smf::new(Header::new(Format::Parallel, Timing::Metrical(u15::new(PPQ))));
    let (num, den) = song.meter.time_signature();
    let clocks = if den == 3 { 36 } else { 24 };
    let meta = |m: MetaMessage<'static>| TrackEvent { delta: u28::new(0), kind: TrackEventKind::Meta(m) };
    smf.tracks.push(vec![
        meta(MetaMessage::TrackName(b"conductor")),
        meta(MetaMessage::Tempo(u24::new(tempo_us(song.quarter_bpm)))),
        meta(MetaMessage::TimeSignature(num, den, clocks, 8)),
        meta(MetaMessage::KeySignature(
            key_signature(song.key.tonic, song.key.mode == super::theory::Mode::Minor),
            song.key.mode == super::theory::Mode::Minor,
        )),
        meta(MetaMessage::EndOfTrack),
    ]);
    for (stem, name) in crate::STEMS.iter().enumerate() {
        if !song.present[stem] {
            continue;
        }
        let ch = u4::new(CHANNELS[stem]);
        let mut track = vec![
            meta(MetaMessage::TrackName(name.as_bytes())),
            TrackEvent {
                delta: u28::new(0),
                kind: TrackEventKind::Midi {
                    channel: ch,
                    message: MidiMessage::ProgramChange { program: u7::new(song.programs.get(stem) & 0x7f) },
                },
            },
        ];
        let mut last = 0u32;
        for e in note_events(&song.notes[stem]) {
            let message = if e.on {
                MidiMessage::NoteOn { key: u7::new(e.key & 0x7f), vel: u7::new(e.vel.clamp(1, 127)) }
            } else {
                MidiMessage::NoteOff { key: u7::new(e.key & 0x7f), vel: u7::new(64) }
            };
            track.push(TrackEvent { delta: u28::new(e.tick - last), kind: TrackEventKind::Midi { channel: ch, message } });
            last = e.tick;
        }
        track.push(meta(MetaMessage::EndOfTrack));
        smf.tracks.push(track);
    }
    smf.save(path).with_context(|| format!("writing MIDI file {}", path.display()))
}

/// The notes of one track of a MIDI file.
#[derive(Clone, Debug)]
pub struct MidiTrack {
    pub name: String,
    pub channel: Option<u8>,
    pub program: Option<u8>,
    pub notes: Vec<Note>,
}

/// Reads every track's notes (ticks) back from a MIDI file, and the file's ticks per quarter.
pub fn read_song(path: &Path) -> Result<(u16, Vec<MidiTrack>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading MIDI file {}", path.display()))?;
    let smf = Smf::parse(&bytes).with_context(|| format!("parsing MIDI file {}", path.display()))?;
    let ppq = match smf.header.timing {
        Timing::Metrical(t) => t.as_int(),
        Timing::Timecode(..) => bail!("{}: timecode-based MIDI files are not supported", path.display()),
    };
    let mut out = Vec::new();
    for track in &smf.tracks {
        let mut t = MidiTrack { name: String::new(), channel: None, program: None, notes: Vec::new() };
        let mut open: std::collections::HashMap<u8, (u32, u8)> = Default::default();
        let mut tick = 0u32;
        for ev in track {
            tick += ev.delta.as_int();
            match ev.kind {
                TrackEventKind::Meta(MetaMessage::TrackName(n)) => t.name = String::from_utf8_lossy(n).into_owned(),
                TrackEventKind::Midi { channel, message } => {
                    t.channel = Some(channel.as_int());
                    match message {
                        MidiMessage::ProgramChange { program } => t.program = Some(program.as_int()),
                        MidiMessage::NoteOn { key, vel } if vel.as_int() > 0 => {
                            open.insert(key.as_int(), (tick, vel.as_int()));
                        }
                        MidiMessage::NoteOn { key, .. } | MidiMessage::NoteOff { key, .. } => {
                            if let Some((start, vel)) = open.remove(&key.as_int()) {
                                t.notes.push(Note { start, end: tick, key: key.as_int(), vel });
                            }
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        t.notes.sort_by_key(|n| (n.start, n.key));
        out.push(t);
    }
    Ok((ppq, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_signatures() {
        assert_eq!(key_signature(0, false), 0); // C
        assert_eq!(key_signature(7, false), 1); // G
        assert_eq!(key_signature(5, false), -1); // F
        assert_eq!(key_signature(9, true), 0); // A minor
        assert_eq!(key_signature(2, true), -1); // D minor
    }

    #[test]
    fn offs_before_ons_at_equal_ticks() {
        let notes = [Note { start: 0, end: 10, key: 40, vel: 90 }, Note { start: 10, end: 20, key: 40, vel: 90 }];
        let ev = note_events(&notes);
        assert_eq!(ev.iter().map(|e| (e.tick, e.on)).collect::<Vec<_>>(), [(0, true), (10, false), (10, true), (20, false)]);
    }
}
