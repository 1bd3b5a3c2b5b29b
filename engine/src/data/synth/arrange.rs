//! The song arranger: draws a shared musical context (style, meter, tempo, key, chord progressions,
//! sections, instruments) and turns it into humanised note lists for the four stems.

use super::patterns::{self, BarChord, BarCtx, GridNote, GuitarRole, PianoRole};
use super::theory::{self, Chord, Key, Mode};
use rand::Rng;
use rand_distr::{Distribution, Normal};
use serde::Serialize;

pub use super::form::{Meter, SectionKind, Style, BASS, DRUMS, GUITAR, PIANO, PPQ};

/// One section of the song.
#[derive(Clone, Debug, Serialize)]
pub struct Section {
    pub kind: SectionKind,
    pub start_bar: usize,
    pub bars: usize,
    pub energy: f32,
    /// Which stems play in this section (bass, drums, guitar, piano).
    pub active: [bool; 4],
    pub guitar: GuitarRole,
    pub piano: PianoRole,
    pub variant: u32,
}

/// A chord over a span of ticks.
#[derive(Clone, Copy, Debug)]
pub struct ChordEvent {
    pub start: u32,
    pub end: u32,
    pub chord: Chord,
}

/// A note in ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Note {
    pub start: u32,
    pub end: u32,
    pub key: u8,
    pub vel: u8,
}

/// GM programs (0-based) per stem; for drums, the percussion-bank preset number (the kit).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Programs {
    pub bass: u8,
    pub drums: u8,
    pub guitar: u8,
    pub piano: u8,
}

impl Programs {
    pub fn get(&self, stem: usize) -> u8 {
        [self.bass, self.drums, self.guitar, self.piano][stem]
    }
}

/// A composed song: the shared context and the notes of each stem.
#[derive(Clone, Debug)]
pub struct Song {
    pub style: Style,
    pub meter: Meter,
    pub key: Key,
    /// Beats per minute of the meter's beat (dotted quarter in 12/8).
    pub beat_bpm: f64,
    /// Quarter notes per minute (what the MIDI tempo meta event encodes).
    pub quarter_bpm: f64,
    pub bars: usize,
    pub sections: Vec<Section>,
    pub chords: Vec<ChordEvent>,
    pub programs: Programs,
    pub present: [bool; 4],
    pub notes: [Vec<Note>; 4],
    pub swing: f32,
}

impl Song {
    pub fn seconds_per_tick(&self) -> f64 {
        60.0 / (self.quarter_bpm * PPQ as f64)
    }
    pub fn ticks_to_seconds(&self, t: u32) -> f64 {
        t as f64 * self.seconds_per_tick()
    }
    pub fn total_ticks(&self) -> u32 {
        self.bars as u32 * self.meter.bar_ticks()
    }
}

