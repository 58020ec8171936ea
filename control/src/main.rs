//! `aetherctl`: thin entry point; everything lives in the `control` library.
fn main() -> std::process::ExitCode {
    control::run()
}
