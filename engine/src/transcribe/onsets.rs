//! Onsets: where the attack envelope ([`Frames::onset_db`]) rises by enough to be a new note.
//!
//! The envelope is followed with hysteresis: a rise runs from a valley to the next peak, and it
//! only ends when the envelope falls `onset_hysteresis_db` below that peak, so the leftover ripple
//! of a low note and the two-stage swell of an attack count as one rise. A rise of at least
//! `onset_rise_db` is an onset, timed where the power has come halfway from the valley to the
//! peak: under the symmetric window of the envelope that is where a sudden note starts.

use super::pitch::Frames;
use super::tuning::Tuning;

/// A detected onset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Onset {
    /// The frame nearest to the onset time.
    pub frame: usize,
    /// The onset, seconds (between frames).
    pub time_s: f64,
    /// How much the envelope rose, dB.
    pub rise_db: f32,
}

/// Onsets in time order. A rise whose peak is not above `gate` (dB on [`Frames::level_db`]) is
/// not a note.
pub fn detect(fr: &Frames, gate: f32, tuning: &Tuning) -> Vec<Onset> {
    let e = &fr.onset_db;
    let n = e.len();
    let mut out = Vec::new();
    if n == 0 {
        return out;
    }
    let delta = tuning.onset_hysteresis_db;
    let mut valley = 0usize;
    let mut peak = 0usize;
    let mut rising = false;
    for t in 1..n {
        if rising {
            if e[t] > e[peak] {
                peak = t;
            } else if e[t] < e[peak] - delta {
                if let Some(o) = rise(fr, valley, peak, gate, tuning) {
                    out.push(o);
                }
                rising = false;
                valley = t;
            }
        } else if e[t] <= e[valley] {
            valley = t;
        } else if e[t] > e[valley] + delta {
            rising = true;
            peak = t;
        }
    }
    if rising {
        if let Some(o) = rise(fr, valley, peak, gate, tuning) {
            out.push(o);
        }
    }
    // Two onsets closer than the shortest note are one attack: keep the first.
    let min_ioi = tuning.min_ioi_s;
    let mut kept: Vec<Onset> = Vec::with_capacity(out.len());
    for o in out {
        if kept.last().is_none_or(|k| o.time_s - k.time_s >= min_ioi) {
            kept.push(o);
        }
    }
    kept
}

/// The onset of the rise from frame `valley` to frame `peak`, if it is one.
fn rise(fr: &Frames, valley: usize, peak: usize, gate: f32, tuning: &Tuning) -> Option<Onset> {
    let e = &fr.onset_db;
    let rise_db = e[peak] - e[valley];
    let audible = fr.level_db[valley..=peak].iter().any(|&l| l > gate);
    if !audible || rise_db < tuning.restrike_rise_db || (rise_db < tuning.onset_rise_db && !restruck(fr, valley, peak, tuning)) {
        return None;
    }
    let power = |t: usize| 10f64.powf(e[t] as f64 / 10.0);
    let half = 0.5 * (power(valley) + power(peak));
    let mut t = valley + 1;
    while t < peak && power(t) < half {
        t += 1;
    }
    // Between frames t-1 (below half) and t (at or above), linearly in power.
    let (a, b) = (power(t - 1), power(t));
    let frac = if b > a { ((half - a) / (b - a)).clamp(0.0, 1.0) } else { 1.0 };
    let time_s = ((t - 1) as f64 + frac) * fr.hop_s;
    let frame = ((time_s / fr.hop_s).round() as usize).min(fr.len() - 1);
    Some(Onset { frame, time_s, rise_db })
}

/// Whether a small rise is the same string struck again: the sound was periodic just before the
/// valley, and the periodicity breaks around the rise (the new attack restarts the waveform with
/// another phase, which YIN sees as a burst of aperiodicity). A swell of a held note keeps its
/// periodicity.
fn restruck(fr: &Frames, valley: usize, peak: usize, tuning: &Tuning) -> bool {
    let ap = &fr.aperiodicity;
    let before = valley.saturating_sub(8)..valley.saturating_sub(2).max(valley.saturating_sub(8));
    let periodic_before = ap[before].iter().any(|&a| a < tuning.voicing * 0.5);
    let broken = ap[valley.saturating_sub(2)..=(peak + 2).min(ap.len() - 1)].iter().any(|&a| a > tuning.restrike_aperiodicity);
    periodic_before && broken
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transcribe::pitch::FLOOR_DB;

    fn frames(onset_db: &[f32]) -> Frames {
        Frames {
            hop_s: 0.01,
            f0_hz: vec![55.0; onset_db.len()],
            aperiodicity: vec![0.0; onset_db.len()],
            level_db: onset_db.to_vec(),
            onset_db: onset_db.to_vec(),
        }
    }

    #[test]
    fn a_step_from_silence_is_timed_at_half_power() {
        // silence, then a 20-frame ramp of power from 0 to 1 (what a window does to a step), then
        // a level with 2 dB of ripple
        let mut e = vec![FLOOR_DB; 50];
        for k in 1..=20 {
            e.push(10.0 * (k as f32 / 20.0).log10());
        }
        for k in 0..60 {
            e.push(if k % 3 == 0 { -2.0 } else { 0.0 });
        }
        let on = detect(&frames(&e), -60.0, &Tuning::default());
        assert_eq!(on.len(), 1, "{on:?}");
        // half power at k = 10, frame 59: 0.59 s
        assert!((on[0].time_s - 0.59).abs() < 0.011, "{on:?}");
    }

    #[test]
    fn a_restrike_is_an_onset_and_a_small_swell_is_not() {
        let mut e = vec![FLOOR_DB; 10];
        e.extend((0..40).map(|k| -10.0 - 0.3 * k as f32)); // a note decaying to -22 dB
        e.extend([-16.0, -10.0]); // struck again: 12 dB up
        e.extend((0..40).map(|k| -10.0 - 0.3 * k as f32));
        e.extend([-20.0, -18.0, -20.0, -22.0]); // a 4 dB swell
        e.extend((0..20).map(|k| -22.0 - k as f32));
        let on = detect(&frames(&e), -60.0, &Tuning::default());
        let times: Vec<f64> = on.iter().map(|o| o.time_s).collect();
        assert_eq!(on.len(), 2, "{times:?}");
        assert!((times[1] - 0.505).abs() < 0.011, "{times:?}");
        // below the silence gate nothing counts
        assert!(detect(&frames(&e), 10.0, &Tuning::default()).is_empty());
    }
}
