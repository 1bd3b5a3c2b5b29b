//! The transcriber's thresholds, in one place so they can be tuned from a file
//! (`msdm eval --midi --tuning FILE`).

use serde::{Deserialize, Serialize};

/// The segmenter's thresholds. The defaults were tuned on the mini-Slakh validation split
/// (docs/midi.md); `msdm eval --midi --tuning FILE` tries others.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    /// YIN's absolute threshold (see [`super::pitch::YinParams::threshold`]).
    pub yin_threshold: f32,
    /// See [`super::pitch::YinParams::octave_margin`].
    pub yin_octave_margin: f32,
    /// Highest aperiodicity of a frame counted as pitched.
    pub voicing: f32,
    /// Frames more than this many dB below the loudest frame are silence.
    pub gate_db: f32,
    /// Frames below this absolute level (dBFS) are silence, however quiet the whole file is.
    pub floor_dbfs: f32,
    /// Rise of the attack envelope that marks an onset, dB.
    pub onset_rise_db: f32,
    /// A smaller rise is an onset too when the periodicity breaks there (a restruck note), dB.
    pub restrike_rise_db: f32,
    /// Aperiodicity that counts as a break of periodicity for `restrike_rise_db`.
    pub restrike_aperiodicity: f32,
    /// Fall that ends a rise of the attack envelope, dB (see [`super::onsets`]).
    pub onset_hysteresis_db: f32,
    /// Shortest time between two onsets, seconds.
    pub min_ioi_s: f64,
    /// Pitch change (semitones from the note's median) that starts a new note when it lasts
    /// `pitch_confirm_s`.
    pub pitch_change: f32,
    pub pitch_confirm_s: f64,
    /// Unpitched time that ends a note, seconds.
    pub max_gap_s: f64,
    /// Shortest note kept, seconds of pitched frames.
    pub min_note_s: f64,
    /// Frames skipped at a note's start when taking its median pitch, seconds.
    pub attack_skip_s: f64,
    /// How long after an onset the pitch may take to settle: a pitch change sooner than this
    /// is the attack (YIN often reads an octave off there), not a new note, seconds.
    pub pitch_settle_s: f64,
    /// How long an onset may wait for pitched sound before it is dropped, seconds (a slapped or
    /// picked attack can be unpitched for tens of milliseconds).
    pub max_unpitched_attack_s: f64,
    /// Subtracted from detected onset times: how late the envelope's half-power point comes after
    /// the true start of a note (the instrument's own attack), seconds.
    pub onset_latency_s: f64,
    /// Fall of the level within 50 ms that marks a note's release, dB.
    pub offset_drop_db: f32,
    /// Subtracted from detected release times, seconds.
    pub offset_latency_s: f64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            yin_threshold: 0.4,
            yin_octave_margin: 0.2,
            voicing: 0.35,
            gate_db: 40.0,
            floor_dbfs: -70.0,
            onset_rise_db: 6.0,
            restrike_rise_db: 3.0,
            restrike_aperiodicity: 0.3,
            onset_hysteresis_db: 3.0,
            min_ioi_s: 0.04,
            pitch_change: 0.7,
            pitch_confirm_s: 0.025,
            max_gap_s: 0.03,
            min_note_s: 0.03,
            attack_skip_s: 0.02,
            pitch_settle_s: 0.1,
            max_unpitched_attack_s: 0.15,
            onset_latency_s: 0.02,
            offset_drop_db: 10.0,
            offset_latency_s: 0.0,
        }
    }
}
