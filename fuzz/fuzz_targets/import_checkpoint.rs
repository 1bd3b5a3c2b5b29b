//! Bytes → `msdm import`'s checkpoint reader (zip + pickle + tensors + hyper-parameters).
//!
//! Input with a zip signature is read as a whole checkpoint. Anything else is taken as the pickle:
//! it is wrapped into a valid archive (with two small storages, keys "0" and "1") so that
//! mutations reach the pickle machine instead of stopping at the zip's CRC check.
#![no_main]

use libfuzzer_sys::fuzz_target;
use msdm::import::{read_lightning_checkpoint_bytes, ImportLimits};
use std::io::Write;

fn wrap(pkl: &[u8]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(pkl).unwrap();
    z.start_file("archive/data/0", opts).unwrap();
    z.write_all(&[0x3f; 96]).unwrap();
    z.start_file("archive/data/1", opts).unwrap();
    z.write_all(&[0x40; 16]).unwrap();
    z.finish().unwrap().into_inner()
}

fuzz_target!(|data: &[u8]| {
    let limits = ImportLimits::default();
    if data.starts_with(b"PK") {
        let _ = read_lightning_checkpoint_bytes(data, "fuzz.ckpt", &limits);
    } else {
        let _ = msdm::import::pickle::unpickle(data).map(|v| msdm::import::pickle::to_json(&v));
        let _ = read_lightning_checkpoint_bytes(&wrap(data), "fuzz.ckpt", &limits);
    }
});
