//! Our model format: one self-describing safetensors file holding the network's weights (f32 or
//! f16, under the reference state-dict names) and, in its metadata, the config (`msdm.config`),
//! the model's window length and default sampler settings, and free-form provenance.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::denoiser::{Denoiser, EdmDenoiser, IsdmDenoiser};
use crate::unet::params::{FreshParams, TensorMap};
use crate::unet::UNet1d;

mod isdm;

pub const FORMAT_KEY: &str = "msdm.format";

/// Largest safetensors header (JSON) read: 100 MB, the safetensors crate's own limit. A model's
/// header lists its tensors (names, shapes, offsets) and its metadata: the paper model's is
/// about 100 KB. The length is the file's first 8 bytes, so it is checked (against this and the
/// file's real size) before the header is read into memory.
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
pub const FORMAT_VERSION: &str = "1";

/// What a model file says about itself besides its weights.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelMeta {
    /// Window length in samples at 22,050 Hz that the model was trained on.
    pub window: usize,
    /// Stem names in channel order.
    pub stems: Vec<String>,
    /// Provenance: source checkpoint, training steps, data, ...
    #[serde(default)]
    pub info: serde_json::Value,
}

/// A loaded model: config, metadata and the denoiser on a device.
pub struct Model {
    pub config: ModelConfig,
    pub meta: ModelMeta,
    pub denoiser: EdmDenoiser,
    /// ISDM: one single-stem model per stem (then `denoiser` is the first stem's).
    isdm: Option<IsdmDenoiser>,
    tensors: Vec<(String, Tensor)>,
    id: String,
}

/// Storage precision of a saved model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StoreDType {
    F32,
    F16,
}

impl Model {
    /// Default window: 64 length multiples, at most the reference's 262,144 samples (the paper
    /// config gets exactly 262,144; tiny test configs get short windows).
    pub fn default_window(config: &ModelConfig) -> usize {
        let m = config.length_multiple();
        (m * 64).min(262_144usize.div_ceil(m) * m)
    }

    /// Builds a model from named tensors (reference names, no prefix).
    pub fn from_tensors(config: ModelConfig, meta: ModelMeta, tensors: HashMap<String, Tensor>) -> Result<Self> {
        config.validate()?;
        let map = TensorMap::new(tensors);
        let net = UNet1d::new(&config, &map).context("the weights do not fit the config")?;
        let unused = map.unused();
        if !unused.is_empty() {
            bail!(
                "the model file has {} tensors its config does not use (first: '{}'): the weights do not belong to this config",
                unused.len(),
                unused[0]
            );
        }
        let mut list: Vec<(String, Tensor)> = map.tensors.into_iter().collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        let id = content_id(&config, &list)?;
        Ok(Self { config, meta, denoiser: EdmDenoiser::new(net), isdm: None, tensors: list, id })
    }

    /// The denoiser the samplers use: the 4-stem network, or the ISDM composite.
    pub fn stems_denoiser(&self) -> &dyn Denoiser {
        match &self.isdm {
            Some(d) => d,
            None => &self.denoiser,
        }
    }

    /// Number of stems the model produces.
    pub fn num_stems(&self) -> usize {
        self.meta.stems.len()
    }

    /// The same model with its network weights converted to `dtype` (f16/bf16 inference on a GPU);
    /// the denoiser then runs the network in `dtype` and its EDM preconditioning in f32.
    pub fn to_dtype(self, dtype: DType) -> Result<Self> {
        if self.isdm.is_some() {
            bail!("converting an ISDM model to {dtype:?} is not supported: convert each stem model before `Model::isdm`");
        }
        let Model { config, meta, tensors, .. } = self;
        let tensors = tensors.into_iter().map(|(n, t)| Ok((n, t.to_dtype(dtype)?))).collect::<Result<HashMap<_, _>>>()?;
        let mut model = Self::from_tensors(config, meta, tensors)?;
        model.denoiser.compute_dtype = dtype;
        Ok(model)
    }

    /// A randomly initialized model (PyTorch's default init, our seeded RNG); for tests and training.
    pub fn random(config: ModelConfig, seed: u64, device: &Device) -> Result<Self> {
        let fresh = FreshParams::new(seed, device);
        UNet1d::new(&config, &fresh)?;
        // Detached: inference copies, so the fast kernels (not the training path) run them.
        let tensors = fresh.vars.into_inner().into_iter().map(|(n, v)| (n, v.as_tensor().detach())).collect();
        let meta = ModelMeta {
            window: Self::default_window(&config),
            stems: config.default_stems(),
            info: serde_json::json!({"source": "random", "seed": seed}),
        };
        Self::from_tensors(config, meta, tensors)
    }

