//! Saved plugin state → restore → playback: the bytes as the `session` field a host hands back
//! (nice-plug reads it with serde_json), set into a fresh instance's parameters the way a state
//! load does, restored by the worker against a stem cache that holds a few real takes, and, when a
//! take comes back, played by the audio-thread player at ordinary and extreme host positions,
//! with and without the re-mix of the main output.
//!
//! Two input shapes:
//! - bytes starting with `{` are the saved JSON itself (the committed seeds, and what a damaged
//!   or hand-edited project file holds);
//! - anything else is read with `arbitrary` as a session-shaped value ([`FuzzSession`]) whose keys,
//!   rates and lengths mostly name what the cache really holds, serialised to the saved-state JSON
//!   and fed through the same path. Most random JSON is refused by serde before the restore is
//!   reached; these inputs reach the restore, the cache checks, resampling to the host rate and
//!   playback on nearly every run.
//!
//! `MSDM_FUZZ_REPORT=1` prints one line per input saying how far it got (`restored`, `refused`,
//! `not-json`), for measuring how often a corpus reaches the restore (`-runs=0` over it).
#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use msdm_plugin::cache::Cache;
use msdm_plugin::messages::{Command, ToAudio, CAPTURE_CHANNELS};
use msdm_plugin::params::MsdmParams;
use msdm_plugin::playback::Player;
use msdm_plugin::session::{ClipRef, JobKind, Quality, RegenRange, RenderSpec, Role, Session, Take};
use msdm_plugin::shared::Shared;
use msdm_plugin::worker::WorkerOptions;
use nice_plug::params::persist::PersistentField;
use nice_plug::prelude::Buffer;

/// The cached takes: a stereo 48 kHz take (the JSON seeds in corpus/plugin_state name it), a mono
/// 44.1 kHz take (restored with fit_stereo and resampled to the host rate), and a key whose stems
/// are damaged (two stems only).
const KEY: &str = "0123456789abcdef0123456789abcdef";
const KEY_44K: &str = "00112233445566778899aabbccddeeff";
const KEY_DAMAGED: &str = "ffeeddccbbaa99887766554433221100";
/// The cached clips: the 48 kHz capture (10 channels, 64 frames), a 44.1 kHz capture whose length
/// differs from every take's, and a clip with the wrong channel count.
const CLIP: &str = "fedcba9876543210fedcba9876543210";
const CLIP_44K: &str = "aaaabbbbccccddddeeeeffff00001111";
const CLIP_2CH: &str = "22223333444455556666777788889999";

const LEN: usize = 64;
const LEN_44K: usize = 147;

fn cache_root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("msdm-fuzz-cache-{}", std::process::id()));
        let cache = Cache::at(root.clone());
        let stereo: Vec<Vec<Vec<f32>>> = (0..4).map(|k| vec![vec![0.1 * k as f32; LEN]; 2]).collect();
        cache.put_stems(KEY, 48_000, &stereo).expect("seed stems");
        let mono: Vec<Vec<Vec<f32>>> =
            (0..4).map(|k| vec![(0..LEN_44K).map(|t| ((t + k) as f32 * 0.01).sin()).collect()]).collect();
        cache.put_stems(KEY_44K, 44_100, &mono).expect("seed 44.1 kHz stems");
        cache.put_stems(KEY_DAMAGED, 48_000, &stereo[..2]).expect("seed damaged stems");
        cache.put_clip(CLIP, 48_000, &vec![vec![0.2f32; LEN]; CAPTURE_CHANNELS]).expect("seed clip");
        cache.put_clip(CLIP_44K, 44_100, &vec![vec![0.3f32; 100]; CAPTURE_CHANNELS]).expect("seed 44.1 kHz clip");
        cache.put_clip(CLIP_2CH, 48_000, &vec![vec![0.2f32; LEN]; 2]).expect("seed 2-channel clip");
        root
    })
}

/// A cache key or clip hash: mostly one the cache holds, sometimes anything.
#[derive(Arbitrary, Debug)]
enum FuzzKey {
    Key,
    Key44k,
    KeyDamaged,
    Clip,
    Clip44k,
    Clip2ch,
    /// Hex of the right length that is not in the cache.
    Missing,
    Any(String),
}

impl FuzzKey {
    fn text(self) -> String {
        match self {
            FuzzKey::Key => KEY.into(),
            FuzzKey::Key44k => KEY_44K.into(),
            FuzzKey::KeyDamaged => KEY_DAMAGED.into(),
            FuzzKey::Clip => CLIP.into(),
            FuzzKey::Clip44k => CLIP_44K.into(),
            FuzzKey::Clip2ch => CLIP_2CH.into(),
            FuzzKey::Missing => "0000000000000000000000000000000a".into(),
            FuzzKey::Any(s) => s,
        }
    }
}

/// A sample rate: mostly the cached ones.
#[derive(Arbitrary, Debug)]
enum FuzzRate {
    R48k,
    R44k,
    Any(u32),
}

impl FuzzRate {
    fn hz(self) -> u32 {
        match self {
            FuzzRate::R48k => 48_000,
            FuzzRate::R44k => 44_100,
            FuzzRate::Any(r) => r,
        }
    }
}

