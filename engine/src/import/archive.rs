//! The zip container written by `torch.save` (PyTorch ≥ 1.6): `<top>/data.pkl` holds the pickled
//! object tree and `<top>/data/<key>` the raw little-endian storages. `<top>` is the file's stem at
//! save time, so it varies and is discovered here.

use super::pickle::{StorageDtype, TensorRef};
use super::ImportLimits;
use anyhow::{bail, Context, Result};
use std::io::{Read, Seek, SeekFrom};

pub struct TorchArchive<R: Read + Seek> {
    zip: zip::ZipArchive<R>,
    /// `<top>/`, including the slash (empty if the pickle sits at the root).
    prefix: String,
    source: String,
    limits: ImportLimits,
    /// The archive's real size in bytes: no entry can hold more compressed data than this.
    file_len: u64,
}

/// Deflate's largest possible expansion (a 2-bit code per 258-byte run): an entry cannot inflate
/// to more than this many times its compressed size, so no buffer is sized past that.
const MAX_DEFLATE_RATIO: u64 = 1032;

impl<R: Read + Seek> TorchArchive<R> {
    /// Opens the archive read from `reader`; `source` names it in errors.
    pub fn new(mut reader: R, source: &str, limits: &ImportLimits) -> Result<Self> {
        let source = source.to_string();
        let mut magic = [0u8; 4];
        let n = reader.read(&mut magic).with_context(|| format!("cannot read checkpoint '{source}'"))?;
        if n >= 2 && magic[0] == 0x80 && magic[1] <= 5 {
            bail!(
                "'{source}' is a legacy (pre-zip) torch.save file, not a zip torch checkpoint; re-save it with \
                 PyTorch >= 1.6: torch.save(torch.load(p, weights_only=False), p)"
            );
        }
        if n < 4 || &magic != b"PK\x03\x04" {
            bail!("'{source}' is not a zip torch checkpoint (no zip signature); expected a PyTorch Lightning .ckpt file");
        }
        let file_len = reader.seek(SeekFrom::End(0)).with_context(|| format!("cannot read checkpoint '{source}'"))?;
        reader.seek(SeekFrom::Start(0)).with_context(|| format!("cannot read checkpoint '{source}'"))?;
        let zip = zip::ZipArchive::new(reader).with_context(|| {
            format!("'{source}' is not a readable zip torch checkpoint (truncated or corrupted download?)")
        })?;
        let pkl = zip
            .file_names()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| n.len())
            .map(str::to_string)
            .with_context(|| format!("'{source}' is a zip file but not a torch checkpoint (no data.pkl inside)"))?;
        let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
        let mut archive = Self { zip, prefix, source, limits: limits.clone(), file_len };
        if let Ok(order) = archive.read_entry("byteorder", 16, "for a byteorder entry") {
            if order.trim_ascii() == b"big" {
                bail!("'{}' was saved on a big-endian machine; this is not supported", archive.source);
            }
        }
        Ok(archive)
    }

    /// Reads entry `<top>/name`, refusing (before allocating) an entry that declares or inflates
    /// to more than `cap` bytes: the zip header's size is a claim, so the data is read through
    /// `take(cap + 1)` as well. `cap_name` is the limit's name for the error message.
    fn read_entry(&mut self, name: &str, cap: u64, cap_name: &str) -> Result<Vec<u8>> {
        let full = format!("{}{name}", self.prefix);
        let source = &self.source;
        let f = self.zip.by_name(&full).with_context(|| format!("'{source}': missing archive entry '{full}'"))?;
        let declared = f.size();
        let too_big = |size: &str| {
            anyhow::anyhow!(
                "'{source}': archive entry '{full}' {size}, more than the {cap}-byte limit {cap_name}: \
                 not a checkpoint this program can import (a damaged or hostile file?)"
            )
        };
        if declared > cap {
            return Err(too_big(&format!("declares {declared} bytes")));
        }
        let compressed = f.compressed_size();
        if compressed > self.file_len {
            bail!(
                "'{source}': archive entry '{full}' claims {compressed} bytes of data but the file has only {}: \
                 truncated or corrupted download (download it again)",
                self.file_len
            );
        }
        // The declared size is trusted only as far as the compressed data could really provide.
        let mut buf = Vec::with_capacity(declared.min(compressed.saturating_mul(MAX_DEFLATE_RATIO)) as usize);
        f.take(cap + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("'{source}': cannot read archive entry '{full}' (corrupted file?)"))?;
        if buf.len() as u64 > cap {
            return Err(too_big("inflates to more bytes than its header declares"));
        }
        Ok(buf)
    }

    /// The pickled object tree.
    pub fn data_pkl(&mut self) -> Result<Vec<u8>> {
        self.read_entry("data.pkl", self.limits.max_pickle_bytes, "(MAX_PICKLE_BYTES)")
    }

    /// Raw bytes of the storage with this key; `expected` is the size in bytes the pickle gives
    /// it, if it does. A storage of another size is refused before it is read.
    pub fn storage(&mut self, key: &str, expected: Option<u64>) -> Result<Vec<u8>> {
        let full = format!("{}data/{key}", self.prefix);
        if let Some(expected) = expected {
            if expected > self.limits.max_storage_bytes {
                bail!(
                    "'{}': the pickle gives storage '{full}' {expected} bytes, more than the {}-byte limit (MAX_STORAGE_BYTES): \
                     not a checkpoint this program can import (a damaged or hostile file?)",
                    self.source,
                    self.limits.max_storage_bytes
                );
            }
            let declared = self.zip.by_name(&full).map(|f| f.size()).ok();
            if let Some(declared) = declared.filter(|&d| d != expected) {
                bail!(
                    "'{}': archive entry '{full}' holds {declared} bytes but the pickle says its storage has {expected}: \
                     corrupted checkpoint (download it again)",
                    self.source
                );
            }
        }
        let (cap, cap_name) = match expected {
            Some(e) => (e, "(the storage size the pickle gives)"),
            None => (self.limits.max_storage_bytes, "(MAX_STORAGE_BYTES)"),
        };
        let bytes = self.read_entry(&format!("data/{key}"), cap, cap_name)?;
        if let Some(expected) = expected.filter(|&e| e != bytes.len() as u64) {
            bail!(
                "'{}': archive entry '{full}' inflates to {} bytes but the pickle says its storage has {expected}: \
                 corrupted checkpoint (download it again)",
                self.source,
                bytes.len()
            );
        }
        Ok(bytes)
    }
}

