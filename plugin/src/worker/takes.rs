//! Takes: which stems play, loading a take from the cache, restoring a saved session, and the
//! play set the audio thread gets (stems resampled to the host rate).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Result;

use super::waveforms::{peaks, residual_rms, PEAK_COLUMNS};
use super::{Rendered, Worker};
use crate::params::JobKind;
use crate::messages::PlaySet;
use crate::render::{self, Clip};
use crate::session::Take;
use crate::shared::{Peaks, Waveforms};

impl Worker {
    /// Publishes the current stems and updates waveforms and residual.
    pub(super) fn after_stems_changed(&mut self) {
        self.publish();
        let (waves_stems, residual) = match &self.rendered {
            Some(r) => {
                let w: [Peaks; 4] = std::array::from_fn(|k| {
                    peaks(&[&r.stems[k][0], &r.stems[k][1]], PEAK_COLUMNS)
                });
                let residual = match (&self.clip, r.take.spec.job) {
                    (Some(c), JobKind::Separate) if r.take.clip.as_deref() == Some(c.info.hash.as_str()) => {
                        Some((r.take.residual_max, residual_rms(&c.audio[..2], &r.stems)))
                    }
                    _ => None,
                };
                (Some(w), residual)
            }
            None => (None, None),
        };
        let mut st = self.shared.status();
        let mut waves = (*st.waves).clone();
        waves.stems = waves_stems;
        st.waves = Arc::new(waves);
        st.residual = residual;
    }

    pub(super) fn select_take(&mut self, i: usize) {
        let Some(take) = self.shared.params.session.read(|s| s.takes.get(i).cloned()) else { return };
        match self.load_take(&take) {
            Ok(r) => {
                self.shared.params.session.update(|s| {
                    s.current = Some(i);
                    s.seed = take.seed;
                });
                self.rendered = Some(r);
                self.after_stems_changed();
                self.shared.status().warning = None;
                self.shared.set_message(format!("Playing take {} (seed {}).", i + 1, take.seed));
                self.set_settled_phase();
            }
            Err(e) => {
                self.shared.status().warning = Some(missing_text(&take, &e));
                self.shared.request_repaint();
            }
        }
    }

    fn load_take(&self, take: &Take) -> Result<Rendered> {
        let cache = self.cache.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (rate, stems) = cache.get_stems(&take.stems_key)?;
        // The take comes from saved state: its length must be the stems' own (a damaged state
        // must not make the stems be padded to an arbitrary size).
        let fits = |s: &Vec<Vec<f32>>| (1..=2).contains(&s.len()) && s.iter().all(|c| c.len() == take.len);
        if rate != take.rate || stems.len() != 4 || !stems.iter().all(fits) {
            anyhow::bail!("cached stems do not match the take");
        }
        let stems = stems.into_iter().map(|s| render::fit_stereo(s, take.len)).collect();
        Ok(Rendered { take: take.clone(), stems })
    }

    /// The host loaded a state: drop what we had and restore the session's take from the cache.
    pub(super) fn restore(&mut self) {
        self.stop_job();
        self.discard_chunks = false;
        self.assembly.clear();
        self.clip = None;
        self.rendered = None;
        let session = self.shared.params.session.get();
        self.shared.capture.armed.store(session.clip.is_none() && session.takes.is_empty(), Ordering::Release);
        let mut warnings = Vec::new();
        if let Some(info) = &session.clip {
            match self.cache.as_ref().map_err(|e| anyhow::anyhow!("{e}")).and_then(|c| c.get_clip(&info.hash)) {
                Ok((rate, audio)) if rate == info.rate && audio.len() == crate::messages::CAPTURE_CHANNELS => {
                    self.clip = Some(Arc::new(Clip { info: info.clone(), audio }));
                }
                _ => warnings.push(
                    "The captured audio of this project is not in the cache: arm and play the region again to re-process it.".to_string(),
                ),
            }
        }
        let mut message = String::from("Restored the project.");
        if let Some(take) = session.current_take() {
            match self.load_take(take) {
                Ok(r) => {
                    self.rendered = Some(r);
                    message = format!("Restored take {} from the cache.", session.current.unwrap_or(0) + 1);
                }
                Err(e) => {
                    warnings.insert(0, missing_text(take, &e));
                    if take.clip.is_some() {
                        // Re-arm: playing the region captures it again and the render that
                        // follows uses the saved seed and settings.
                        self.shared.capture.armed.store(true, Ordering::Release);
                    }
                }
            }
        }
        {
            let mut st = self.shared.status();
            st.warning = (!warnings.is_empty()).then(|| warnings.join(" "));
            st.message = message;
            st.residual = None;
            st.predicted = None;
            st.waves = Arc::new(Waveforms {
                clip: self.clip.as_ref().map(|c| peaks(&[&c.audio[0], &c.audio[1]], PEAK_COLUMNS)),
                stems: None,
            });
        }
        self.after_stems_changed();
        self.set_settled_phase();
    }

}

fn missing_text(take: &Take, e: &anyhow::Error) -> String {
    let how = if take.clip.is_some() {
        "The plugin is armed: play the same region again and stop"
    } else {
        "Press Process"
    };
    format!(
        "The stems of this take are not in the cache ({e:#}). {how}: the saved seed {} reproduces them.",
        take.seed
    )
}
pub(super) fn build_play_set(r: &Rendered, host_rate: u32) -> Result<PlaySet> {
    let from = r.take.rate;
    let stems: Vec<Vec<Vec<f32>>> = if from == host_rate {
        r.stems.clone()
    } else {
        r.stems.iter().map(|s| msdm::audio::resample(s, from, host_rate)).collect::<Result<_>>()?
    };
    let len = stems[0][0].len();
    let start = if from == host_rate {
        r.take.start
    } else {
        (r.take.start as f64 * host_rate as f64 / from as f64).round() as i64
    };
    let mut it = stems.into_iter().map(|s| render::fit_stereo(s, len));
    let mut next = || {
        let mut s = it.next().unwrap_or_default();
        s.resize(2, vec![0.0; len]);
        let r = s.pop().unwrap_or_default();
        let l = s.pop().unwrap_or_default();
        [l, r]
    };
    let stems = [next(), next(), next(), next()];
    Ok(PlaySet { rate: host_rate, start, len, fade: (host_rate as usize / 200).min(len / 2), stems })
}
