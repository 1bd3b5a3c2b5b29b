//! Per-style, per-stem patterns for one bar: drums (GM percussion keys), bass locked to the kick and
//! the chord roots, guitar and piano parts in the shared mid register.
//!
//! Everything here works on the bar's step grid (sixteenths in 4/4 and 3/4, eighths in 12/8) and
//! returns exact (un-humanised) notes; `arrange` humanises them afterwards.

use super::form::{Meter, SectionKind, Style};
use super::theory::{Chord, Key};
use rand::Rng;

pub use super::form::gm;

/// Guitar parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuitarRole {
    PowerChords,
    Strum,
    Arpeggio,
    Skank,
    FunkScratch,
    BossaComp,
    Rest,
}

/// Piano parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PianoRole {
    Comp,
    Arpeggio,
    Melody,
    Rest,
}

/// A note on the bar grid: start step (fractional allowed), length in steps, key, velocity in 0..1.
#[derive(Clone, Copy, Debug)]
pub struct GridNote {
    pub step: f32,
    pub len: f32,
    pub key: u8,
    pub vel: f32,
}

/// A chord slot inside the bar, in steps.
#[derive(Clone, Copy, Debug)]
pub struct BarChord {
    pub start: u32,
    pub end: u32,
    pub chord: Chord,
}

/// Everything a pattern needs to know about the bar it fills.
pub struct BarCtx<'a> {
    pub style: Style,
    pub meter: Meter,
    pub key: Key,
    pub kind: SectionKind,
    pub bar_in_section: usize,
    pub section_bars: usize,
    pub is_last_bar_of_song: bool,
    pub chords: &'a [BarChord],
    /// Per-section groove variant (keeps a groove consistent within a section).
    pub variant: u32,
}

impl BarCtx<'_> {
    fn spb(&self) -> u32 {
        self.meter.steps_per_bar()
    }
    fn spbeat(&self) -> u32 {
        self.meter.steps_per_beat()
    }
    fn chord_at(&self, step: u32) -> Chord {
        self.chords
            .iter()
            .find(|c| step >= c.start && step < c.end)
            .unwrap_or(&self.chords[self.chords.len() - 1])
            .chord
    }
    fn is_fill_bar(&self) -> bool {
        self.bar_in_section + 1 == self.section_bars && self.section_bars >= 4 && !self.is_last_bar_of_song
    }
}

/// Step-level accent: downbeat > beats > off-beats.
fn accent(c: &BarCtx, step: u32) -> f32 {
    if step == 0 {
        1.0
    } else if step.is_multiple_of(c.spbeat()) {
        0.9
    } else {
        0.78
    }
}

fn hit(out: &mut Vec<GridNote>, step: u32, key: u8, vel: f32) {
    out.push(GridNote { step: step as f32, len: 1.0, key, vel });
}

/// Kick steps, snare steps, snare key, hat steps, hat key, extra (step, key, velocity) hits.
type DrumParts = (Vec<u32>, Vec<u32>, u8, Vec<u32>, u8, Vec<(u32, u8, f32)>);

