//! The bass transcriber on songs rendered by the project's own mini-Slakh synthesiser, scored
//! against the MIDI they were rendered from.
//! Needs the TimGM6mb SoundFont (`apt-get install timgm6mb-soundfont`); skipped with a note if absent.

use msdm::audio::read_audio;
use msdm::data::synth::SynthOptions;
use msdm::transcribe::evaluate::{evaluate_split, reference_bass};
use msdm::transcribe::{read_midi, score, transcribe, transcribe_to_midi, Tolerance, TranscribeOptions};

mod common;
use common::soundfont;

#[test]
fn synthesised_bass_lines_come_back_as_their_midi() {
    let Some(sf) = soundfont() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // Four 14 s songs of the validation split (seeds 1,000,000+): different styles, tempi and
    // bass programs.
    let mut opts = SynthOptions::new(tmp.path(), &sf, "validation", 4);
    opts.seconds = (14.0, 14.0);
    opts.threads = 2;
    msdm::data::synthesize(&opts, &|_, _| {}).unwrap();
    let split = tmp.path().join("validation");
    let report = evaluate_split(&split, None, &TranscribeOptions::default(), &Tolerance::default(), &mut |_, _| {}).unwrap();
    assert!(report.songs.len() + report.skipped.len() == 4, "{report:?}");
    assert!(report.songs.len() >= 3, "most songs have a bass part: {report:?}");
    let (pooled, with_offsets) = report.pooled();
    assert!(pooled.reference > 40, "{pooled:?}");
    assert!(pooled.f1() >= 0.85, "note F1 {:.3} on synthesised bass ({pooled:?})", pooled.f1());
    assert!(with_offsets.f1() >= 0.6, "note F1 with offsets {:.3}", with_offsets.f1());
    assert!(pooled.mean_onset_error_s().abs() < 0.025, "onset bias {}", pooled.mean_onset_error_s());
    assert!(report.excerpt_times().is_some(), "14 s songs give 12 s excerpts");

    // The file written for a song reads back as the same notes, and matches the song's MIDI.
    let song = &report.songs[0];
    let dir = split.join(&song.track);
    let audio = read_audio(&dir.join("bass.wav")).unwrap();
    let notes = transcribe(&audio, &TranscribeOptions::default()).unwrap();
    let out = tmp.path().join("bass.mid");
    let summary = transcribe_to_midi(&audio, &TranscribeOptions::default(), &out).unwrap();
    assert_eq!(summary.notes, notes.len());
    let back = &read_midi(&out).unwrap()[0].notes;
    assert_eq!(back.len(), notes.len());
    let reference = reference_bass(&dir.join("song.mid")).unwrap();
    let direct = score(&reference, &notes, &Tolerance::default());
    let from_file = score(&reference, back, &Tolerance::default());
    assert_eq!(direct.matched, from_file.matched, "writing the file loses no match");
    assert_eq!(direct.matched, song.notes.matched);

    // Quantised at the song's own tempo, the notes still match (the synthesiser humanises timing
    // by a few milliseconds, well under half a sixteenth).
    let meta: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("meta.json")).unwrap()).unwrap();
    let bpm = meta["quarter_bpm"].as_f64().unwrap();
    let steps = match meta["meter"].as_str().unwrap() {
        "12/8" => 2,
        _ => 4,
    };
    let q = TranscribeOptions { bpm: Some(bpm), grid: steps, ..Default::default() };
    let quantised = transcribe(&audio, &q).unwrap();
    let s = score(&reference, &quantised, &Tolerance::default());
    assert!(s.f1() >= direct.f1() - 0.1, "quantised F1 {} vs {}", s.f1(), direct.f1());
}
