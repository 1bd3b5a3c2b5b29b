//! Parsing of what a user types for a job: `--given NAME=FILE`, `--constrained-source`, and
//! sampler settings as JSON (`msdm export --defaults`, a model file's `defaults`). It lives in
//! the engine, free of the CLI's argument parser, so a fuzzer (and the plugin) can call it.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::tasks::Settings;

/// What `--given NAME=FILE` gives for one stem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GivenStem {
    /// `NAME=silence`: the stem stays silent.
    Silence,
    /// `NAME=FILE`: the stem's audio file.
    File(PathBuf),
}

/// Parses `--given` arguments against the model's stem names: one entry per stem, in stem order
/// (`None` for the stems to generate). Refuses a malformed argument, an unknown stem, a stem given
/// twice and a list with no audio at all (silence alone gives no length).
pub fn parse_given(given: &[String], stems: &[String]) -> Result<Vec<Option<GivenStem>>> {
    let mut out: Vec<Option<GivenStem>> = vec![None; stems.len()];
    for g in given {
        let (name, file) =
            g.split_once('=').with_context(|| format!("--given '{g}': expected NAME=FILE, e.g. --given drums=drums.wav"))?;
        let i = crate::stem_index(stems, name).map_err(|e| anyhow::anyhow!("--given '{g}': {e}"))?;
        if out[i].is_some() {
            bail!("--given: stem '{name}' is given twice");
        }
        if file.is_empty() {
            bail!("--given '{g}': no file after '='; give a file, e.g. --given {name}={name}.wav, or {name}=silence");
        }
        out[i] = Some(if file == "silence" { GivenStem::Silence } else { GivenStem::File(PathBuf::from(file)) });
    }
    if !out.iter().any(|g| matches!(g, Some(GivenStem::File(_)))) {
        bail!("impute needs at least one --given NAME=FILE with audio (silence alone gives no length)");
    }
    Ok(out)
}

/// `--constrained-source`: a stem index or name.
pub fn constrained_index(stems: &[String], name: &str) -> Result<usize> {
    match name.parse::<usize>() {
        Ok(i) if i < stems.len() => Ok(i),
        Ok(i) => bail!("--constrained-source {i}: the model has stems 0..{}", stems.len().saturating_sub(1)),
        Err(_) => crate::stem_index(stems, name).map_err(|e| anyhow::anyhow!("--constrained-source {e}")),
    }
}

/// Sampler settings from JSON (a `defaults` entry), checked with [`Settings::validate`].
pub fn parse_settings(json: &serde_json::Value) -> Result<Settings> {
    let s: Settings = serde_json::from_value(json.clone()).context("not a valid settings object")?;
    s.validate()?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stems() -> Vec<String> {
        crate::STEMS.iter().map(|s| s.to_string()).collect()
    }

    fn given(args: &[&str]) -> Result<Vec<Option<GivenStem>>> {
        parse_given(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>(), &stems())
    }

    #[test]
    fn given_arguments_parse_per_stem() {
        let g = given(&["drums=d.wav", "piano=silence", "bass=a=b.wav"]).unwrap();
        assert_eq!(g[0], Some(GivenStem::File("a=b.wav".into())));
        assert_eq!(g[1], Some(GivenStem::File("d.wav".into())));
        assert_eq!(g[2], None);
        assert_eq!(g[3], Some(GivenStem::Silence));
        let e = |args: &[&str]| format!("{:#}", given(args).unwrap_err());
        assert!(e(&["drums"]).contains("--given 'drums': expected NAME=FILE"));
        assert!(e(&["vocals=x.wav"]).contains("'vocals' is not one of the model's stems (bass, drums, guitar, piano)"));
        assert!(e(&["drums=a.wav", "drums=silence"]).contains("stem 'drums' is given twice"));
        assert!(e(&["drums="]).contains("no file after '='"));
        assert!(e(&["drums=silence"]).contains("at least one --given NAME=FILE with audio"));
        assert!(e(&[]).contains("at least one --given"));
    }

    #[test]
    fn constrained_source_by_index_or_name() {
        assert_eq!(constrained_index(&stems(), "2").unwrap(), 2);
        assert_eq!(constrained_index(&stems(), "piano").unwrap(), 3);
        assert!(constrained_index(&stems(), "4").unwrap_err().to_string().contains("the model has stems 0..3"));
        assert!(constrained_index(&[], "0").unwrap_err().to_string().contains("stems 0..0"));
        assert!(constrained_index(&stems(), "18446744073709551616").unwrap_err().to_string().contains("not one of"));
    }

    #[test]
    fn settings_are_capped() {
        let mut v = serde_json::to_value(Settings::separation()).unwrap();
        assert_eq!(parse_settings(&v).unwrap(), Settings::separation());
        v["steps"] = serde_json::json!(1_000_000_000_000u64);
        let e = format!("{:#}", parse_settings(&v).unwrap_err());
        assert!(e.contains("at most 10000 steps"), "{e}");
        let mut v = serde_json::to_value(Settings::separation()).unwrap();
        v["batch"] = serde_json::json!(1 << 20);
        assert!(format!("{:#}", parse_settings(&v).unwrap_err()).contains("at most 1024"));
        v["batch"] = serde_json::json!("eight");
        assert!(format!("{:#}", parse_settings(&v).unwrap_err()).contains("not a valid settings object"));
    }
}
