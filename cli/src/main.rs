//! `msdm`: separate, generate and impute music stems with Multi-Source Diffusion Models.

mod bench;
mod datasets;
mod jobs;
mod midi;
mod models;
mod progress;
mod regenerate;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "msdm", version, about = "Multi-Source Diffusion Models: separate a mix into bass, drums, guitar and piano, \
generate stems that fit given ones, or generate all four from nothing.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Separate a mix (WAV/FLAC/MP3/OGG, any rate and channel count) into stems
    Separate {
        /// The mix to separate
        input: PathBuf,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Likelihood linking stems and mix: dirac (stems sum to the mix) or gaussian
        #[arg(long, value_enum, default_value_t = LikelihoodArg::Dirac)]
        likelihood: LikelihoodArg,
        /// Dirac: the stem computed as mix minus the others (index or name; default: the model's,
        /// else bass)
        #[arg(long)]
        constrained_source: Option<String>,
        /// Gaussian: γ = COEFF·σ
        #[arg(long, default_value_t = 0.75)]
        gamma_coeff: f32,
    },
    /// Generate all stems from nothing
    Generate {
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Length in seconds
        #[arg(long, default_value_t = 12.0)]
        seconds: f64,
        /// Output sample rate
        #[arg(long, default_value_t = 44_100)]
        rate: u32,
        /// Output channels
        #[arg(long, default_value_t = 1)]
        channels: usize,
    },
    /// Generate the missing stems to fit given ones, e.g. `--given drums=d.wav`
    Impute {
        /// A given stem as NAME=FILE (repeatable); NAME=silence keeps a stem silent
        #[arg(long = "given", required = true)]
        given: Vec<String>,
        #[command(flatten)]
        out: OutputArgs,
        #[command(flatten)]
        sampling: SamplingArgs,
    },
    /// Regenerate a time range of one stem (or several) in a folder of stems, keeping the rest
    Regenerate(regenerate::RegenerateArgs),
    /// Import a published MSDM PyTorch Lightning checkpoint (.ckpt) into our model format
    Import {
        /// The .ckpt file
        checkpoint: PathBuf,
        /// The model file to write (.safetensors)
        #[arg(short, long)]
        output: PathBuf,
        /// Store weights as f16 (half the size)
        #[arg(long)]
        f16: bool,
        /// Window length in samples at 22,050 Hz (default: 262144 rounded to the model's multiple)
        #[arg(long)]
        window: Option<usize>,
        /// Replace OUTPUT if it exists
        #[arg(long)]
        force: bool,
    },
    /// Rewrite a model file for shipping: f16 weights, default settings per job, provenance
    Export {
        /// The model file to read
        model: PathBuf,
        /// The model file to write
        #[arg(short, long)]
        output: PathBuf,
        /// Store weights as f16
        #[arg(long)]
        f16: bool,
        /// JSON with default settings: {"separate": {...}, "generate": {...}, "impute": {...}}
        #[arg(long)]
        defaults: Option<PathBuf>,
        /// JSON with provenance to store under info.card
        #[arg(long)]
        card: Option<PathBuf>,
        #[arg(long)]
        force: bool,
    },
    /// Transcribe a bass stem into a MIDI file (monophonic: onsets, offsets, pitch, velocity)
    Midi(midi::MidiArgs),
    /// Show a model file's config, size and defaults
    Info {
        /// Model file (default: the bundled model)
        model: Option<PathBuf>,
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Time the denoiser and a full separation window
    Bench(bench::BenchArgs),
    /// Make datasets
    #[command(subcommand)]
    Data(datasets::DataCommand),
    /// Evaluate separation with the paper's protocol (SI-SDRi over 4 s windows), or with --midi
    /// the bass transcription against the songs' MIDI
    Eval(datasets::EvalArgs),
    /// Train a model (denoising score matching, Adam), resumable
    Train(train::TrainArgs),
}