fn pick<R: Rng, T: Copy>(rng: &mut R, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

/// Draws a program: the style's preferred list with probability 0.65, else uniform in `range`.
fn draw_program<R: Rng>(rng: &mut R, preferred: &[u8], range: std::ops::RangeInclusive<u8>) -> u8 {
    if rng.random_bool(0.65) {
        pick(rng, preferred)
    } else {
        rng.random_range(range)
    }
}

fn draw_programs<R: Rng>(rng: &mut R, style: Style, kits: &[u8]) -> Programs {
    let (bass, guitar, piano, kit): (&[u8], &[u8], &[u8], &[u8]) = match style {
        Style::Rock => (&[34, 33], &[29, 30, 27, 25], &[0, 1, 2], &[0, 8, 16]),
        Style::Funk => (&[36, 37, 33], &[27, 28, 26], &[7, 4, 5], &[0, 24, 25]),
        Style::Ballad => (&[33, 35, 32], &[25, 24, 27], &[0, 4, 1], &[32, 40, 0]),
        Style::Shuffle => (&[33, 32], &[26, 27, 29], &[0, 3, 2], &[32, 0, 8]),
        Style::Bossa => (&[32, 35, 33], &[24, 26], &[0, 4], &[40, 32]),
        Style::Reggae => (&[33, 38], &[27, 28], &[0, 4, 3], &[0, 8]),
        Style::Disco => (&[33, 38, 39], &[27, 28], &[4, 5, 1], &[0, 24, 25]),
        Style::Waltz => (&[32, 33, 35], &[24, 25, 26], &[0, 6, 3], &[40, 32, 0]),
    };
    let preferred_kits: Vec<u8> = kit.iter().copied().filter(|k| kits.contains(k)).collect();
    let drums = if kits.is_empty() {
        0
    } else if !preferred_kits.is_empty() && rng.random_bool(0.6) {
        pick(rng, &preferred_kits)
    } else {
        pick(rng, kits)
    };
    Programs {
        bass: draw_program(rng, bass, 32..=39),
        drums,
        guitar: draw_program(rng, guitar, 24..=31),
        piano: draw_program(rng, piano, 0..=7),
    }
}

fn guitar_roles(style: Style) -> &'static [GuitarRole] {
    use GuitarRole::*;
    match style {
        Style::Rock => &[PowerChords, Strum, Arpeggio],
        Style::Funk => &[FunkScratch, Skank],
        Style::Ballad => &[Arpeggio, Strum],
        Style::Shuffle => &[Strum, PowerChords],
        Style::Bossa => &[BossaComp, Arpeggio],
        Style::Reggae => &[Skank],
        Style::Disco => &[FunkScratch, Skank],
        Style::Waltz => &[Arpeggio, Strum],
    }
}

fn piano_roles(style: Style) -> &'static [PianoRole] {
    use PianoRole::*;
    match style {
        Style::Rock => &[Comp, Melody],
        Style::Funk => &[Comp],
        Style::Ballad => &[Arpeggio, Melody, Comp],
        Style::Shuffle => &[Comp, Melody],
        Style::Bossa => &[Comp, Melody],
        Style::Reggae => &[Comp],
        Style::Disco => &[Comp, Melody],
        Style::Waltz => &[Comp, Arpeggio, Melody],
    }
}

/// Lays out the song form for `target_bars` bars.
fn draw_form<R: Rng>(rng: &mut R, target_bars: usize) -> Vec<(SectionKind, usize)> {
    use SectionKind::*;
    let forms: [&[SectionKind]; 3] = [
        &[Intro, Verse, Chorus, Verse, Chorus, Bridge, Chorus, Outro],
        &[Verse, Chorus, Verse, Chorus, Chorus],
        &[Intro, Verse, Verse, Chorus, Bridge, Chorus, Outro],
    ];
    let form = forms[rng.random_range(0..forms.len())];
    let mut out: Vec<(SectionKind, usize)> = Vec::new();
    let mut total = 0;
    let mut i = 0;
    while total < target_bars {
        let kind = form[i % form.len()];
        i += 1;
        if i > form.len() && kind == Intro {
            continue;
        }
        let bars = match kind {
            Intro | Outro => pick(rng, &[2, 4]),
            Verse | Chorus => pick(rng, &[4, 8, 8]),
            Bridge => 4,
        };
        let left = target_bars - total;
        // A remainder too short for a section of its own extends this one.
        let bars = if left < bars + 2 { left } else { bars };
        out.push((kind, bars));
        total += bars;
    }
    out
}

/// Which stems are absent from the whole track (as in Slakh, where a track may lack a class).
fn draw_presence<R: Rng>(rng: &mut R) -> [bool; 4] {
    let mut present = [true; 4];
    let r: f64 = rng.random();
    if r < 0.10 {
        present[GUITAR] = false;
    } else if r < 0.20 {
        present[PIANO] = false;
    } else if r < 0.24 {
        present[DRUMS] = false;
    } else if r < 0.27 {
        present[BASS] = false;
    }
    present
}