    /// Loads a model file onto `device`, one tensor at a time: the peak memory is the weights
    /// plus the largest tensor, not the whole file on top of the weights.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        Self::load_unless(path, device, &|| true)
    }

    /// [`Self::load`] that stops between tensors, with an error saying "cancelled", once
    /// `going` returns false (a large model takes seconds to load; the plugin's Cancel uses this).
    pub fn load_unless(path: &Path, device: &Device, going: &dyn Fn() -> bool) -> Result<Self> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(path).with_context(|| format!("cannot read the model file '{}'", path.display()))?;
        let len = file.metadata().with_context(|| format!("cannot read the model file '{}'", path.display()))?.len();
        let read = |offset: u64, n: usize| -> Result<Vec<u8>> {
            if !going() {
                bail!("{}", crate::sampler::CANCELLED);
            }
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        };
        Self::from_reader(len, read, device).with_context(|| format!("loading the model file '{}'", path.display()))
    }

    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let read = |offset: u64, n: usize| -> Result<Vec<u8>> {
            let start = usize::try_from(offset)?;
            Ok(bytes.get(start..start + n).context("out of range")?.to_vec())
        };
        Self::from_reader(bytes.len() as u64, read, device)
    }

    /// A model from a safetensors file of `len` bytes that `read(offset, n)` reads from.
    fn from_reader(len: u64, read: impl Fn(u64, usize) -> Result<Vec<u8>>, device: &Device) -> Result<Self> {
        const NOT_SAFETENSORS: &str = "not a safetensors file (import a PyTorch checkpoint with `msdm import` first)";
        let header_len = read(0, 8).ok().map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes"))).context(NOT_SAFETENSORS)?;
        if header_len > MAX_HEADER_BYTES {
            bail!(
                "{NOT_SAFETENSORS}: its header length field says {header_len} bytes, more than the {MAX_HEADER_BYTES}-byte \
                 limit (MAX_HEADER_BYTES)"
            );
        }
        if 8 + header_len > len {
            bail!(
                "{NOT_SAFETENSORS}, or it is truncated: its header length field says {header_len} bytes but the file has \
                 only {len} bytes (download or export it again)"
            );
        }
        let header: safetensors::tensor::Metadata =
            serde_json::from_slice(&read(8, header_len as usize)?).context(NOT_SAFETENSORS)?;
        let md = header.metadata().clone().unwrap_or_default();
        if md.get(FORMAT_KEY).map(String::as_str) != Some(FORMAT_VERSION) {
            bail!("this safetensors file is not an MSDM model (no '{FORMAT_KEY}' = '{FORMAT_VERSION}' in its metadata)");
        }
        let config = ModelConfig::from_json(md.get("msdm.config").context("the model file has no 'msdm.config'")?)
            .context("the model file's config is invalid")?;
        let meta: ModelMeta = serde_json::from_str(md.get("msdm.meta").context("the model file has no 'msdm.meta'")?)
            .context("the model file's metadata is invalid")?;
        if meta.window == 0 || meta.window % config.length_multiple() != 0 {
            bail!("the model's window {} is not a multiple of its length multiple {}", meta.window, config.length_multiple());
        }
        if meta.stems.len() != config.in_channels {
            bail!("the model names {} stems but has {} channels", meta.stems.len(), config.in_channels);
        }
        let data_start = 8 + header_len;
        let data_len = len - data_start;
        let mut tensors = HashMap::new();
        for (name, info) in header.tensors() {
            let (start, end) = info.data_offsets;
            if start > end || end as u64 > data_len {
                bail!(
                    "the model file is damaged or truncated: tensor '{name}' lies at bytes {start}..{end} of a {data_len}-byte data section \
                     (download or export it again)"
                );
            }
            // The safetensors crate checked shape x dtype == end - start when it parsed the header.
            let bytes = read(data_start + start as u64, end - start)?;
            let view = safetensors::tensor::TensorView::new(info.dtype, info.shape.clone(), &bytes)
                .map_err(|e| anyhow::anyhow!("the model file is damaged: tensor '{name}': {e}"))?;
            let t = candle_core::safetensors::Load::load(&view, &Device::Cpu)?;
            tensors.insert(name.to_string(), t.to_dtype(DType::F32)?.to_device(device)?);
        }
        Self::from_tensors(config, meta, tensors)
    }

    /// Writes the model as one safetensors file (atomically: temp file, then rename).
    pub fn save(&self, path: &Path, dtype: StoreDType) -> Result<()> {
        if self.isdm.is_some() {
            bail!("an ISDM model is saved as its single-stem model files, not as one file");
        }
        let dt = match dtype {
            StoreDType::F32 => DType::F32,
            StoreDType::F16 => DType::F16,
        };
        let tensors: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(n, t)| Ok((n.clone(), t.to_dtype(dt)?.to_device(&Device::Cpu)?)))
            .collect::<Result<_>>()?;
        let mut md = HashMap::new();
        md.insert(FORMAT_KEY.to_string(), FORMAT_VERSION.to_string());
        md.insert("msdm.config".to_string(), self.config.to_json());
        md.insert("msdm.meta".to_string(), serde_json::to_string(&self.meta)?);
        let tmp = path.with_extension("safetensors.partial");
        safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(md), &tmp)
            .with_context(|| format!("cannot write '{}'", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot move the model into '{}'", path.display()))?;
        Ok(())
    }

    /// A stable id of the weights and config (hex), e.g. for caches.
    pub fn id(&self) -> String {
        self.id.clone()
    }

    pub fn window(&self) -> usize {
        self.meta.window
    }

    pub fn device(&self) -> &Device {
        self.tensors.first().map(|(_, t)| t.device()).unwrap_or(&Device::Cpu)
    }

    /// The named weights (reference names), e.g. for training or export.
    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.tensors
    }

    pub fn parameter_count(&self) -> usize {
        self.tensors.iter().map(|(_, t)| t.elem_count()).sum()
    }
}

