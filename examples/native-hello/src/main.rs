//! `hello-native [--port PORT] [--bind ADDR] [--threads N]`
//!
//! Under aetherd (`AETHER_SOCKET` set): binds `0.0.0.0:$AETHER_TRIGGER_PORT`,
//! sends `READY`, serves. Run directly (no `AETHER_SOCKET`): skips the
//! handshake; the port is `--port`, else `AETHER_TRIGGER_PORT`, else 8080.
//!
//! Exit codes: 0 never (it serves until killed), 1 on a runtime error,
//! 2 on bad arguments.

use native_hello::{handshake, server};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::ExitCode;
use thiserror::Error;

#[derive(Debug, Error)]
enum MainError {
    #[error("{0}\nusage: hello-native [--port PORT] [--bind ADDR] [--threads N]")]
    Usage(String),
    #[error("cannot listen on {addr}: {source}; is another process using the port?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Handshake(#[from] handshake::HandshakeError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
}

#[derive(Debug)]
struct Args {
    addr: SocketAddr,
    threads: usize,
}

fn parse_args() -> Result<Args, MainError> {
    let mut port: Option<u16> = None;
    let mut bind = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut threads = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| MainError::Usage(format!("{name} needs a value")))
        };
        match flag.as_str() {
            "--port" => {
                let v = value("--port")?;
                port = Some(
                    v.parse()
                        .map_err(|_| MainError::Usage(format!("bad --port {v:?}")))?,
                );
            }
            "--bind" => {
                let v = value("--bind")?;
                bind = v
                    .parse()
                    .map_err(|_| MainError::Usage(format!("bad --bind {v:?}")))?;
            }
            "--threads" => {
                let v = value("--threads")?;
                threads = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| MainError::Usage(format!("bad --threads {v:?}")))?;
            }
            "-h" | "--help" => {
                return Err(MainError::Usage(
                    "hello-native: the quickstart handler, compiled".into(),
                ))
            }
            other => return Err(MainError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    let port = match port {
        Some(p) => p,
        None => match std::env::var("AETHER_TRIGGER_PORT") {
            Ok(v) => v
                .parse()
                .map_err(|_| MainError::Usage(format!("bad AETHER_TRIGGER_PORT {v:?}")))?,
            Err(_) => 8080,
        },
    };
    Ok(Args {
        addr: SocketAddr::new(bind, port),
        threads,
    })
}

fn run(args: &Args) -> Result<(), MainError> {
    // Bind first: READY then means the port already accepts connections.
    let listener = TcpListener::bind(args.addr).map_err(|source| MainError::Bind {
        addr: args.addr,
        source,
    })?;
    // Held open while serving, as hello.py keeps its socket.
    let _ready = match std::env::var_os("AETHER_SOCKET") {
        Some(path) => Some(handshake::announce_ready(&PathBuf::from(path))?),
        None => None,
    };
    server::serve(listener, args.threads)?;
    Ok(())
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| run(&args));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ MainError::Usage(_)) => {
            eprintln!("hello-native: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("hello-native: {e}");
            ExitCode::FAILURE
        }
    }
}
