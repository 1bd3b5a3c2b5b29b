use super::*;
use std::io::Write;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/parity")
}

fn tensor<'a>(ck: &'a ImportedCheckpoint, name: &str) -> &'a (String, Vec<usize>, Vec<f32>) {
    ck.tensors.iter().find(|t| t.0 == name).unwrap_or_else(|| panic!("tensor {name} missing"))
}

fn err_text(r: Result<ImportedCheckpoint>) -> String {
    format!("{:#}", r.expect_err("import should fail"))
}

/// Writes a zip torch archive with this pickle (and optional storages) under `top/`.
fn write_zip(path: &Path, top: &str, pkl: &[u8], storages: &[(&str, &[u8])]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file(format!("{top}/data.pkl"), opts).unwrap();
    z.write_all(pkl).unwrap();
    for (k, b) in storages {
        z.start_file(format!("{top}/data/{k}"), opts).unwrap();
        z.write_all(b).unwrap();
    }
    z.finish().unwrap();
}

/// Protocol-2 pickle helpers.
fn s(x: &str) -> Vec<u8> {
    let mut v = vec![b'X'];
    v.extend((x.len() as u32).to_le_bytes());
    v.extend(x.as_bytes());
    v
}

#[test]
fn imports_fixture_checkpoint_with_names_shapes_and_config() {
    for name in ["msdm_tiny4", "isdm_tiny1"] {
        let dir = fixtures().join(name);
        let ck = read_lightning_checkpoint(&dir.join("model.ckpt")).unwrap();
        let expected = ModelConfig::from_json(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(ck.config, expected, "{name}: config");
        let c = &ck.config;

        // every tensor once, under its UNet1d name
        assert!(ck.tensors.iter().all(|t| !t.0.starts_with("model.") && !t.0.starts_with("diffusion.")));
        assert_eq!(ck.info["dropped_duplicates"].as_u64().unwrap() as usize, ck.tensors.len());
        let mut names: Vec<&str> = ck.tensors.iter().map(|t| t.0.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ck.tensors.len());

        // shapes follow the configuration (spec §4.5)
        assert_eq!(tensor(&ck, "to_time.0.0.weights").1, vec![c.channels / 2]);
        assert_eq!(tensor(&ck, "to_time.0.1.weight").1, vec![c.mapping_features(), c.channels + 1]);
        let f0 = c.factors[0];
        assert_eq!(
            tensor(&ck, "downsamples.0.downsample.weight").1,
            vec![c.channels * c.multipliers[1], c.channels * c.multipliers[0], f0 * c.kernel_multiplier_downsample + 1]
        );
        let last = c.num_layers() - 1;
        assert_eq!(
            tensor(&ck, &format!("upsamples.{last}.upsample.weight")).1,
            vec![c.channels * c.multipliers[1], c.channels * c.multipliers[0], 2 * f0]
        );
        assert_eq!(tensor(&ck, "to_in.module_list.0.block.block1.project.weight").1[1], c.in_channels);
        assert_eq!(tensor(&ck, "bottleneck.attention.fn.to_q.weight").1[1], c.channels * c.multipliers[c.num_layers()]);
        for (n, shape, v) in &ck.tensors {
            assert_eq!(shape.iter().product::<usize>(), v.len(), "{n}");
            assert!(v.iter().all(|x| x.is_finite()), "{n}");
        }
        // the learned Fourier frequencies are real data (seeded normal, std 1)
        let w = &tensor(&ck, "to_time.0.0.weights").2;
        let var = w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32;
        assert!(var > 0.2, "to_time weights look empty: {w:?}");

        assert_eq!(ck.info["epoch"], 3);
        assert_eq!(ck.info["global_step"], 42);
        assert_eq!(ck.info["lightning_version"], "1.7.7");
        assert_eq!(ck.info["tensor_prefix"], "model.unet.");
        assert_eq!(ck.info["storage_dtypes"], serde_json::json!(["f32"]));
        // everything the library needs was in the hyper-parameters
        assert_eq!(ck.info["defaults_applied"], serde_json::json!(["use_context_time"]));
    }
}

#[test]
fn imports_dtypes_strides_offsets_and_nested_hparams() {
    let ck = read_lightning_checkpoint(&fixtures().join("import_edge.ckpt")).unwrap();
    let arange: Vec<f32> = (0..12).map(|i| i as f32).collect();
    for n in ["a_f16", "b_bf16", "c_f64"] {
        assert_eq!(tensor(&ck, n).1, vec![3, 4], "{n}");
        assert_eq!(tensor(&ck, n).2, arange, "{n}");
    }
    // arange(12).reshape(3,4).t(): element [i][j] = 4j + i
    let t = tensor(&ck, "d_transposed");
    assert_eq!(t.1, vec![4, 3]);
    let want: Vec<f32> = (0..4).flat_map(|i| (0..3).map(move |j| (4 * j + i) as f32)).collect();
    assert_eq!(t.2, want);
    // arange(20)[5:11].view(2,3)
    assert_eq!(tensor(&ck, "e_offset").1, vec![2, 3]);
    assert_eq!(tensor(&ck, "e_offset").2, (5..11).map(|i| i as f32).collect::<Vec<_>>());
    assert_eq!(tensor(&ck, "f_scalar").1, Vec::<usize>::new());
    assert_eq!(tensor(&ck, "f_scalar").2, vec![3.5]);
    assert_eq!(tensor(&ck, "g_param").2, vec![0.0, 1.0, 2.0]);
    assert_eq!(ck.tensors.len(), 7);
    assert_eq!(ck.info["dropped_duplicates"], 1);
    assert_eq!(ck.info["epoch"], 7);
    assert_eq!(ck.info["global_step"], 1234);
    // hyper-parameters nested under `model`, with their own σ distribution
    assert_eq!(ck.config.in_channels, 4);
    assert_eq!(ck.config.channels, 32);
    assert_eq!(ck.config.diffusion_sigma_distribution.mean, -2.5);
    assert_eq!(ck.config.diffusion_sigma_distribution.std, 1.5);
    assert_eq!(ck.config.learning_rate, Some(1e-4));
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixtures().join("isdm_tiny1/model.ckpt")).unwrap();

    let missing = err_text(read_lightning_checkpoint(&dir.path().join("nope.ckpt")));
    assert!(missing.contains("cannot open checkpoint"), "{missing}");

    let p = dir.path().join("text.ckpt");
    std::fs::write(&p, "this is not a checkpoint").unwrap();
    let e = err_text(read_lightning_checkpoint(&p));
    eprintln!("{e}");
    assert!(e.contains("not a zip torch checkpoint"), "{e}");

    let p = dir.path().join("legacy.ckpt");
    std::fs::write(&p, b"\x80\x02}q\x00.").unwrap();
    let e = err_text(read_lightning_checkpoint(&p));
    eprintln!("{e}");
    assert!(e.contains("legacy"), "{e}");

    let p = dir.path().join("truncated.ckpt");
    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    let e = err_text(read_lightning_checkpoint(&p));
    eprintln!("{e}");
    assert!(e.contains("truncated or corrupted"), "{e}");

    // flip bytes inside the tensor data: the zip CRC catches it
    let p = dir.path().join("corrupted.ckpt");
    let mut bad = good.clone();
    for b in &mut bad[good.len() / 2..good.len() / 2 + 64] {
        *b ^= 0x5a;
    }
    std::fs::write(&p, &bad).unwrap();
    let e = err_text(read_lightning_checkpoint(&p));
    eprintln!("{e}");
    assert!(e.contains("corrupted"), "{e}");

    // a zip that is not a torch archive
    let p = dir.path().join("plain.zip");
    {
        let mut z = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
        z.start_file("readme.txt", zip::write::SimpleFileOptions::default()).unwrap();
        z.write_all(b"hello").unwrap();
        z.finish().unwrap();
    }
    let e = err_text(read_lightning_checkpoint(&p));
    eprintln!("{e}");
    assert!(e.contains("no data.pkl"), "{e}");

    // a torch archive whose pickle is cut short
    let p = dir.path().join("shortpickle.ckpt");
    write_zip(&p, "x", b"\x80\x02}q\x00(X\x05\x00\x00\x00ep", &[]);
    let e = err_text(read_lightning_checkpoint(&p));
    eprintln!("{e}");
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn missing_keys_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    // {'state_dict': {}}
    let mut pkl = b"\x80\x02}(".to_vec();
    pkl.extend(s("state_dict"));
    pkl.extend(b"}u.");
    let p = dir.path().join("nohp.ckpt");
    write_zip(&p, "archive", &pkl, &[]);
    let e = err_text(read_lightning_checkpoint(&p));
    eprintln!("{e}");
    assert!(e.contains("no `hyper_parameters`"), "{e}");

    // {'hyper_parameters': {'channels': 8}, 'state_dict': {}}
    let mut pkl = b"\x80\x02}(".to_vec();
    pkl.extend(s("hyper_parameters"));
    pkl.extend(b"}(");
    pkl.extend(s("channels"));
    pkl.extend(b"K\x08u");
    pkl.extend(s("state_dict"));
    pkl.extend(b"}u.");
    let p = dir.path().join("nokey.ckpt");
    write_zip(&p, "archive", &pkl, &[]);
    let e = err_text(read_lightning_checkpoint(&p));
    eprintln!("{e}");
    assert!(e.contains("missing hyper_parameters key `in_channels`"), "{e}");

    // {'hyper_parameters': {'in_channels': 1}}: config fine (library defaults), no state_dict
    let mut pkl = b"\x80\x02}(".to_vec();
    pkl.extend(s("hyper_parameters"));
    pkl.extend(b"}(");
    pkl.extend(s("in_channels"));
    pkl.extend(b"K\x01uu.");
    let p = dir.path().join("nosd.ckpt");
    write_zip(&p, "archive", &pkl, &[]);
    let e = err_text(read_lightning_checkpoint(&p));
    eprintln!("{e}");
    assert!(e.contains("no `state_dict`"), "{e}");

    // a tensor pointing past the end of its storage
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
    pkl.extend(b"K\x04tQK\x02K\x04\x85K\x01\x85\x89)tRuu.");
    let p = dir.path().join("oob.ckpt");
    write_zip(&p, "archive", &pkl, &[("0", &[0u8; 16])]);
    let e = err_text(read_lightning_checkpoint(&p));
    eprintln!("{e}");
    assert!(e.contains("past the end of its storage"), "{e}");
}

