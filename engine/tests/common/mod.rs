//! The SoundFont the synthesiser tests render with (the Debian package timgm6mb-soundfont, which
//! .ci/run installs; `MSDM_TEST_SOUNDFONT` picks another).

use std::path::PathBuf;

const TEST_SF: &str = "/usr/share/sounds/sf2/TimGM6mb.sf2";

pub fn soundfont() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var("MSDM_TEST_SOUNDFONT").unwrap_or_else(|_| TEST_SF.to_string()));
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skipping: no SoundFont at {} (apt-get install timgm6mb-soundfont)", p.display());
        None
    }
}
