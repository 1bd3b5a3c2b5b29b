//! Text → what a user types for a job: the lines as `--given NAME=FILE` arguments, the text as a
//! `--constrained-source` value, and the text as settings JSON (whole, and each job's entry of a
//! `defaults` object).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let stems: Vec<String> = msdm::STEMS.iter().map(|s| s.to_string()).collect();
    let given: Vec<String> = text.lines().map(str::to_string).collect();
    let _ = msdm::args::parse_given(&given, &stems);
    let _ = msdm::args::constrained_index(&stems, &text);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        let _ = msdm::args::parse_settings(&v);
        for key in ["separate", "generate", "impute"] {
            if let Some(s) = v.get(key) {
                let _ = msdm::args::parse_settings(s);
            }
        }
    }
});
