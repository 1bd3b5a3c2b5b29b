//! Runs one host scenario against the plugin library (see `msdm_tests::scenarios`).
fn main() {
    let name = std::env::args().nth(1).unwrap_or_default();
    if let Err(e) = msdm_tests::scenarios::run(&name) {
        eprintln!("scenario {name} failed: {e:#}");
        std::process::exit(1);
    }
    println!("scenario {name} passed");
}
