//! Rendering: one `rustysynth` synthesizer per stem (so stems stay separate), 22,050 Hz, mono.

use super::arrange::Song;
use super::midi::{note_events, CHANNELS};
use anyhow::{bail, Context, Result};
use rustysynth::{SoundFont, Synthesizer, SynthesizerSettings};
use std::path::Path;
use std::sync::Arc;

/// Loads a SoundFont 2 file.
pub fn load_soundfont(path: &Path) -> Result<Arc<SoundFont>> {
    let mut f = std::fs::File::open(path).with_context(|| {
        format!(
            "opening SoundFont {} (install a GM SoundFont, e.g. `apt-get install fluid-soundfont-gm` \
             → /usr/share/sounds/sf2/FluidR3_GM.sf2, and pass it with --soundfont)",
            path.display()
        )
    })?;
    let sf = SoundFont::new(&mut std::io::BufReader::new(&mut f))
        .map_err(|e| anyhow::anyhow!("{} is not a readable SoundFont 2 file: {e:?}", path.display()))?;
    Ok(Arc::new(sf))
}

/// The drum kits (percussion bank 128 patch numbers) the SoundFont offers, sorted.
pub fn drum_kits(font: &SoundFont) -> Vec<u8> {
    let mut kits: Vec<u8> = font
        .get_presets()
        .iter()
        .filter(|p| p.get_bank_number() == 128 && (0..128).contains(&p.get_patch_number()))
        .map(|p| p.get_patch_number() as u8)
        .collect();
    kits.sort_unstable();
    kits.dedup();
    kits
}

/// The SoundFont's name for a preset, if it has one (bank 0 melodic, bank 128 drum kits).
pub fn preset_name(font: &SoundFont, bank: i32, patch: u8) -> Option<String> {
    font.get_presets()
        .iter()
        .find(|p| p.get_bank_number() == bank && p.get_patch_number() == patch as i32)
        .map(|p| p.get_name().trim().to_string())
}

/// Renders one stem of `song` to `samples` mono samples at `sample_rate` (reverb/chorus off,
/// as the stems are meant to be dry and separable).
pub fn render_stem(font: &Arc<SoundFont>, song: &Song, stem: usize, sample_rate: u32, samples: usize) -> Result<Vec<f32>> {
    let mut settings = SynthesizerSettings::new(sample_rate as i32);
    settings.enable_reverb_and_chorus = false;
    settings.maximum_polyphony = 96;
    let mut synth = Synthesizer::new(font, &settings).map_err(|e| anyhow::anyhow!("creating synthesizer: {e:?}"))?;
    let ch = CHANNELS[stem] as i32;
    synth.process_midi_message(ch, 0xC0, song.programs.get(stem) as i32, 0);
    let sec_per_tick = song.seconds_per_tick();
    let mut out = vec![0f32; samples];
    let mut right = vec![0f32; samples];
    let mut cursor = 0usize;
    for e in note_events(&song.notes[stem]) {
        let at = ((e.tick as f64 * sec_per_tick * sample_rate as f64).round() as usize).min(samples);
        if at > cursor {
            synth.render(&mut out[cursor..at], &mut right[cursor..at]);
            cursor = at;
        }
        if e.on {
            synth.note_on(ch, e.key as i32, e.vel as i32);
        } else {
            synth.note_off(ch, e.key as i32);
        }
    }
    if cursor < samples {
        synth.render(&mut out[cursor..], &mut right[cursor..]);
    }
    for (l, r) in out.iter_mut().zip(&right) {
        *l = 0.5 * (*l + *r);
    }
    if out.iter().any(|x| !x.is_finite()) {
        bail!("the synthesizer produced non-finite samples");
    }
    Ok(out)
}
