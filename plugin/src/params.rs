//! The plugin's host-visible parameters and the persisted session metadata.

use nice_plug::prelude::*;
use serde::{Deserialize, Serialize};

use crate::editor_size::EditorSizeCell;
use crate::session::SessionCell;
// The job choices live with the session they are saved in; the parameters expose them.
pub use crate::session::{JobKind, Quality, Role};

/// What the main output carries.
#[derive(Enum, Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputMode {
    /// The input, unchanged.
    #[name = "Pass-through"]
    PassThrough,
    /// Over the processed region: the re-mix of the stems (gain/mute/solo); elsewhere the input.
    #[name = "Re-mix of stems"]
    Remix,
}

/// Per-stem controls of the main-out re-mix and the stem's Impute role.
#[derive(Params)]
pub struct StemParams {
    #[id = "role"]
    pub role: EnumParam<Role>,
    #[id = "gain"]
    pub gain: FloatParam,
    #[id = "mute"]
    pub mute: BoolParam,
    #[id = "solo"]
    pub solo: BoolParam,
}

impl StemParams {
    fn new(stem: &str, role: Role) -> Self {
        let title = crate::stem_title(stem);
        Self {
            role: EnumParam::new(format!("{title} role"), role),
            gain: FloatParam::new(
                format!("{title} gain"),
                util::db_to_gain(0.0),
                FloatRange::Skewed {
                    min: util::db_to_gain(-60.0),
                    max: util::db_to_gain(12.0),
                    factor: FloatRange::gain_skew_factor(-60.0, 12.0),
                },
            )
            .with_smoother(SmoothingStyle::Logarithmic(20.0))
            .with_unit(" dB")
            .with_value_to_string(formatters::v2s_f32_gain_to_db(1))
            .with_string_to_value(formatters::s2v_f32_gain_to_db()),
            mute: BoolParam::new(format!("{title} mute"), false),
            solo: BoolParam::new(format!("{title} solo"), false),
        }
    }
}

#[derive(Params)]
pub struct MsdmParams {
    /// Metadata only (hashes, positions, rates, seeds, settings); audio lives in the cache.
    #[persist = "session"]
    pub session: SessionCell,
    /// The editor's size (the host may resize it).
    #[persist = "editor-size"]
    pub editor_size: EditorSizeCell,

    #[id = "job"]
    pub job: EnumParam<JobKind>,
    #[id = "quality"]
    pub quality: EnumParam<Quality>,
    /// Generate: length in bars at the host tempo.
    #[id = "bars"]
    pub bars: IntParam,
    #[id = "output"]
    pub output: EnumParam<OutputMode>,

    #[nested(id_prefix = "bass", group = "Bass")]
    pub bass: StemParams,
    #[nested(id_prefix = "drums", group = "Drums")]
    pub drums: StemParams,
    #[nested(id_prefix = "guitar", group = "Guitar")]
    pub guitar: StemParams,
    #[nested(id_prefix = "piano", group = "Piano")]
    pub piano: StemParams,
}

impl Default for MsdmParams {
    fn default() -> Self {
        Self {
            session: SessionCell::default(),
            editor_size: EditorSizeCell::default(),
            job: EnumParam::new("Job", JobKind::Separate),
            quality: EnumParam::new("Quality", Quality::Draft),
            bars: IntParam::new("Generate length", 4, IntRange::Linear { min: 1, max: 64 })
                .with_unit(" bars"),
            output: EnumParam::new("Main output", OutputMode::PassThrough),
            bass: StemParams::new("bass", Role::Generate),
            drums: StemParams::new("drums", Role::Given),
            guitar: StemParams::new("guitar", Role::Silent),
            piano: StemParams::new("piano", Role::Silent),
        }
    }
}

impl MsdmParams {
    /// The controls of stem `k` in the model's order (bass, drums, guitar, piano).
    pub fn stem(&self, k: usize) -> &StemParams {
        match k {
            0 => &self.bass,
            1 => &self.drums,
            2 => &self.guitar,
            _ => &self.piano,
        }
    }

    pub fn roles(&self) -> [Role; 4] {
        std::array::from_fn(|k| self.stem(k).role.value())
    }
}