/// Which stems play in a section: a section-dependent drop-out probability, at least two stems.
fn draw_active<R: Rng>(rng: &mut R, kind: SectionKind, present: &[bool; 4]) -> [bool; 4] {
    use SectionKind::*;
    // probability of playing, per stem (bass, drums, guitar, piano)
    let p: [f64; 4] = match kind {
        Intro | Outro => [0.5, 0.5, 0.75, 0.75],
        Verse => [0.95, 0.95, 0.85, 0.85],
        Chorus => [0.98, 0.98, 0.95, 0.95],
        Bridge => [0.8, 0.6, 0.8, 0.85],
    };
    let mut active = [false; 4];
    for s in 0..4 {
        active[s] = present[s] && rng.random_bool(p[s]);
    }
    let n_present = present.iter().filter(|&&x| x).count();
    let want = 2.min(n_present);
    while active.iter().filter(|&&x| x).count() < want {
        let s = rng.random_range(0..4);
        if present[s] {
            active[s] = true;
        }
    }
    active
}

/// Composes a song of about `seconds` seconds of music (the caller leaves room for a release tail).
/// `kits`: the percussion presets (bank 128 patch numbers) the SoundFont offers.
pub fn compose<R: Rng>(rng: &mut R, seconds: f64, kits: &[u8]) -> Song {
    let style = pick(rng, &Style::ALL);
    let meter = match style {
        Style::Waltz => Meter::ThreeFour,
        Style::Shuffle => Meter::TwelveEight,
        Style::Ballad if rng.random_bool(0.35) => Meter::TwelveEight,
        _ => Meter::FourFour,
    };
    let (lo, hi) = style.tempo_range(meter);
    let beat_bpm: f64 = rng.random_range(lo..=hi).round();
    let quarter_bpm = beat_bpm * meter.beat_ticks() as f64 / PPQ as f64;
    // Quantise to whole microseconds per quarter, as the MIDI tempo event stores it, so the
    // rendered audio and the MIDI file agree exactly.
    let quarter_bpm = 60_000_000.0 / (60_000_000.0 / quarter_bpm).round();
    let minor_p = match style {
        Style::Disco | Style::Bossa | Style::Waltz => 0.3,
        Style::Funk | Style::Reggae => 0.5,
        _ => 0.4,
    };
    let key = Key { tonic: rng.random_range(0..12), mode: if rng.random_bool(minor_p) { Mode::Minor } else { Mode::Major } };
    let sevenths = rng.random_bool(match style {
        Style::Funk | Style::Bossa => 0.85,
        Style::Ballad | Style::Disco => 0.35,
        _ => 0.1,
    });
    // Harmonic rhythm in half bars (half-bar chords only in 4/4).
    let halfbars_per_chord = {
        let r: f64 = rng.random();
        let slow = matches!(style, Style::Ballad | Style::Reggae | Style::Waltz);
        if meter == Meter::FourFour && !slow && r < 0.15 {
            1
        } else if r < if slow { 0.55 } else { 0.8 } {
            2
        } else {
            4
        }
    };
    let verse_prog = theory::draw_progression(rng, key.mode);
    let mut chorus_prog = theory::draw_progression(rng, key.mode);
    for _ in 0..4 {
        if chorus_prog != verse_prog {
            break;
        }
        chorus_prog = theory::draw_progression(rng, key.mode);
    }
    let bridge_prog = theory::draw_progression(rng, key.mode);

    let bar_seconds = meter.bar_ticks() as f64 * 60.0 / (quarter_bpm * PPQ as f64);
    let target_bars = ((seconds / bar_seconds).floor() as usize).max(1);
    let form = draw_form(rng, target_bars);
    let programs = draw_programs(rng, style, kits);
    let present = draw_presence(rng);

    let mut sections = Vec::new();
    let mut start_bar = 0;
    for (kind, bars) in form {
        let groles = guitar_roles(style);
        let proles = piano_roles(style);
        let guitar = pick(rng, groles);
        let mut piano = pick(rng, proles);
        if guitar == GuitarRole::Arpeggio && piano == PianoRole::Arpeggio {
            piano = PianoRole::Comp;
        }
        let energy = match kind {
            SectionKind::Intro => 0.7,
            SectionKind::Verse => 0.82,
            SectionKind::Chorus => 1.0,
            SectionKind::Bridge => 0.8,
            SectionKind::Outro => 0.72,
        } + rng.random_range(-0.05..0.05);
        let active = draw_active(rng, kind, &present);
        sections.push(Section { kind, start_bar, bars, energy, active, guitar, piano, variant: rng.random_range(0..6) });
        start_bar += bars;
    }
    // Every present stem plays in at least 40% of the bars (longest resting sections first).
    let total_bars: usize = sections.iter().map(|sec| sec.bars).sum();
    for (s, &is_present) in present.iter().enumerate() {
        if !is_present {
            continue;
        }
        loop {
            let playing: usize = sections.iter().filter(|sec| sec.active[s]).map(|sec| sec.bars).sum();
            if playing * 5 >= total_bars * 2 {
                break;
            }
            match sections.iter_mut().filter(|sec| !sec.active[s]).max_by_key(|sec| sec.bars) {
                Some(sec) => sec.active[s] = true,
                None => break,
            }
        }
    }
    let bars = start_bar;

    // Chords: each section restarts its progression; the final bar resolves to the tonic.
    let half_ticks = meter.bar_ticks() / 2;
    let mut chords = Vec::new();
    for sec in &sections {
        let prog = match sec.kind {
            SectionKind::Chorus => &chorus_prog,
            SectionKind::Bridge => &bridge_prog,
            _ => &verse_prog,
        };
        let hb_per_chord = if meter == Meter::FourFour { halfbars_per_chord } else { halfbars_per_chord.max(2) };
        let sec_start = sec.start_bar as u32 * meter.bar_ticks();
        let sec_end = (sec.start_bar + sec.bars) as u32 * meter.bar_ticks();
        let mut t = sec_start;
        let mut i = 0;
        while t < sec_end {
            let end = (t + hb_per_chord * half_ticks).min(sec_end);
            chords.push(ChordEvent { start: t, end, chord: key.chord(prog[i % prog.len()], sevenths) });
            t = end;
            i += 1;
        }
    }
    let last_bar_start = (bars as u32 - 1) * meter.bar_ticks();
    chords.retain(|c| c.start < last_bar_start);
    if let Some(c) = chords.last_mut() {
        c.end = c.end.min(last_bar_start);
    }
    chords.push(ChordEvent { start: last_bar_start, end: bars as u32 * meter.bar_ticks(), chord: key.chord(0, false) });

    let mut song = Song {
        style,
        meter,
        key,
        beat_bpm,
        quarter_bpm,
        bars,
        sections,
        chords,
        programs,
        present,
        notes: Default::default(),
        swing: if matches!(style, Style::Funk | Style::Reggae | Style::Rock) { rng.random_range(0.0..0.12) } else { 0.0 },
    };
    song.notes = perform(rng, &song);
    song
}