/// FNV-1a over the config and the weights' bytes (f32, in name order), as 16 hex digits.
fn content_id(config: &ModelConfig, tensors: &[(String, Tensor)]) -> Result<String> {
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    eat(config.to_json().as_bytes());
    for (n, t) in tensors {
        eat(n.as_bytes());
        // Sample the weights sparsely for big models: every 97th value is enough to tell files apart.
        let v: Vec<f32> = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let step = if v.len() > 1 << 20 { 97 } else { 1 };
        for x in v.iter().step_by(step) {
            eat(&x.to_le_bytes());
        }
    }
    Ok(format!("{h:016x}"))
}

/// The bundled default model: `$MSDM_MODEL` if set, else `assets/msdm-small.safetensors` next to
/// the executable (or its parent folders, for `target/…` builds), else in the source tree.
pub fn bundled_model_path() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("MSDM_MODEL") {
        let p = PathBuf::from(p);
        return p.exists().then_some(p);
    }
    let name = Path::new("assets").join(BUNDLED_MODEL_FILE);
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(5) {
            candidates.push(dir.join(&name));
        }
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(&name));
    candidates.into_iter().find(|p| p.exists())
}

pub const BUNDLED_MODEL_FILE: &str = "msdm-small.safetensors";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_and_wrong_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let m = Model::random(ModelConfig::tiny(), 3, &Device::Cpu).unwrap();
        let p = dir.path().join("m.safetensors");
        m.save(&p, StoreDType::F32).unwrap();
        let l = Model::load(&p, &Device::Cpu).unwrap();
        assert_eq!(l.id(), m.id());
        // a load told to stop stops between tensors, saying "cancelled"
        let reads = std::cell::Cell::new(0);
        let err = Model::load_unless(&p, &Device::Cpu, &|| {
            reads.set(reads.get() + 1);
            reads.get() < 5
        })
        .err()
        .expect("cancelled");
        assert!(format!("{err:#}").contains("cancelled"), "{err:#}");
        assert_eq!(reads.get(), 5, "it stopped at the first read after the flag");
        assert_eq!(l.config, m.config);
        assert_eq!(l.meta, m.meta);

        // f16 storage loads, with a different id (different values)
        let p16 = dir.path().join("m16.safetensors");
        m.save(&p16, StoreDType::F16).unwrap();
        assert!(std::fs::metadata(&p16).unwrap().len() < std::fs::metadata(&p).unwrap().len());
        Model::load(&p16, &Device::Cpu).unwrap();

        // weights of one config under another config's metadata → clear error
        let mut other = Model::random(ModelConfig::tiny(), 3, &Device::Cpu).unwrap();
        other.config.channels = 32;
        let bad = dir.path().join("bad.safetensors");
        other.save(&bad, StoreDType::F32).unwrap();
        let err = format!("{:#}", Model::load(&bad, &Device::Cpu).err().unwrap());
        assert!(err.contains("shape") || err.contains("does not"), "{err}");

        // not a safetensors file
        let junk = dir.path().join("junk.safetensors");
        std::fs::write(&junk, b"hello").unwrap();
        let err = format!("{:#}", Model::load(&junk, &Device::Cpu).err().unwrap());
        assert!(err.contains("not a safetensors file"), "{err}");

        // the file read tensor by tensor and the same bytes in memory give the same model
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(Model::from_bytes(&bytes, &Device::Cpu).unwrap().id(), m.id());

        // a truncated file names the problem and the file (cut in the data, and in the header)
        for keep in [bytes.len() - 100, 40] {
            let cut = dir.path().join("cut.safetensors");
            std::fs::write(&cut, &bytes[..keep]).unwrap();
            let err = format!("{:#}", Model::load(&cut, &Device::Cpu).err().unwrap());
            assert!(err.contains("cut.safetensors"), "{err}");
            assert!(err.contains("truncated") || err.contains("not a safetensors file"), "{err}");
        }
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
        let err = format!("{:#}", Model::load(&cut, &Device::Cpu).err().unwrap());
        assert!(err.contains("damaged or truncated"), "{err}");
    }

    fn load_err(bytes: &[u8]) -> String {
        format!("{:#}", Model::from_bytes(bytes, &Device::Cpu).err().expect("loading should fail"))
    }

    #[test]
    fn header_lengths_and_tensor_ranges_are_checked_against_the_file() {
        // a header length of 2^64 - 1: refused before anything is allocated
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.extend(b"{}");
        let err = load_err(&bytes);
        assert!(err.contains("header length field says 18446744073709551615 bytes"), "{err}");
        assert!(err.contains("(MAX_HEADER_BYTES)"), "{err}");
        // a plausible header length, past the end of the file
        let mut bytes = 5000u64.to_le_bytes().to_vec();
        bytes.extend(b"{}");
        let err = load_err(&bytes);
        assert!(err.contains("header length field says 5000 bytes but the file has only 10 bytes"), "{err}");

        // a real model whose last tensor claims 2^36 floats (256 GiB) past the end of the file
        let m = Model::random(ModelConfig::tiny(), 3, &Device::Cpu).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        m.save(&p, StoreDType::F16).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let (last, start) = header
            .as_object()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.get("data_offsets")?[0].as_u64()?)))
            .max_by_key(|(_, s)| *s)
            .unwrap();
        let huge = 1u64 << 36;
        header[&last] = serde_json::json!({"dtype": "F32", "shape": [huge], "data_offsets": [start, start + 4 * huge]});
        let text = serde_json::to_vec(&header).unwrap();
        let mut forged = (text.len() as u64).to_le_bytes().to_vec();
        forged.extend(&text);
        forged.extend(&bytes[8 + n..]);
        let err = load_err(&forged);
        assert!(err.contains(&format!("tensor '{last}' lies at bytes {start}..{}", start + 4 * huge)), "{err}");
        assert!(err.contains("damaged or truncated"), "{err}");
    }

    /// Writes the `model_file` fuzz target's seed (docs/fuzzing.md): the smallest valid model.
    #[test]
    #[ignore = "writes fuzz/corpus/model_file/; run by hand after a format change"]
    fn write_fuzz_seed() {
        let config = ModelConfig {
            in_channels: 1,
            channels: 4,
            patch_factor: 2,
            patch_blocks: 1,
            resnet_groups: 1,
            kernel_multiplier_downsample: 2,
            multipliers: vec![1, 1],
            factors: vec![2],
            num_blocks: vec![1],
            attentions: vec![false],
            attention_heads: 1,
            attention_features: 2,
            attention_multiplier: 1,
            use_attention_bottleneck: false,
            ..ModelConfig::paper()
        };
        let m = Model::random(config, 1, &Device::Cpu).unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/model_file");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("smallest_f16.safetensors");
        m.save(&p, StoreDType::F16).unwrap();
        let size = std::fs::metadata(&p).unwrap().len();
        assert!(size < 64_000, "{size} bytes");
        assert_eq!(Model::load(&p, &Device::Cpu).unwrap().id(), Model::load(&p, &Device::Cpu).unwrap().id());
    }
}
