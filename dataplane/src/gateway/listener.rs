//! The listening sockets of a function's `trigger_port`.
//!
//! Every core binds its own socket to the same address with `SO_REUSEPORT`,
//! forming the port's listener group: the kernel spreads new connections over
//! the group (or an `sk_reuseport` program picks the member), and each core
//! accepts only on its own member — no accept lock, no shared queue.

use std::net::SocketAddr;
use std::os::fd::{FromRawFd as _, IntoRawFd as _};

use socket2::{Domain, Protocol, Socket, Type};

/// A listener that could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// A socket call failed.
    #[error("cannot {op} listener on {addr}: {source}")]
    Socket {
        /// The failing step (create, set SO_REUSEPORT, bind, listen).
        op: &'static str,
        /// The address being bound.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Binds one member of the `SO_REUSEPORT` group of `addr` (with
/// `SO_REUSEADDR` too) and listens with `backlog`. The result is `Send`: bind
/// on any thread (to report a port conflict early), then hand it to the
/// executor that accepts on it ([`into_glommio`]).
pub fn bind_reuseport(
    addr: SocketAddr,
    backlog: i32,
) -> Result<std::net::TcpListener, ListenerError> {
    let err = |op| move |source| ListenerError::Socket { op, addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(err("create"))?;
    socket
        .set_reuse_address(true)
        .map_err(err("set SO_REUSEADDR on"))?;
    socket
        .set_reuse_port(true)
        .map_err(err("set SO_REUSEPORT on"))?;
    socket
        .set_tcp_nodelay(true)
        .map_err(err("set TCP_NODELAY on"))?;
    socket.bind(&addr.into()).map_err(err("bind"))?;
    socket.listen(backlog).map_err(err("listen on"))?;
    Ok(socket.into())
}

/// Turns a bound, listening std socket into a glommio listener of the current
/// executor. Must be called inside a glommio executor.
#[must_use]
pub fn into_glommio(listener: std::net::TcpListener) -> glommio::net::TcpListener {
    let fd = listener.into_raw_fd();
    // SAFETY: `fd` comes from `into_raw_fd` of a bound, listening TCP socket,
    // so it is open and owned by nobody else; glommio takes ownership and
    // closes it on drop. glommio only uses it for accept.
    unsafe { glommio::net::TcpListener::from_raw_fd(fd) }
}
