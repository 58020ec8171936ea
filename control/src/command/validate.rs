//! `aetherctl validate FILE`: print OK or every error; exit 3 on errors.

use std::path::Path;

use super::Context;
use crate::CtlError;

pub(crate) fn run(ctx: &Context, file: Option<&Path>) -> Result<(), CtlError> {
    let path = file
        .map(Path::to_path_buf)
        .or_else(|| ctx.config.clone())
        .ok_or_else(|| {
            CtlError::Failed("validate needs a file: `aetherctl validate FILE` or -c FILE".into())
        })?;
    match config::load_file(&path) {
        Ok(cfg) => {
            println!(
                "OK: {} ({} function(s))",
                path.display(),
                cfg.functions.len()
            );
            Ok(())
        }
        Err(errors) => Err(CtlError::InvalidConfig(errors)),
    }
}
