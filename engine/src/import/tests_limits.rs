//! The importer's limits: every size a checkpoint states is checked before it is allocated, and
//! every structure it describes is bounded (see docs/fuzzing.md for the caps).

use super::*;
use std::io::Write;

fn err_text(r: Result<ImportedCheckpoint>) -> String {
    format!("{:#}", r.expect_err("import should fail"))
}

/// Protocol-2 BINUNICODE.
fn s(x: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((x.len() as u32).to_le_bytes());
    v.extend(x.as_bytes());
    v
}

/// A zip torch archive under `archive/`, each entry deflated or stored.
fn zip_bytes(entries: &[(&str, &[u8])], deflate: bool) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
    let opts = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in entries {
        z.start_file(format!("archive/{name}"), opts).unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// `{'hyper_parameters': {'in_channels': 1}, 'state_dict': {'model.unet.w': <tensor>}}` with the
/// tensor's persistent id ending in `numel` and its size/stride given as pickle ops.
fn checkpoint_pickle(numel: &[u8], size_stride: &[u8]) -> Vec<u8> {
    let mut pkl = b"\x80\x02}(".to_vec();
    pkl.extend(s("hyper_parameters"));
    pkl.extend(b"}(");
    pkl.extend(s("in_channels"));
    pkl.extend(b"K\x01u");
    pkl.extend(s("state_dict"));
    pkl.extend(b"}(");
    pkl.extend(s("model.unet.w"));
    pkl.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
    pkl.extend(s("storage"));
    pkl.extend(b"ctorch\nFloatStorage\n");
    pkl.extend(s("0"));
    pkl.extend(s("cpu"));
    pkl.extend(numel);
    pkl.extend(b"tQK\x00");
    pkl.extend(size_stride);
    pkl.extend(b"\x89)tRuu.");
    pkl
}

fn import(bytes: &[u8], limits: &ImportLimits) -> Result<ImportedCheckpoint> {
    read_lightning_checkpoint_bytes(bytes, "test.ckpt", limits)
}

#[test]
fn a_pickle_entry_past_the_cap_is_refused_naming_it() {
    let small = ImportLimits { max_pickle_bytes: 1024, ..Default::default() };
    // 4 KiB of zeros deflate to a few bytes: the entry's declared size is over the cap
    let e = err_text(import(&zip_bytes(&[("data.pkl", &[0u8; 4096])], true), &small));
    assert!(e.contains("archive entry 'archive/data.pkl' declares 4096 bytes"), "{e}");
    assert!(e.contains("1024-byte limit (MAX_PICKLE_BYTES)"), "{e}");
}

#[test]
fn an_entry_that_inflates_past_its_declared_size_is_stopped_at_the_cap() {
    // The header claims 100 bytes but the entry holds 4096: it is read through take(cap + 1),
    // so reading stops at 1025 bytes whatever the header says.
    let mut z = zip_bytes(&[("data.pkl", &[b'N'; 4096])], false);
    let mut patched = 0;
    for sig in [&b"PK\x03\x04"[..], &b"PK\x01\x02"[..]] {
        // uncompressed size: offset 22 in a local header, 24 in a central directory header
        let at = z.windows(4).position(|w| w == sig).unwrap() + if sig[2] == 3 { 22 } else { 24 };
        z[at..at + 4].copy_from_slice(&100u32.to_le_bytes());
        patched += 1;
    }
    assert_eq!(patched, 2);
    let small = ImportLimits { max_pickle_bytes: 1024, ..Default::default() };
    let e = err_text(import(&z, &small));
    assert!(e.contains("'archive/data.pkl' inflates to more bytes than its header declares"), "{e}");
}

#[test]
fn storage_sizes_are_checked_against_the_pickle_before_reading() {
    let shape = b"K\x04\x85K\x01\x85";
    // the pickle says 4 floats (16 bytes), the entry holds 32
    let pkl = checkpoint_pickle(b"K\x04", shape);
    let e = err_text(import(&zip_bytes(&[("data.pkl", &pkl), ("data/0", &[0u8; 32])], false), &ImportLimits::default()));
    assert!(e.contains("archive entry 'archive/data/0' holds 32 bytes but the pickle says its storage has 16"), "{e}");

    // the pickle claims a 2^40-element storage: refused by the cap before the zip is asked
    let pkl = checkpoint_pickle(b"\x8a\x06\x00\x00\x00\x00\x00\x01", shape);
    let e = err_text(import(&zip_bytes(&[("data.pkl", &pkl), ("data/0", &[0u8; 16])], false), &ImportLimits::default()));
    assert!(e.contains("gives storage 'archive/data/0' 4398046511104 bytes"), "{e}");
    assert!(e.contains("(MAX_STORAGE_BYTES)"), "{e}");

    // it fits: the same checkpoint with a truthful storage imports
    let pkl = checkpoint_pickle(b"K\x04", shape);
    let ck = import(&zip_bytes(&[("data.pkl", &pkl), ("data/0", &[0u8; 16])], false), &ImportLimits::default()).unwrap();
    assert_eq!(ck.tensors[0].1, vec![4]);
}

#[test]
fn huge_or_broadcast_tensor_views_are_refused() {
    let storage = [0u8; 16];
    // size (2^40,), stride (0,): past the total values cap, refused before any storage is read
    let pkl = checkpoint_pickle(b"K\x04", b"\x8a\x06\x00\x00\x00\x00\x00\x01\x85K\x00\x85");
    let e = err_text(import(&zip_bytes(&[("data.pkl", &pkl), ("data/0", &storage)], false), &ImportLimits::default()));
    assert!(e.contains("tensor 'w' (size [1099511627776]) takes the checkpoint past 2147483648 values"), "{e}");
    assert!(e.contains("MAX_CHECKPOINT_VALUES"), "{e}");

    // size (1000,), stride (0,) over a 4-element storage: a broadcast view
    let pkl = checkpoint_pickle(b"K\x04", b"M\xe8\x03\x85K\x00\x85");
    let e = err_text(import(&zip_bytes(&[("data.pkl", &pkl), ("data/0", &storage)], false), &ImportLimits::default()));
    assert!(e.contains("has more elements than its storage (4)"), "{e}");

    // sizes whose product overflows
    let pkl = checkpoint_pickle(b"K\x04", b"\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40\x8a\x08\x00\x00\x00\x00\x00\x00\x00\x40\x86K\x01K\x01\x86");
    let e = err_text(import(&zip_bytes(&[("data.pkl", &pkl), ("data/0", &storage)], false), &ImportLimits::default()));
    assert!(e.contains("takes the checkpoint past"), "{e}");
}

/// `n` lists, each appended into the one before: nested `n` deep.
fn nested_lists(n: usize) -> Vec<u8> {
    let mut p = b"\x80\x02".to_vec();
    p.extend(std::iter::repeat_n(b']', n));
    p.extend(std::iter::repeat_n(b'a', n - 1));
    p.push(b'.');
    p
}

#[test]
fn a_million_nested_lists_do_not_overflow_the_stack() {
    // Reading, converting and dropping run on the test thread's small stack.
    let v = pickle::unpickle(&nested_lists(1_000_000)).unwrap();
    assert_eq!(v.kind(), "list");
    let e = pickle::to_json_checked(&v).unwrap_err().to_string();
    assert!(e.contains("nested more than 48 levels deep"), "{e}");
    drop(v);

    // as hyper-parameters of a checkpoint: a clear error
    let mut pkl = b"\x80\x02}(".to_vec();
    pkl.extend(s("hyper_parameters"));
    pkl.extend(&nested_lists(100_000)[2..]);
    pkl.pop(); // STOP
    pkl.extend(b"u.");
    let e = err_text(import(&zip_bytes(&[("data.pkl", &pkl)], false), &ImportLimits::default()));
    assert!(e.contains("cannot read hyper_parameters: nested more than 48 levels deep"), "{e}");
}

#[test]
fn shared_containers_cannot_blow_up_the_json() {
    // L0 = []; L(i) = [L(i-1), L(i-1)]: 2^60 values when written out, 60 levels deep
    let mut p = b"\x80\x02]q\x00".to_vec();
    for i in 1..=40u8 {
        p.extend([b']', b'(', b'h', i - 1, b'h', i - 1, b'e', b'q', i]);
    }
    p.push(b'.');
    let v = pickle::unpickle(&p).unwrap();
    let t = std::time::Instant::now();
    let e = pickle::to_json_checked(&v).unwrap_err().to_string();
    assert!(e.contains("more than 1048576 values"), "{e}");
    assert!(t.elapsed().as_secs() < 20, "{:?}", t.elapsed());
    // the lenient form gives a placeholder instead
    assert!(pickle::to_json(&v).as_str().unwrap().contains("more than 1048576 values"));
}

#[test]
fn opcode_stack_and_copy_counts_are_bounded() {
    // 2.2M x (NONE, POP): more opcodes than MAX_OPS
    let mut p = b"\x80\x02".to_vec();
    p.extend(b"N0".repeat(2_200_000));
    p.push(b'.');
    let e = pickle::unpickle(&p).unwrap_err().to_string();
    assert!(e.contains(&format!("more than {} opcodes", pickle::MAX_OPS)), "{e}");

    // more NONEs on the stack than MAX_STACK
    let mut p = b"\x80\x02".to_vec();
    p.extend(vec![b'N'; pickle::MAX_STACK + 10]);
    p.push(b'.');
    let e = pickle::unpickle(&p).unwrap_err().to_string();
    assert!(e.contains(&format!("more than {} values on its stack", pickle::MAX_STACK)), "{e}");

    // a 1000-item tuple passed to list() 5000 times: 5M copies from 40 KB
    let mut p = b"\x80\x02(".to_vec();
    p.extend(vec![b'N'; 1000]);
    p.extend(b"tq\x00cbuiltins\nlist\nq\x01");
    for _ in 0..5000 {
        p.extend(b"h\x01(h\x00tR0");
    }
    p.extend(b"N.");
    let e = pickle::unpickle(&p).unwrap_err().to_string();
    assert!(e.contains(&format!("copies more than {} values", pickle::MAX_COPIED_VALUES)), "{e}");

    // lengths are checked against the bytes left, before anything is allocated
    let e = pickle::unpickle(b"\x80\x02X\xff\xff\xff\xff.").unwrap_err().to_string();
    assert!(e.contains("truncated (a 4294967295-byte item"), "{e}");
    let e = pickle::unpickle(b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\x00\x00N.").unwrap_err().to_string();
    assert!(e.contains("truncated (a 281474976710655-byte item"), "{e}");
    let e = pickle::unpickle(b"\x80\x04\x8e\x00\x00\x00\x00\x00\x00\x00\x80N.").unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
}