#[derive(Args, Clone)]
pub struct OutputArgs {
    /// Output folder for bass.wav, drums.wav, guitar.wav, piano.wav
    #[arg(short, long)]
    pub output: PathBuf,
    /// Model file (default: the bundled model in assets/, or $MSDM_MODEL)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Compute device
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Network precision: f32, or f16/bf16 (GPU)
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Number of takes (seeds SEED, SEED+1, ...), each in its own subfolder take-N
    #[arg(long, default_value_t = 1)]
    pub takes: usize,
    /// Downmix to mono before processing
    #[arg(long)]
    pub mono: bool,
    /// Sample format of the written stems
    #[arg(long, value_enum, default_value_t = FormatArg::F32)]
    pub format: FormatArg,
    /// Replace existing stem files
    #[arg(long)]
    pub force: bool,
    /// Also transcribe the bass stem into bass.mid beside the stems (see `msdm midi`)
    #[arg(long)]
    pub midi: bool,
    /// With --midi: tempo in quarter notes per minute, written to bass.mid; notes snap to sixteenths
    #[arg(long, requires = "midi")]
    pub midi_bpm: Option<f64>,
    /// No progress bar
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Clone, Default)]
pub struct SamplingArgs {
    /// Diffusion steps (default: the model's or the released setting)
    #[arg(long)]
    pub steps: Option<usize>,
    /// S_churn stochasticity
    #[arg(long)]
    pub churn: Option<f32>,
    /// Network calls per step (1 + corrections)
    #[arg(long)]
    pub resamples: Option<usize>,
    /// Highest noise level σ_max
    #[arg(long)]
    pub sigma_max: Option<f32>,
    /// Lowest noise level σ_min of the schedule (before the last step to 0)
    #[arg(long)]
    pub sigma_min: Option<f32>,
    /// The schedule's ρ (Karras et al.): higher puts more steps at low noise
    #[arg(long)]
    pub rho: Option<f32>,
    /// Random seed
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Windows per network call (separation)
    #[arg(long)]
    pub batch: Option<usize>,
    /// Imputation with a per-stem σ model: guidance weight on the given stems (0 = none; doubles the network calls)
    #[arg(long)]
    pub guidance: Option<f32>,
    /// Guide only the steps at noise levels from LO to HI, e.g. 0.3,5 (a guidance interval; default: every step)
    #[arg(long, value_name = "LO,HI", value_parser = parse_interval)]
    pub guidance_interval: Option<(f32, f32)>,
    /// Scale the guided stem back towards the unguided one's level: 0 (none) to 1 (all the way); guidance alone makes it louder
    #[arg(long, value_name = "PHI")]
    pub guidance_rescale: Option<f32>,
    /// Separation: average N posterior samples per window (each costs a full separation; the stems still sum to the mix)
    #[arg(long, value_name = "N", value_parser = parse_average)]
    pub average: Option<usize>,
    /// Separation: the Wiener post-filter's frame in samples at 22,050 Hz (0 turns it off; the bundled model's default is 16384)
    #[arg(long, value_name = "FRAME")]
    pub wiener: Option<usize>,
    /// Separation: the exponent of the stem magnitudes that make the Wiener post-filter's masks (default 1.25)
    #[arg(long, value_name = "P")]
    pub wiener_exponent: Option<f32>,
    /// Separation of a stereo mix: `mid` separates the channels' mean once and shares each channel out (half the time), `each` separates every channel on its own (default: the model's; the bundled model's is mid)
    #[arg(long, value_enum)]
    pub stereo: Option<StereoArg>,
}

#[derive(ValueEnum, Clone, Copy)]
pub enum StereoArg {
    Each,
    Mid,
}

fn parse_average(s: &str) -> Result<usize, String> {
    let max = msdm::separator::MAX_AVERAGE;
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("average {s}: give 1 to {max} posterior samples per window")),
    }
}

fn parse_interval(s: &str) -> Result<(f32, f32), String> {
    let bad = || format!("'{s}': give two noise levels LO,HI, e.g. 0.3,5");
    let (lo, hi) = s.split_once(',').ok_or_else(bad)?;
    Ok((lo.trim().parse().map_err(|_| bad())?, hi.trim().parse().map_err(|_| bad())?))
}

#[derive(ValueEnum, Clone, Copy, PartialEq, Eq)]
pub enum LikelihoodArg {
    Dirac,
    Gaussian,
}

#[derive(ValueEnum, Clone, Copy)]
pub enum FormatArg {
    F32,
    I16,
    I24,
}

/// Keeps freed tensor memory in the process instead of handing it back to the kernel. glibc
/// serves blocks above 128 KiB–32 MiB with fresh `mmap`s, and every diffusion step frees and
/// reallocates the same activations, so without this each step page-faults its working set in
/// again (10–20% of a training step's time in the kernel's page-fault path). Measured on the
/// 2-core machine, 24 training steps of the bundled config: 28.5 s before, 22.3 s after.
/// Only the CLI does this: the plugin lives in the host's process and leaves its allocator alone.
fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation thresholds; called first thing in main,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
        // One arena: the network runs on rayon's workers, and each thread's own arena would keep
        // its own copy of the peak activations (10-minute file: 283 → 185 MiB peak, same speed).
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// `msdm info model.safetensors | head -1` should end quietly when the reader goes away, as Unix
/// tools do, instead of panicking on a broken pipe (Rust ignores SIGPIPE unless told otherwise).
fn restore_sigpipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal, first thing in main, before any
    // other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    restore_sigpipe();
    configure_allocator();
    // candle's element-wise ops otherwise run on their own spin-waiting pool beside rayon's.
    msdm::ops::configure_cpu_threads();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Separate { input, out, sampling, likelihood, constrained_source, gamma_coeff } => {
            jobs::separate(&input, &out, &sampling, likelihood, constrained_source.as_deref(), gamma_coeff)
        }
        Command::Generate { out, sampling, seconds, rate, channels } => jobs::generate(&out, &sampling, seconds, rate, channels),
        Command::Impute { given, out, sampling } => jobs::impute(&given, &out, &sampling),
        Command::Regenerate(args) => regenerate::run(&args),
        Command::Import { checkpoint, output, f16, window, force } => models::import(&checkpoint, &output, f16, window, force),
        Command::Export { model, output, f16, defaults, card, force } => {
            models::export(&model, &output, f16, defaults.as_deref(), card.as_deref(), force)
        }
        Command::Midi(args) => midi::run(&args),
        Command::Info { model, json } => models::info(model.as_deref(), json),
        Command::Bench(args) => bench::run(&args),
        Command::Data(cmd) => datasets::data(&cmd),
        Command::Eval(args) => datasets::eval(&args),
        Command::Train(args) => train::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
