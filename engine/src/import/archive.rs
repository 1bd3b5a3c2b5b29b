//! The zip container written by `torch.save` (PyTorch ≥ 1.6): `<top>/data.pkl` holds the pickled
//! object tree and `<top>/data/<key>` the raw little-endian storages. `<top>` is the file's stem at
//! save time, so it varies and is discovered here.

use super::pickle::{StorageDtype, TensorRef};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

pub struct TorchArchive {
    zip: zip::ZipArchive<BufReader<File>>,
    /// `<top>/`, including the slash (empty if the pickle sits at the root).
    prefix: String,
    source: String,
}

impl TorchArchive {
    pub fn open(path: &Path) -> Result<Self> {
        let source = path.display().to_string();
        let mut file = File::open(path).with_context(|| format!("cannot open checkpoint '{source}'"))?;
        let mut magic = [0u8; 4];
        let n = file.read(&mut magic).with_context(|| format!("cannot read checkpoint '{source}'"))?;
        if n >= 2 && magic[0] == 0x80 && magic[1] <= 5 {
            bail!(
                "'{source}' is a legacy (pre-zip) torch.save file, not a zip torch checkpoint; re-save it with \
                 PyTorch >= 1.6: torch.save(torch.load(p, weights_only=False), p)"
            );
        }
        if n < 4 || &magic != b"PK\x03\x04" {
            bail!("'{source}' is not a zip torch checkpoint (no zip signature); expected a PyTorch Lightning .ckpt file");
        }
        let file = File::open(path).with_context(|| format!("cannot open checkpoint '{source}'"))?;
        let zip = zip::ZipArchive::new(BufReader::new(file)).with_context(|| {
            format!("'{source}' is not a readable zip torch checkpoint (truncated or corrupted download?)")
        })?;
        let pkl = zip
            .file_names()
            .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .min_by_key(|n| n.len())
            .map(str::to_string)
            .with_context(|| format!("'{source}' is a zip file but not a torch checkpoint (no data.pkl inside)"))?;
        let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
        let mut archive = Self { zip, prefix, source };
        if let Ok(order) = archive.read_entry("byteorder") {
            if order.trim_ascii() == b"big" {
                bail!("'{}' was saved on a big-endian machine; this is not supported", archive.source);
            }
        }
        Ok(archive)
    }

    fn read_entry(&mut self, name: &str) -> Result<Vec<u8>> {
        let full = format!("{}{name}", self.prefix);
        let mut f = self.zip.by_name(&full).with_context(|| format!("'{}': missing archive entry '{full}'", self.source))?;
        let mut buf = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut buf).with_context(|| format!("'{}': cannot read archive entry '{full}' (corrupted file?)", self.source))?;
        Ok(buf)
    }

    /// The pickled object tree.
    pub fn data_pkl(&mut self) -> Result<Vec<u8>> {
        self.read_entry("data.pkl")
    }

    /// Raw bytes of the storage with this key.
    pub fn storage(&mut self, key: &str) -> Result<Vec<u8>> {
        self.read_entry(&format!("data/{key}"))
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

/// Materialises a (possibly strided, offset) view of a storage as a contiguous f32 vector.
pub fn materialize(t: &TensorRef, storage: &[u8], name: &str) -> Result<Vec<f32>> {
    let esize = t.dtype.size_in_bytes();
    if !storage.len().is_multiple_of(esize) {
        bail!("tensor '{name}': storage '{}' has {} bytes, not a multiple of {esize}", t.storage_key, storage.len());
    }
    let numel_storage = storage.len() / esize;
    let numel: usize = t.size.iter().product();
    if numel == 0 {
        return Ok(vec![]);
    }
    let last = t.offset + t.size.iter().zip(&t.stride).map(|(&s, &st)| (s - 1) * st).sum::<usize>();
    if last >= numel_storage {
        bail!(
            "tensor '{name}' (size {:?}, stride {:?}, offset {}) reaches past the end of its storage ({numel_storage} elements): corrupted checkpoint",
            t.size, t.stride, t.offset
        );
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
