//! One aetherctl's session with aetherd over the control channel.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use shm_abi::channel::{ChannelError, ControlClient};
use shm_abi::message::{self, Command, MessageError, Reply, ReplyBody, Request};

/// Why talking to aetherd failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("aetherd is not running (no control segment at {path}); start it with `aetherctl -c FILE up`")]
    NotRunning { path: PathBuf },
    #[error("cannot use the control segment {path}: {source}")]
    Channel { path: PathBuf, source: ChannelError },
    #[error("aetherd did not answer within {waited_ms} ms (control segment {path})")]
    Timeout { path: PathBuf, waited_ms: u64 },
    #[error("bad message on the control channel: {0}")]
    Message(#[from] MessageError),
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotRunning { .. } | ClientError::Channel { .. } => 4,
            ClientError::Timeout { .. } => 5,
            ClientError::Message(_) => 1,
        }
    }
}

/// A connected control client. Holding it holds the segment's lock, so keep
/// it only for the exchange.
#[derive(Debug)]
pub struct Client {
    inner: ControlClient,
    path: PathBuf,
}

/// How long to wait for other aetherctl processes to finish their exchange.
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A request id unique across concurrent aetherctl processes (see
/// [`message::client_request_id`]).
fn next_request_id() -> u64 {
    // SYNC: Relaxed suffices — the counter only needs to be unique, it orders nothing.
    let seq = COUNTER.fetch_add(1, Ordering::Relaxed);
    message::client_request_id(std::process::id(), seq)
}

impl Client {
    /// Connect to the control segment at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        if !path.exists() {
            return Err(ClientError::NotRunning {
                path: path.to_path_buf(),
            });
        }
        let inner = ControlClient::connect_timeout(path, LOCK_TIMEOUT).map_err(|source| {
            ClientError::Channel {
                path: path.to_path_buf(),
                source,
            }
        })?;
        Ok(Client {
            inner,
            path: path.to_path_buf(),
        })
    }

    /// Send one command and wait for the reply carrying the same request id.
    pub fn call(&mut self, command: Command, timeout: Duration) -> Result<ReplyBody, ClientError> {
        let id = next_request_id();
        let bytes = message::encode_request(&Request { id, command })?;
        let reply_bytes = self
            .inner
            .call_matching(&bytes, timeout, |reply| {
                message::decode_reply(reply)
                    .map(|r| r.id == id)
                    .unwrap_or(false)
            })
            .map_err(|source| match source {
                ChannelError::Timeout { .. } => ClientError::Timeout {
                    path: self.path.clone(),
                    waited_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                },
                source => ClientError::Channel {
                    path: self.path.clone(),
                    source,
                },
            })?;
        let Reply { body, .. } = message::decode_reply(&reply_bytes)?;
        Ok(body)
    }
}