/// A length in frames: mostly the cached ones.
#[derive(Arbitrary, Debug)]
enum FuzzLen {
    Len,
    Len44k,
    Small(u8),
    Any(usize),
}

impl FuzzLen {
    fn frames(self) -> usize {
        match self {
            FuzzLen::Len => LEN,
            FuzzLen::Len44k => LEN_44K,
            FuzzLen::Small(n) => n as usize,
            FuzzLen::Any(n) => n,
        }
    }
}

/// A timeline position: zero, near it, or anything an i64 holds.
#[derive(Arbitrary, Debug)]
enum FuzzPos {
    Zero,
    Near(i16),
    Any(i64),
}

impl FuzzPos {
    fn at(self) -> i64 {
        match self {
            FuzzPos::Zero => 0,
            FuzzPos::Near(n) => n as i64,
            FuzzPos::Any(n) => n,
        }
    }
}

/// The rate a host activates the plugin at: the rates hosts offer, not any u32 (the host is not
/// the untrusted part here; the saved state is).
#[derive(Arbitrary, Debug)]
enum HostRate {
    R48k,
    R44k,
    R96k,
    R88k,
    R192k,
    R22k,
    R8k,
    R384k,
    R768k,
}

impl HostRate {
    fn hz(self) -> u32 {
        match self {
            HostRate::R48k => 48_000,
            HostRate::R44k => 44_100,
            HostRate::R96k => 96_000,
            HostRate::R88k => 88_200,
            HostRate::R192k => 192_000,
            HostRate::R22k => 22_050,
            HostRate::R8k => 8_000,
            HostRate::R384k => 384_000,
            HostRate::R768k => 768_000,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct FuzzClip {
    hash: FuzzKey,
    start: FuzzPos,
    rate: FuzzRate,
    len: FuzzLen,
    tempo: Option<f64>,
    beats_per_bar: Option<f64>,
    sidechains: [bool; 4],
}

#[derive(Arbitrary, Debug)]
struct FuzzRange {
    parent: FuzzKey,
    stem: u8,
    from: FuzzLen,
    to: FuzzLen,
}

/// Which stems a take names: mostly a cached take with its own key, rate and length (so the
/// restore gets past the cache checks), or each of the three chosen freely.
#[derive(Arbitrary, Debug)]
enum TakeStems {
    Cached48k,
    Cached44k,
    /// The key of a cached take with the rate or the length of another.
    Mixed(bool),
    Free { key: FuzzKey, rate: FuzzRate, len: FuzzLen },
}

impl TakeStems {
    fn key_rate_len(self) -> (String, u32, usize) {
        match self {
            TakeStems::Cached48k => (KEY.into(), 48_000, LEN),
            TakeStems::Cached44k => (KEY_44K.into(), 44_100, LEN_44K),
            TakeStems::Mixed(false) => (KEY.into(), 44_100, LEN),
            TakeStems::Mixed(true) => (KEY_44K.into(), 44_100, LEN),
            TakeStems::Free { key, rate, len } => (key.text(), rate.hz(), len.frames()),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct FuzzTake {
    clip: Option<FuzzKey>,
    start: FuzzPos,
    stems: TakeStems,
    model_id: String,
    seed: u64,
    job: u8,
    roles: [u8; 4],
    final_quality: bool,
    steps: u16,
    resamples: u8,
    bars: u32,
    seconds: f64,
    range: Option<FuzzRange>,
    residual_max: f32,
}

#[derive(Arbitrary, Debug)]
enum FuzzCurrent {
    None,
    First,
    Last,
    Index(u8),
    Any(usize),
}

#[derive(Arbitrary, Debug)]
struct FuzzSession {
    clip: Option<FuzzClip>,
    takes: Vec<FuzzTake>,
    current: FuzzCurrent,
    seed: u64,
    model_path: Option<String>,
    export_dir: Option<String>,
    /// The rate the host activates the instance at (the take is resampled to it).
    host_rate: HostRate,
    /// Host positions to play at (on top of the fixed ordinary and extreme ones).
    positions: Vec<FuzzPos>,
    /// Re-mix gains for the main output (None: pass-through).
    remix: Option<[f32; 4]>,
}

/// A host's JSON has no NaN or infinity (serde_json writes them as null, which a load refuses), so
/// non-finite values become 0 here instead of wasting the input.
fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

fn role(b: u8) -> Role {
    [Role::Given, Role::Generate, Role::Silent][b as usize % 3]
}

impl FuzzSession {
    fn session(self) -> (Session, u32, Vec<i64>, Option<[f32; 4]>) {
        let clip = self.clip.map(|c| ClipRef {
            hash: c.hash.text(),
            start: c.start.at(),
            rate: c.rate.hz(),
            len: c.len.frames(),
            tempo: c.tempo.map(finite),
            beats_per_bar: c.beats_per_bar.map(finite),
            sidechains: c.sidechains,
        });
        let takes = self
            .takes
            .into_iter()
            .map(|t| {
                let (stems_key, rate, len) = t.stems.key_rate_len();
                Take {
                    clip: t.clip.map(FuzzKey::text),
                    start: t.start.at(),
                    rate,
                    len,
                    model_id: t.model_id,
                    seed: t.seed,
                    spec: RenderSpec {
                        job: [JobKind::Separate, JobKind::Impute, JobKind::Generate][t.job as usize % 3],
                        roles: t.roles.map(role),
                        quality: if t.final_quality { Quality::Final } else { Quality::Draft },
                        steps: t.steps as usize,
                        resamples: t.resamples as usize,
                        bars: t.bars,
                        seconds: finite(t.seconds),
                        range: t.range.map(|r| RegenRange {
                            parent: r.parent.text(),
                            stem: r.stem as usize,
                            from: r.from.frames(),
                            to: r.to.frames(),
                        }),
                    },
                    stems_key,
                    residual_max: finite(t.residual_max as f64) as f32,
                }
            })
            .collect::<Vec<_>>();
        let current = match self.current {
            FuzzCurrent::None => None,
            FuzzCurrent::First => Some(0),
            FuzzCurrent::Last => Some(takes.len().saturating_sub(1)),
            FuzzCurrent::Index(i) => Some(i as usize),
            FuzzCurrent::Any(i) => Some(i),
        };
        let session = Session { clip, takes, current, seed: self.seed, model_path: self.model_path, export_dir: self.export_dir };
        let positions = self.positions.into_iter().take(16).map(FuzzPos::at).collect();
        (session, self.host_rate.hz(), positions, self.remix)
    }
}

fn play(set_rx: &crossbeam_channel::Receiver<ToAudio>, rate: u32, extra: &[i64], remix: Option<[f32; 4]>) {
    const FRAMES: usize = 32;
    let (gtx, _grx) = crossbeam_channel::bounded(4);
    let mut p = Player::default();
    p.receive(set_rx, &gtx);
    let fixed = [0i64, 1, 63, -5, i64::MIN, i64::MAX, i64::MAX - 10];
    for &pos in fixed.iter().chain(extra) {
        let mut store = vec![vec![vec![0f32; FRAMES]; 2]; 4];
        let mut slices: Vec<Vec<&mut [f32]>> = store.iter_mut().map(|s| s.iter_mut().map(|c| c.as_mut_slice()).collect()).collect();
        let mut bufs: Vec<Buffer> = slices
            .iter_mut()
            .map(|s| {
                let mut b = Buffer::default();
                // SAFETY: the slices outlive the buffers, which are dropped before `store`.
                unsafe { b.set_slices(FRAMES, |out| *out = std::mem::take(s)) };
                b
            })
            .collect();
        match remix {
            None => p.render(true, Some(pos), rate, FRAMES, &mut bufs, None),
            Some(g) => {
                let gains = vec![g; FRAMES];
                let mut main = vec![vec![0.5f32; FRAMES]; 2];
                let mut main_slices: Vec<&mut [f32]> = main.iter_mut().map(|c| c.as_mut_slice()).collect();
                p.render(true, Some(pos), rate, FRAMES, &mut bufs, Some((&gains, &mut main_slices)));
            }
        }
    }
}

fn run(session: Session, rate: u32, positions: &[i64], remix: Option<[f32; 4]>, report: bool) {
    let params = Arc::new(MsdmParams::default());
    params.session.set(session);
    let options = WorkerOptions { cache_root: Some(cache_root().clone()), steps_override: Some(1) };
    let (shared, link) = Shared::new(params, options.worker_main());
    shared.send(Command::Activated { rate });
    // Activation publishes "no stems" first; take it so the restored take's stems can follow.
    let _ = link.from_worker.recv_timeout(std::time::Duration::from_secs(10));
    shared.sync_session();
    // Commands run in order: the restore is done when the worker has shut down.
    shared.shutdown();
    if report {
        let restored = shared.status.lock().map(|s| s.message.starts_with("Restored take")).unwrap_or(false);
        eprintln!("msdm-fuzz: {}", if restored { "restored" } else { "refused" });
    }
    play(&link.from_worker, rate, positions, remix);
}

fn report() -> bool {
    static REPORT: OnceLock<bool> = OnceLock::new();
    *REPORT.get_or_init(|| std::env::var_os("MSDM_FUZZ_REPORT").is_some())
}

fuzz_target!(|data: &[u8]| {
    if data.first() == Some(&b'{') {
        match serde_json::from_slice::<Session>(data) {
            Ok(session) => run(session, 48_000, &[], None, report()),
            Err(_) if report() => eprintln!("msdm-fuzz: not-json"),
            Err(_) => {}
        }
        return;
    }
    let Ok(input) = FuzzSession::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let (session, rate, positions, remix) = input.session();
    // Through the saved-state JSON, as a host's state load hands it to nice-plug.
    let json = serde_json::to_vec(&session).expect("a session serialises");
    let Ok(session) = serde_json::from_slice::<Session>(&json) else {
        if report() {
            eprintln!("msdm-fuzz: not-json");
        }
        return;
    };
    run(session, rate, &positions, remix, report());
});