fn element(bytes: &[u8], dtype: StorageDtype, i: usize) -> f32 {
    match dtype {
        StorageDtype::F32 => f32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()),
        StorageDtype::F16 => half::f16::from_le_bytes(bytes[2 * i..2 * i + 2].try_into().unwrap()).to_f32(),
        StorageDtype::BF16 => half::bf16::from_le_bytes(bytes[2 * i..2 * i + 2].try_into().unwrap()).to_f32(),
        StorageDtype::F64 => f64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().unwrap()) as f32,
    }
}

/// The number of elements of a tensor of this size, if it fits in a `usize`.
pub fn numel(size: &[usize]) -> Option<usize> {
    size.iter().try_fold(1usize, |n, &s| n.checked_mul(s))
}

/// Materialises a (possibly strided, offset) view of a storage as a contiguous f32 vector.
/// Sizes, strides and offsets come from the file, so all index arithmetic is checked, and a view
/// with more elements than its storage (a broadcast, stride-0 view) is refused: weights never
/// are one, and it would let a small storage ask for an arbitrarily large allocation.
pub fn materialize(t: &TensorRef, storage: &[u8], name: &str) -> Result<Vec<f32>> {
    let esize = t.dtype.size_in_bytes();
    if !storage.len().is_multiple_of(esize) {
        bail!("tensor '{name}': storage '{}' has {} bytes, not a multiple of {esize}", t.storage_key, storage.len());
    }
    let numel_storage = storage.len() / esize;
    let past_end = || {
        anyhow::anyhow!(
            "tensor '{name}' (size {:?}, stride {:?}, offset {}) reaches past the end of its storage ({numel_storage} elements): corrupted checkpoint",
            t.size, t.stride, t.offset
        )
    };
    let numel = numel(&t.size).ok_or_else(past_end)?;
    if numel == 0 {
        return Ok(vec![]);
    }
    if numel > numel_storage {
        bail!(
            "tensor '{name}' (size {:?}, stride {:?}) has more elements than its storage ({numel_storage}): \
             broadcast views are not supported in weights (corrupted checkpoint?)",
            t.size, t.stride
        );
    }
    let last = t
        .size
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |acc, (&s, &st)| (s - 1).checked_mul(st).and_then(|x| acc.checked_add(x)))
        .ok_or_else(past_end)?;
    if last >= numel_storage {
        return Err(past_end());
    }
    let mut contiguous = true;
    let mut expect = 1;
    for (&s, &st) in t.size.iter().zip(&t.stride).rev() {
        if s != 1 && st != expect {
            contiguous = false;
            break;
        }
        expect *= s;
    }
    if contiguous {
        let bytes = &storage[t.offset * esize..(t.offset + numel) * esize];
        return Ok(match t.dtype {
            StorageDtype::F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
            _ => (0..numel).map(|i| element(bytes, t.dtype, i)).collect(),
        });
    }
    let mut out = Vec::with_capacity(numel);
    let mut idx = vec![0usize; t.size.len()];
    for _ in 0..numel {
        let pos = t.offset + idx.iter().zip(&t.stride).map(|(&i, &st)| i * st).sum::<usize>();
        out.push(element(storage, t.dtype, pos));
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < t.size[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(out)
}
