//! Every input the fuzzers found a crash, out-of-memory or timeout with (fuzz/, docs/fuzzing.md)
//! is kept in tests/fixtures/fuzz/<target>/<name>, next to <name>.expect: a piece of the error it
//! must now give. Each input goes through the same entry point as its fuzz target.

use std::path::Path;

fn run_target(target: &str, data: &[u8]) -> anyhow::Result<()> {
    match target {
        "import_checkpoint" => {
            let limits = msdm::import::ImportLimits::default();
            msdm::import::read_lightning_checkpoint_bytes(data, "fuzz.ckpt", &limits).map(|_| ())
        }
        "model_file" => msdm::model_file::Model::from_bytes(data, &candle_core::Device::Cpu).map(|_| ()),
        "audio_decode" => msdm::audio::read_audio_bytes(data.to_vec(), "fuzz-input", &Default::default()).map(|_| ()),
        "pickle" => msdm::import::pickle::unpickle(data).and_then(|v| msdm::import::pickle::to_json_checked(&v)).map(|_| ()),
        "cli_given" => {
            let text = String::from_utf8_lossy(data);
            let stems: Vec<String> = msdm::STEMS.iter().map(|s| s.to_string()).collect();
            let given: Vec<String> = text.lines().map(str::to_string).collect();
            msdm::args::parse_given(&given, &stems).map(|_| ())
        }
        other => panic!("unknown fuzz target folder '{other}'"),
    }
}

#[test]
fn fuzz_findings_give_clear_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut seen = 0;
    let Ok(targets) = std::fs::read_dir(&root) else { return };
    for target in targets {
        let target = target.unwrap().path();
        let name = target.file_name().unwrap().to_str().unwrap().to_string();
        for input in std::fs::read_dir(&target).unwrap() {
            let input = input.unwrap().path();
            if input.extension().is_some_and(|e| e == "expect") {
                continue;
            }
            let expect_path = input.with_extension("expect");
            let expect = std::fs::read_to_string(&expect_path)
                .unwrap_or_else(|_| panic!("{} has no {}", input.display(), expect_path.display()));
            let data = std::fs::read(&input).unwrap();
            let err = match run_target(&name, &data) {
                Ok(()) => panic!("{} should be refused", input.display()),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains(expect.trim()), "{}: expected '{}' in: {err}", input.display(), expect.trim());
            seen += 1;
        }
    }
    eprintln!("{seen} fuzz findings checked");
}
