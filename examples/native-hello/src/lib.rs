//! `hello-native`: the quickstart's `hello.py` as a compiled handler.
//!
//! It follows the Aetherless handler protocol (see the README's "Handler
//! Protocol"): bind `0.0.0.0:$AETHER_TRIGGER_PORT`, connect to the unix socket
//! named by `AETHER_SOCKET` and send exactly the 5 bytes `READY`, then serve
//! HTTP. It binds *before* announcing readiness, so `READY` means the port
//! already accepts connections. Every `GET` (and `HEAD`) answers
//!
//! ```text
//! {"message": "Hello from Aetherless!", "path": "<request target>"}
//! ```
//!
//! byte for byte what `hello.py` sends (Python's `json.dumps`, ASCII-escaped),
//! over HTTP/1.1 with keep-alive and pipelining. Other methods get `501`, as
//! from Python's `BaseHTTPRequestHandler`.
//!
//! It is also the benchmark's "native handler" (`bench` binary `gateway`):
//! run without `AETHER_SOCKET` it skips the handshake, so the same binary is
//! measured directly, behind nginx and behind aetherd.
//!
//! Modules:
//! - [`epoll`]: the few epoll calls the server needs;
//! - [`http`]: request framing (httparse) and the response bytes;
//! - [`server`]: one epoll loop per worker thread over a shared listener;
//! - [`handshake`]: the `READY` handshake.

pub mod epoll;
pub mod handshake;
pub mod http;
pub mod server;