/// One bar of drums. Returns the hits and the kick steps (for the bass to lock to).
pub fn drums_bar<R: Rng>(c: &BarCtx, rng: &mut R) -> (Vec<GridNote>, Vec<u32>) {
    use gm::*;
    let spb = c.spb();
    let v = c.variant;
    let loud = c.kind == SectionKind::Chorus;
    let (kick, snare, snare_key, hats, hat_key, extra): DrumParts =
        match (c.style, c.meter) {
            (Style::Rock, _) => {
                let kick = match v % 3 {
                    0 => vec![0, 8],
                    1 => vec![0, 8, 10],
                    _ => vec![0, 6, 8],
                };
                let hat = if loud && v.is_multiple_of(2) { RIDE } else { CLOSED_HAT };
                (kick, vec![4, 12], SNARE, (0..16).step_by(2).collect(), hat, vec![])
            }
            (Style::Funk, _) => {
                let kick = if v.is_multiple_of(2) { vec![0, 3, 6, 10] } else { vec![0, 7, 10, 13] };
                let ghosts = vec![(7, SNARE, 0.3), (9, SNARE, 0.28), (15, SNARE, 0.3), (14, OPEN_HAT, 0.55)];
                (kick, vec![4, 12], SNARE, (0..16).collect(), CLOSED_HAT, ghosts)
            }
            (Style::Disco, _) => {
                let mut extra: Vec<(u32, u8, f32)> = [2, 6, 10, 14].iter().map(|&s| (s, OPEN_HAT, 0.7)).collect();
                if loud {
                    extra.push((4, CLAP, 0.8));
                    extra.push((12, CLAP, 0.8));
                }
                (vec![0, 4, 8, 12], vec![4, 12], SNARE, vec![0, 4, 8, 12, 1, 3, 5, 7, 9, 11, 13, 15], PEDAL_HAT, extra)
            }
            (Style::Reggae, _) => {
                let kick = if v.is_multiple_of(2) { vec![8] } else { vec![0, 8] };
                let extra = vec![(8, SIDE_STICK, 0.9)];
                (kick, vec![], SNARE, (0..16).step_by(2).collect(), CLOSED_HAT, extra)
            }
            (Style::Bossa, _) => {
                let clave: Vec<(u32, u8, f32)> = [0u32, 3, 6, 10, 13].iter().map(|&s| (s, SIDE_STICK, 0.75)).collect();
                let hat = if v.is_multiple_of(2) { SHAKER } else { CLOSED_HAT };
                (vec![0, 3, 4, 7, 8, 11, 12, 15], vec![], SNARE, (0..16).collect(), hat, clave)
            }
            (Style::Ballad, Meter::TwelveEight) | (Style::Shuffle, Meter::TwelveEight) => {
                let shuffle = c.style == Style::Shuffle;
                let kick = if shuffle { vec![0, 5, 6] } else { vec![0, 8] };
                let snare = if shuffle { vec![3, 9] } else { vec![6] };
                let hats = if shuffle { vec![0, 2, 3, 5, 6, 8, 9, 11] } else { (0..12).collect() };
                let hat = if loud || v % 2 == 1 { RIDE } else { CLOSED_HAT };
                (kick, snare, SNARE, hats, hat, vec![])
            }
            (Style::Ballad, _) | (Style::Shuffle, _) => {
                let snare_key = if c.kind == SectionKind::Verse && v.is_multiple_of(2) { SIDE_STICK } else { SNARE };
                let kick = if v.is_multiple_of(2) { vec![0, 10] } else { vec![0, 6, 8] };
                (kick, vec![4, 12], snare_key, (0..16).step_by(2).collect(), CLOSED_HAT, vec![])
            }
            (Style::Waltz, _) => {
                let snare_key = if v.is_multiple_of(2) { SIDE_STICK } else { SNARE };
                (vec![0], vec![4, 8], snare_key, (0..spb).step_by(2).collect(), CLOSED_HAT, vec![])
            }
        };
    let mut out = Vec::new();
    let fill = c.is_fill_bar() && rng.random_bool(0.6);
    let fill_from = if fill { spb / 2 } else { spb };
    for &s in kick.iter().filter(|&&s| s < fill_from) {
        hit(&mut out, s, KICK, 0.95 * accent(c, s).max(0.9));
    }
    for &s in snare.iter().filter(|&&s| s < fill_from) {
        hit(&mut out, s, snare_key, 0.9);
    }
    // Intros thin out: hats only on the first bars sometimes.
    for &s in hats.iter().filter(|&&s| s < fill_from) {
        let on_beat = s.is_multiple_of(c.spbeat());
        let vel = if on_beat { 0.7 } else { 0.5 };
        hit(&mut out, s, hat_key, vel);
    }
    for &(s, k, vel) in extra.iter().filter(|e| e.0 < fill_from) {
        hit(&mut out, s, k, vel);
    }
    if c.bar_in_section == 0 && (c.kind == SectionKind::Chorus || rng.random_bool(0.5)) {
        hit(&mut out, 0, CRASH, 0.85);
    }
    if fill {
        let toms = [SNARE, HIGH_TOM, MID_TOM, LOW_TOM, FLOOR_TOM];
        let step = if c.meter == Meter::TwelveEight { 1 } else { 1 + (c.variant % 2) };
        let n = ((spb - fill_from).div_ceil(step)).max(1) as usize;
        let mut s = fill_from;
        let mut i = 0usize;
        while s < spb {
            let k = toms[(i * toms.len() / n).min(toms.len() - 1)];
            hit(&mut out, s, k, 0.6 + 0.35 * (s - fill_from) as f32 / (spb - fill_from) as f32);
            s += step;
            i += 1;
        }
        hit(&mut out, fill_from, KICK, 0.9);
    }
    if c.is_last_bar_of_song {
        out.retain(|n| n.step < c.spbeat() as f32);
        hit(&mut out, 0, CRASH, 0.95);
    }
    let kicks: Vec<u32> = out.iter().filter(|n| n.key == KICK).map(|n| n.step as u32).collect();
    (out, kicks)
}