#[test]
fn pickle_memo_shares_containers_and_dict_subclasses_keep_items() {
    // d = {}; AttributeDict(a=d) pickled with d memoised empty, filled later, fetched again:
    //   NEWOBJ(AttributeDict) + SETITEMS, then a list holding memo[1] again.
    let mut p = b"\x80\x02]q\x00(".to_vec(); // list, memo 0
    p.extend(b"cpytorch_lightning.utilities.parsing\nAttributeDict\n)\x81q\x01("); // obj, memo 1
    p.extend(s("dist"));
    p.extend(b"caudio_diffusion_pytorch.diffusion\nLogNormalDistribution\n)\x81}(");
    p.extend(s("mean"));
    p.extend(b"G\xc0\x08\x00\x00\x00\x00\x00\x00"); // -3.0
    p.extend(s("std"));
    p.extend(b"G\x3f\xf0\x00\x00\x00\x00\x00\x00ub"); // 1.0, SETITEMS, BUILD
    p.extend(b"uh\x01e."); // SETITEMS, BINGET 1, APPENDS
    let v = pickle::unpickle(&p).unwrap();
    let j = pickle::to_json(&v);
    assert_eq!(j, serde_json::json!([{"dist": {"mean": -3.0, "std": 1.0}}, {"dist": {"mean": -3.0, "std": 1.0}}]));
    // unknown opcodes are reported, not panicked on
    let e = pickle::unpickle(b"\x80\x02\xff.").unwrap_err().to_string();
    assert!(e.contains("unknown opcode 0xff"), "{e}");
}

