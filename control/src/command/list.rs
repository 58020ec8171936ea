//! `aetherctl list`: functions, their instances per core and their states.

use shm_abi::message::{Command, ReplyBody};

use super::{unexpected, Context, QUERY_TIMEOUT};
use crate::cli::Output;
use crate::CtlError;

pub(crate) fn run(ctx: &Context, output: Output) -> Result<(), CtlError> {
    let body = ctx.call(Command::List, QUERY_TIMEOUT)?;
    let ReplyBody::List { functions } = body else {
        return Err(unexpected("list", &body));
    };
    match output {
        Output::Json => {
            let doc: Vec<_> = functions
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "id": f.id,
                        "trigger_port": f.trigger_port,
                        "instances": f.instances.iter().map(|i| serde_json::json!({
                            "instance_id": i.instance_id,
                            "core": i.core,
                            "state": i.state,
                            "pid": i.pid,
                            "restarts": i.restarts,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            println!("{}", serde_json::Value::Array(doc));
        }
        Output::Table => {
            println!(
                "{:<24} {:>6} {:>10} {:>5} {:<12} {:>8} {:>8}",
                "FUNCTION", "PORT", "INSTANCE", "CORE", "STATE", "PID", "RESTARTS"
            );
            for f in &functions {
                if f.instances.is_empty() {
                    println!(
                        "{:<24} {:>6} {:>10} {:>5} {:<12} {:>8} {:>8}",
                        f.id, f.trigger_port, "-", "-", "none", "-", "-"
                    );
                }
                for i in &f.instances {
                    println!(
                        "{:<24} {:>6} {:>10} {:>5} {:<12} {:>8} {:>8}",
                        f.id, f.trigger_port, i.instance_id, i.core, i.state, i.pid, i.restarts
                    );
                }
            }
        }
    }
    Ok(())
}
