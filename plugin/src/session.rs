//! What the plugin state persists: metadata only. Captured audio and stems live as files in the
//! content-addressed cache ([`crate::cache`]), found again through the hashes stored here.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use nice_plug::params::persist::PersistentField;
use serde::{Deserialize, Serialize};

use crate::params::{JobKind, Quality, Role};

/// A captured clip: where it sits on the host timeline and how to find its audio in the cache.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ClipRef {
    /// Content hash of the captured samples (all capture channels) and their rate.
    pub hash: String,
    /// Timeline position (samples at `rate`) of the first captured sample.
    pub start: i64,
    pub rate: u32,
    /// Length in samples at `rate`.
    pub len: usize,
    /// Host tempo when the clip was captured (for Generate lengths in bars).
    pub tempo: Option<f64>,
    /// Beats per bar at capture (numerator * 4 / denominator).
    pub beats_per_bar: Option<f64>,
    /// Which stem sidechain inputs carried audio during the capture.
    pub sidechains: [bool; 4],
}

/// The render settings of a take (enough to reproduce it from the seed).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RenderSpec {
    pub job: JobKind,
    pub roles: [Role; 4],
    pub quality: Quality,
    pub steps: usize,
    pub resamples: usize,
    /// Generate: the requested length in bars and the resulting seconds.
    pub bars: u32,
    pub seconds: f64,
}

/// One rendered set of stems.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Take {
    /// The input clip (None for Generate with nothing captured).
    pub clip: Option<String>,
    /// Timeline position and length of the stems, at `rate`.
    pub start: i64,
    pub rate: u32,
    pub len: usize,
    pub model_id: String,
    pub seed: u64,
    pub spec: RenderSpec,
    /// Cache key of the stems (hash of clip, model, seed and settings).
    pub stems_key: String,
    pub residual_max: f32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Session {
    /// The last captured clip (it may have no take yet).
    pub clip: Option<ClipRef>,
    pub takes: Vec<Take>,
    /// Index into `takes` of the take that plays.
    pub current: Option<usize>,
    /// Seed of the next render ("New take" picks a fresh one).
    pub seed: u64,
    /// A user-chosen model file (safetensors); None = `MSDM_MODEL` or the bundled default.
    pub model_path: Option<String>,
    /// Folder for "Export stems".
    pub export_dir: Option<String>,
}

impl Session {
    pub fn current_take(&self) -> Option<&Take> {
        self.current.and_then(|i| self.takes.get(i))
    }
}

/// The persisted session field. Host state loads go through [`PersistentField::set`], which bumps
/// a generation counter so the plugin knows to restore stems from the cache; the plugin's own
/// updates use [`SessionCell::update`] and do not.
#[derive(Default)]
pub struct SessionCell {
    data: RwLock<Session>,
    loaded: AtomicU64,
}

impl SessionCell {
    pub fn get(&self) -> Session {
        self.data.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn read<R>(&self, f: impl FnOnce(&Session) -> R) -> R {
        f(&self.data.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn update<R>(&self, f: impl FnOnce(&mut Session) -> R) -> R {
        f(&mut self.data.write().unwrap_or_else(|e| e.into_inner()))
    }

    /// How many times the host has loaded a state into this cell.
    pub fn load_generation(&self) -> u64 {
        self.loaded.load(Ordering::Acquire)
    }
}

impl<'a> PersistentField<'a, Session> for SessionCell {
    fn set(&self, new_value: Session) {
        *self.data.write().unwrap_or_else(|e| e.into_inner()) = new_value;
        self.loaded.fetch_add(1, Ordering::AcqRel);
    }

    fn map<F, R>(&self, f: F) -> R
    where
        F: Fn(&Session) -> R,
    {
        f(&self.data.read().unwrap_or_else(|e| e.into_inner()))
    }
}