/// MIDI note for pitch class `pc` in the bass register (E1..D#2, i.e. 28..39).
fn bass_note(pc: u8) -> u8 {
    Chord::note_at_or_above(pc, 28)
}

/// One bar of bass: chord roots on every chord change, locked to the kick, style-specific fills.
pub fn bass_bar<R: Rng>(c: &BarCtx, kicks: &[u32], rng: &mut R) -> Vec<GridNote> {
    let spb = c.spb();
    let spbeat = c.spbeat();
    let mut steps: Vec<(u32, u8)> = Vec::new(); // (step, interval kind: 0 root, 1 fifth, 2 octave, 3 other)
    let v = c.variant;
    match c.style {
        Style::Rock => {
            if v.is_multiple_of(2) {
                steps.extend((0..spb).step_by(2).map(|s| (s, 0)));
            } else {
                steps.extend(kicks.iter().map(|&s| (s, 0)));
            }
        }
        Style::Funk => {
            steps.extend(kicks.iter().map(|&s| (s, 0)));
            for s in [2u32, 7, 11, 14] {
                if rng.random_bool(0.5) {
                    steps.push((s, if s % 4 == 3 { 2 } else { 3 }));
                }
            }
        }
        Style::Disco => steps.extend((0..spb).step_by(2).map(|s| (s, if (s / 2) % 2 == 1 { 2 } else { 0 }))),
        Style::Reggae => steps.extend([(0, 0), (3, 0), (6, 1), (8, 0), (10, 1)]),
        Style::Bossa => steps.extend([(0, 0), (6, 1), (8, 1), (14, 0)]),
        Style::Ballad => {
            steps.push((0, 0));
            steps.push((spb / 2, if v.is_multiple_of(2) { 1 } else { 0 }));
        }
        Style::Shuffle => {
            for b in 0..c.meter.beats() {
                steps.push((b * spbeat, [0, 3, 1, 4][b as usize % 4]));
            }
        }
        Style::Waltz => {
            steps.push((0, 0));
            if v % 2 == 1 {
                steps.push((8, 1));
            }
        }
    }
    if c.is_last_bar_of_song {
        steps.retain(|s| s.0 == 0);
    }
    // Every chord change gets its root.
    for ch in c.chords {
        if !steps.iter().any(|s| s.0 == ch.start) {
            steps.push((ch.start, 0));
        }
    }
    steps.sort_by_key(|s| s.0);
    steps.dedup_by_key(|s| s.0);
    let mut out = Vec::new();
    for (i, &(s, kind)) in steps.iter().enumerate() {
        let chord = c.chord_at(s);
        let at_change = c.chords.iter().any(|ch| ch.start == s);
        let root = bass_note(chord.root);
        let key = if at_change {
            root
        } else {
            match kind {
                1 => bass_note(chord.fifth()),
                2 => root + 12,
                3 => {
                    let pcs = chord.pitch_classes();
                    bass_note(pcs[rng.random_range(0..pcs.len())])
                }
                4 => bass_note((chord.root + if chord.quality.intervals()[1] == 4 { 9 } else { 10 }) % 12),
                _ => root,
            }
        };
        let next = steps.get(i + 1).map(|n| n.0).unwrap_or(spb);
        let gap = (next - s) as f32;
        let len = match c.style {
            Style::Funk | Style::Reggae | Style::Disco => (gap * 0.6).min(2.0),
            _ => gap * 0.92,
        };
        let len = if c.is_last_bar_of_song { spb as f32 } else { len };
        out.push(GridNote { step: s as f32, len, key, vel: 0.85 * accent(c, s).max(0.85) });
    }
    out
}

/// Strum a voicing: downstrokes low→high, upstrokes high→low, a few ms apart (in steps).
fn strum(out: &mut Vec<GridNote>, step: f32, len: f32, voicing: &[u8], vel: f32, up: bool, spread: f32) {
    let n = voicing.len();
    for i in 0..n {
        let idx = if up { n - 1 - i } else { i };
        out.push(GridNote { step: step + spread * i as f32, len, key: voicing[idx], vel: vel * if up { 0.8 } else { 1.0 } });
    }
}