/// Imports every `*/model.ckpt` in the folders of `MSDM_PARITY_DIR` (e.g. the paper-size fixture made
/// with `make_fixtures.py --paper`) and checks it against its `config.json`.
#[test]
#[ignore = "needs MSDM_PARITY_DIR (see tools/parity/README.md)"]
fn imports_extra_parity_dirs() {
    let dirs = std::env::var_os("MSDM_PARITY_DIR").expect("set MSDM_PARITY_DIR to run this test");
    let mut seen = 0;
    for root in std::env::split_paths(&dirs) {
        for entry in std::fs::read_dir(&root).unwrap() {
            let dir = entry.unwrap().path();
            let (ckpt, cfg) = (dir.join("model.ckpt"), dir.join("config.json"));
            if !ckpt.exists() || !cfg.exists() {
                continue;
            }
            let t0 = std::time::Instant::now();
            let ck = read_lightning_checkpoint(&ckpt).unwrap();
            let expected = ModelConfig::from_json(&std::fs::read_to_string(&cfg).unwrap()).unwrap();
            assert_eq!(ck.config, expected, "{}", dir.display());
            eprintln!("{}: {} tensors, {} parameters in {:.1?}", dir.display(), ck.tensors.len(), ck.info["num_parameters"], t0.elapsed());
            seen += 1;
        }
    }
    assert!(seen > 0, "no */model.ckpt with config.json under MSDM_PARITY_DIR");
}
