//! `aether`: the original project's CLI name, kept so its quickstart works unchanged.
fn main() -> std::process::ExitCode {
    control::run()
}