/// One bar of guitar for the given role.
pub fn guitar_bar<R: Rng>(c: &BarCtx, role: GuitarRole, rng: &mut R) -> Vec<GridNote> {
    let spb = c.spb();
    let spbeat = c.spbeat();
    let mut out = Vec::new();
    // spread of a strum: ~1/12 of a step per string
    let spread = if c.meter == Meter::TwelveEight { 0.04 } else { 0.08 };
    let last = c.is_last_bar_of_song;
    match role {
        GuitarRole::Rest => {}
        _ if last => {
            let ch = c.chord_at(0);
            strum(&mut out, 0.0, spb as f32, &ch.voicing(52, 0, 5), 0.8, false, spread);
        }
        GuitarRole::PowerChords => {
            let every = if c.meter == Meter::TwelveEight { 1 } else { 2 };
            for s in (0..spb).step_by(every) {
                let ch = c.chord_at(s);
                let r = Chord::note_at_or_above(ch.root, 40);
                let v = if s.is_multiple_of(spbeat) { 0.85 } else { 0.7 };
                strum(&mut out, s as f32, every as f32 * 0.7, &[r, r + 7, r + 12], v, false, spread * 0.5);
            }
        }
        GuitarRole::Strum => {
            let pattern: Vec<(u32, bool)> = match c.meter {
                Meter::FourFour => vec![(0, false), (4, false), (6, true), (10, true), (12, false), (14, true)],
                Meter::ThreeFour => vec![(0, false), (4, false), (6, true), (8, false), (10, true)],
                Meter::TwelveEight => vec![(0, false), (2, true), (3, false), (5, true), (6, false), (8, true), (9, false), (11, true)],
            };
            for (i, &(s, up)) in pattern.iter().enumerate() {
                let ch = c.chord_at(s);
                let next = pattern.get(i + 1).map(|p| p.0).unwrap_or(spb);
                let voicing = ch.voicing(50 + (c.variant % 3) as u8 * 2, 0, 5);
                strum(&mut out, s as f32, (next - s) as f32, &voicing, 0.75, up, spread);
            }
        }
        GuitarRole::Arpeggio => {
            let every = if c.meter == Meter::TwelveEight { 1 } else { 2 };
            let order = [0usize, 2, 1, 3, 2, 1];
            for (i, s) in (0..spb).step_by(every).enumerate() {
                let ch = c.chord_at(s);
                let v = ch.voicing(48, 0, 4);
                let key = v[order[i % order.len()] % v.len()];
                out.push(GridNote { step: s as f32, len: every as f32 * 2.5, key, vel: 0.65 + 0.1 * accent(c, s) });
            }
        }
        GuitarRole::Skank => {
            let steps: Vec<u32> = if c.style == Style::Reggae && c.variant.is_multiple_of(2) {
                vec![4, 12]
            } else {
                (0..c.meter.beats()).map(|b| b * spbeat + spbeat / 2).collect()
            };
            for s in steps {
                let ch = c.chord_at(s);
                strum(&mut out, s as f32, 0.8, &ch.voicing(60, 1, 3), 0.8, false, spread * 0.3);
            }
        }
        GuitarRole::FunkScratch => {
            for s in 0..spb {
                let on = s % 4 == 2 || s == 0 || rng.random_bool(0.35);
                if on {
                    let ch = c.chord_at(s);
                    let v = if s.is_multiple_of(4) { 0.8 } else { 0.6 };
                    strum(&mut out, s as f32, 0.5, &ch.voicing(62, 1, 3), v, s % 2 == 1, spread * 0.3);
                }
            }
        }
        GuitarRole::BossaComp => {
            for s in [0u32, 3, 6, 10, 13].into_iter().filter(|&s| s < spb) {
                let ch = c.chord_at(s);
                strum(&mut out, s as f32, 2.0, &ch.voicing(55, 1, 4), 0.6, false, spread * 0.4);
            }
        }
    }
    out
}