/// Generates all stems' notes bar by bar, applies dynamics and humanised timing.
fn perform<R: Rng>(rng: &mut R, song: &Song) -> [Vec<Note>; 4] {
    let meter = song.meter;
    let bar_ticks = meter.bar_ticks();
    let step_ticks = meter.step_ticks() as f32;
    let ticks_per_ms = (song.quarter_bpm * PPQ as f64 / 60_000.0) as f32;
    // timing jitter (ms) per stem: bass, drums, guitar, piano
    let sigma_ms = [6.0f32, 4.0, 8.0, 7.0];
    let stem_gain: [f32; 4] = std::array::from_fn(|_| rng.random_range(0.85..1.0));
    let mut notes: [Vec<Note>; 4] = Default::default();
    let mut melody_state: i32 = rng.random_range(3..8);
    let total_ticks = song.total_ticks();
    for sec in &song.sections {
        for b in 0..sec.bars {
            let bar = sec.start_bar + b;
            let bar_start = bar as u32 * bar_ticks;
            let bar_end = bar_start + bar_ticks;
            let bar_chords: Vec<BarChord> = song
                .chords
                .iter()
                .filter(|c| c.start < bar_end && c.end > bar_start)
                .map(|c| BarChord {
                    start: (c.start.max(bar_start) - bar_start) / meter.step_ticks(),
                    end: (c.end.min(bar_end) - bar_start) / meter.step_ticks(),
                    chord: c.chord,
                })
                .collect();
            let ctx = BarCtx {
                style: song.style,
                meter,
                key: song.key,
                kind: sec.kind,
                bar_in_section: b,
                section_bars: sec.bars,
                is_last_bar_of_song: bar + 1 == song.bars,
                chords: &bar_chords,
                variant: sec.variant,
            };
            // The kick pattern is computed even when drums rest, so the bass grooves the same way.
            let (drum_hits, kicks) = patterns::drums_bar(&ctx, rng);
            let mut grid: [Vec<GridNote>; 4] = Default::default();
            if sec.active[DRUMS] {
                grid[DRUMS] = drum_hits;
            }
            if sec.active[BASS] {
                grid[BASS] = patterns::bass_bar(&ctx, &kicks, rng);
            }
            if sec.active[GUITAR] {
                grid[GUITAR] = patterns::guitar_bar(&ctx, sec.guitar, rng);
            }
            if sec.active[PIANO] {
                grid[PIANO] = patterns::piano_bar(&ctx, sec.piano, &mut melody_state, rng);
            }
            // Swell into the next section over the last bar.
            let bar_dyn = if b + 1 == sec.bars && sec.bars >= 4 { 1.05 } else { 1.0 };
            for s in 0..4 {
                // One timing offset per grid step, shared by all notes starting in it (keeps strums
                // and chords intact).
                let normal = Normal::new(0.0f32, sigma_ms[s]).expect("valid sigma");
                let jitter: Vec<f32> = (0..=meter.steps_per_bar())
                    .map(|_| normal.sample(rng).clamp(-2.5 * sigma_ms[s], 2.5 * sigma_ms[s]) * ticks_per_ms)
                    .collect();
                for g in &grid[s] {
                    let base_step = g.step.floor() as u32;
                    let swing = if base_step % 2 == 1 && meter.steps_per_beat() == 4 { song.swing * step_ticks } else { 0.0 };
                    let start = bar_start as f32 + g.step * step_ticks + swing + jitter[base_step as usize];
                    let start = start.max(0.0).round() as u32;
                    let len = (g.len * step_ticks).max(step_ticks * 0.25).round() as u32;
                    let end = (start + len).min(total_ticks);
                    if end <= start {
                        continue;
                    }
                    // Velocity: pattern accent × section energy × swell × per-song stem level, mapped
                    // into 0.35..1.0 of the MIDI range (GM SoundFonts attenuate soft notes steeply).
                    let v01 = (g.vel * sec.energy * bar_dyn * stem_gain[s]).clamp(0.0, 1.0);
                    let v = 127.0 * (0.35 + 0.65 * v01) + rng.random_range(-6.0..6.0);
                    notes[s].push(Note { start, end, key: g.key.min(127), vel: v.round().clamp(1.0, 127.0) as u8 });
                }
            }
        }
    }
    for n in notes.iter_mut() {
        fix_overlaps(n);
    }
    notes
}

/// Sorts notes and shortens any note that is still sounding when the same key starts again
/// (MIDI note-offs are matched by key, so overlaps would cut the later note).
fn fix_overlaps(notes: &mut Vec<Note>) {
    notes.sort_by_key(|n| (n.start, n.key));
    notes.dedup_by_key(|n| (n.start, n.key));
    let mut next_start: std::collections::HashMap<u8, u32> = std::collections::HashMap::new();
    for n in notes.iter_mut().rev() {
        if let Some(&ns) = next_start.get(&n.key) {
            if n.end > ns {
                n.end = ns;
            }
        }
        next_start.insert(n.key, n.start);
    }
    notes.retain(|n| n.end > n.start);
}
