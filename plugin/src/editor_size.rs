//! The editor's size, saved with the project: a persisted field that reads the live editor's
//! size when the host saves, and hands a loaded size to the next editor that opens (the egui
//! state's size is fixed when the state is made, so a loaded size makes a new state).

use std::sync::{Arc, RwLock};

use nice_plug::editor::dpi::LogicalSize;
use nice_plug::params::persist::PersistentField;
use nice_plug_egui::EguiEditorState;
use serde::{Deserialize, Serialize};

/// The editor's size when nothing is saved.
pub const DEFAULT: (f32, f32) = (760.0, 720.0);
/// Smallest and largest logical sizes accepted (from the host or from saved state).
pub const MIN: (f32, f32) = (560.0, 420.0);
pub const MAX: (f32, f32) = (4096.0, 4096.0);

/// A logical editor size, as saved.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct EditorSize {
    pub width: f32,
    pub height: f32,
}

impl EditorSize {
    /// Within [`MIN`]..[`MAX`]; a damaged value (NaN, negative, huge) becomes the default.
    pub fn clamped(self) -> Self {
        let fit = |v: f32, lo: f32, hi: f32, default: f32| if v.is_finite() { v.clamp(lo, hi) } else { default };
        Self { width: fit(self.width, MIN.0, MAX.0, DEFAULT.0), height: fit(self.height, MIN.1, MAX.1, DEFAULT.1) }
    }
}

/// The persisted field (see the module doc).
pub struct EditorSizeCell {
    state: RwLock<Arc<EguiEditorState>>,
}

impl Default for EditorSizeCell {
    fn default() -> Self {
        Self { state: RwLock::new(new_state(EditorSize { width: DEFAULT.0, height: DEFAULT.1 })) }
    }
}

fn new_state(size: EditorSize) -> Arc<EguiEditorState> {
    let s = size.clamped();
    EguiEditorState::from_size(LogicalSize::new(s.width, s.height), 1.0)
}

impl EditorSizeCell {
    /// The state for the editor that opens now.
    pub fn state(&self) -> Arc<EguiEditorState> {
        Arc::clone(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The size the editor has now (or will open with).
    pub fn size(&self) -> EditorSize {
        let s = self.state().logical_size();
        EditorSize { width: s.width, height: s.height }
    }
}

impl<'a> PersistentField<'a, EditorSize> for EditorSizeCell {
    fn set(&self, new_value: EditorSize) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        // An open editor keeps its window; the loaded size applies from the next opening.
        if !state.is_open() {
            *state = new_state(new_value);
        }
    }

    fn map<F, R>(&self, f: F) -> R
    where
        F: Fn(&EditorSize) -> R,
    {
        f(&self.size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_round_trips_and_damaged_sizes_are_clamped() {
        let cell = EditorSizeCell::default();
        assert_eq!(cell.size(), EditorSize { width: DEFAULT.0, height: DEFAULT.1 });
        cell.set(EditorSize { width: 1000.0, height: 800.0 });
        assert_eq!(cell.map(|s| *s), EditorSize { width: 1000.0, height: 800.0 });
        let json = serde_json::to_string(&cell.size()).unwrap();
        let back: EditorSize = serde_json::from_str(&json).unwrap();
        let other = EditorSizeCell::default();
        other.set(back);
        assert_eq!(other.size(), EditorSize { width: 1000.0, height: 800.0 });
        for (w, h, want) in [
            (1e9, 10.0, (MAX.0, MIN.1)),
            (f32::NAN, f32::INFINITY, DEFAULT),
            (-5.0, 600.0, (MIN.0, 600.0)),
        ] {
            cell.set(EditorSize { width: w, height: h });
            assert_eq!(cell.size(), EditorSize { width: want.0, height: want.1 }, "{w} x {h}");
        }
    }
}