/// One bar of piano for the given role. `melody_state` carries the melody's last scale index.
pub fn piano_bar<R: Rng>(c: &BarCtx, role: PianoRole, melody_state: &mut i32, rng: &mut R) -> Vec<GridNote> {
    let spb = c.spb();
    let spbeat = c.spbeat();
    let mut out = Vec::new();
    let last = c.is_last_bar_of_song;
    let chord_notes = |out: &mut Vec<GridNote>, s: u32, len: f32, low: u8, inv: usize, vel: f32| {
        let ch = c.chord_at(s);
        for k in ch.voicing(low, inv, 4) {
            out.push(GridNote { step: s as f32, len, key: k, vel });
        }
    };
    match role {
        PianoRole::Rest => {}
        _ if last => {
            chord_notes(&mut out, 0, spb as f32, 55, 0, 0.75);
            let r = Chord::note_at_or_above(c.chord_at(0).root, 36);
            out.push(GridNote { step: 0.0, len: spb as f32, key: r, vel: 0.75 });
        }
        PianoRole::Comp => {
            let inv = (c.variant % 3) as usize;
            let rhythm: Vec<u32> = match (c.style, c.meter) {
                (Style::Disco, _) => vec![2, 6, 10, 14],
                (Style::Reggae, _) => vec![2, 4, 6, 10, 12, 14],
                (Style::Funk, _) => vec![0, 3, 6, 10, 12],
                (Style::Bossa, _) => vec![0, 3, 6, 10, 13],
                (Style::Waltz, _) | (_, Meter::ThreeFour) => vec![4, 8],
                (_, Meter::TwelveEight) => vec![0, 3, 6, 9],
                (Style::Ballad, _) => vec![0, 8],
                _ => {
                    if c.variant.is_multiple_of(2) {
                        vec![0, 6, 8, 14]
                    } else {
                        vec![0, 4, 8, 12]
                    }
                }
            };
            let short = matches!(c.style, Style::Disco | Style::Reggae | Style::Funk);
            for (i, &s) in rhythm.iter().enumerate() {
                let next = rhythm.get(i + 1).copied().unwrap_or(spb);
                let len = if short { 1.0 } else { (next - s) as f32 * 0.95 };
                chord_notes(&mut out, s, len, 53, inv, 0.55 + 0.15 * accent(c, s));
            }
            // Left hand: root on the downbeat (oom-pah in waltz).
            if matches!(c.style, Style::Waltz | Style::Ballad) || c.variant.is_multiple_of(3) {
                for ch in c.chords {
                    let r = Chord::note_at_or_above(ch.chord.root, 36);
                    out.push(GridNote { step: ch.start as f32, len: (ch.end - ch.start) as f32 * 0.9, key: r, vel: 0.7 });
                }
            }
        }
        PianoRole::Arpeggio => {
            let every = if c.meter == Meter::TwelveEight { 1 } else { 2 };
            let order = [0usize, 1, 2, 3, 4, 3, 2, 1];
            for (i, s) in (0..spb).step_by(every).enumerate() {
                let ch = c.chord_at(s);
                let mut v = vec![Chord::note_at_or_above(ch.root, 43)];
                v.extend(ch.voicing(v[0] + 7, 1, 4));
                let key = v[order[i % order.len()] % v.len()];
                out.push(GridNote { step: s as f32, len: every as f32 * 1.8, key, vel: 0.6 + 0.1 * accent(c, s) });
            }
        }
        PianoRole::Melody => {
            // Left hand: sustained chord; right hand: a stepwise melody over the scale, chord tones on beats.
            for ch in c.chords {
                for k in ch.chord.voicing(48, 0, 3) {
                    out.push(GridNote { step: ch.start as f32, len: (ch.end - ch.start) as f32 * 0.95, key: k, vel: 0.5 });
                }
            }
            let scale = c.key.pitch_classes();
            let mut s = 0u32;
            while s < spb {
                let dur = if c.meter == Meter::TwelveEight {
                    [1u32, 2, 3][rng.random_range(0..3)]
                } else {
                    [2u32, 2, 4, 4, 6, 8][rng.random_range(0..6)]
                };
                let dur = dur.min(spb - s);
                if rng.random_bool(0.15) && s != 0 {
                    s += dur;
                    continue;
                }
                let mut idx = *melody_state + rng.random_range(-2..=2);
                idx = idx.clamp(0, 13); // two octaves of scale indices
                if s.is_multiple_of(spbeat) {
                    // snap to the nearest chord tone
                    let ch = c.chord_at(s);
                    let pcs = ch.pitch_classes();
                    for d in 0..4 {
                        let up = (idx + d).min(13);
                        let dn = (idx - d).max(0);
                        if pcs.contains(&scale[up as usize % 7]) {
                            idx = up;
                            break;
                        }
                        if pcs.contains(&scale[dn as usize % 7]) {
                            idx = dn;
                            break;
                        }
                    }
                }
                *melody_state = idx;
                let base = Chord::note_at_or_above(c.key.tonic, 64);
                let key = base + (idx / 7) as u8 * 12 + (scale[idx as usize % 7] + 12 - c.key.tonic) % 12;
                out.push(GridNote { step: s as f32, len: dur as f32 * 0.9, key, vel: 0.7 + 0.1 * accent(c, s) });
                s += dur;
            }
        }
    }
    out
}
