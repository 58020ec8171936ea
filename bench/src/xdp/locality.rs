//! Accept locality: which listener of a `SO_REUSEPORT` group accepts a
//! connection, relative to the cpu the client connected from.
//!
//! Two listeners on `127.0.0.1:port` (loopback of the benchmark's own
//! namespace), one acceptor thread per listener pinned to cpu `c0` and `c1`;
//! one client thread pinned to each of those cpus opens `per_cpu` connections
//! and writes its cpu id as the first byte. Loopback processes a SYN in the
//! sending cpu's softirq, so "local" = accepted by the listener of the cpu
//! the client ran on. With [`bpf::ReuseportCpuSelector`] the program picks
//! that listener; without it the kernel hashes the 4-tuple (≈ 50 %).

use crate::affinity::pin_current_thread;
use crate::xdp::netns::{enter, in_ns, NetnsError};
use socket2::{Domain, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;

/// How long the whole accept phase may take before it is called lost.
const DEADLINE: Duration = Duration::from_secs(30);

/// Errors of the locality measurement.
#[derive(Debug, Error)]
pub enum LocalityError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Bpf(#[from] bpf::BpfError),
    #[error("pinning to cpu {cpu}: {detail}")]
    Pin { cpu: usize, detail: String },
    #[error("{accepted} of {expected} connections accepted within {DEADLINE:?}")]
    Lost { accepted: usize, expected: usize },
    #[error("a locality thread panicked")]
    Panicked,
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> LocalityError {
    move |source| LocalityError::Io { op, source }
}

/// One measurement's counts.
#[derive(Debug, Clone, Copy)]
pub struct Locality {
    pub accepted: usize,
    pub local: usize,
}

impl Locality {
    /// Percentage of connections accepted on their client's cpu.
    #[must_use]
    pub fn pct(&self) -> f64 {
        if self.accepted == 0 {
            return 0.0;
        }
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let pct = self.local as f64 * 100.0 / self.accepted as f64;
        pct
    }
}

fn listener(port: u16) -> Result<TcpListener, LocalityError> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(io("socket"))?;
    socket.set_reuse_port(true).map_err(io("SO_REUSEPORT"))?;
    socket
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())
        .map_err(io("bind 127.0.0.1"))?;
    socket.listen(4096).map_err(io("listen"))?;
    // accept(2) honours SO_RCVTIMEO: acceptors wake up to check the deadline.
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(io("SO_RCVTIMEO"))?;
    Ok(socket.into())
}

fn pin(cpu: usize, allowed: &[usize]) -> Result<(), LocalityError> {
    pin_current_thread(cpu, allowed).map_err(|e| LocalityError::Pin {
        cpu,
        detail: e.to_string(),
    })
}

/// Measures locality in namespace `ns` on `port` for clients on `cpus`, with
/// the sk_reuseport program when `reuseport` (see the module docs).
///
/// # Errors
/// [`LocalityError`] when a socket, pin or BPF step fails or connections are lost.
pub fn measure(
    ns: &str,
    port: u16,
    cpus: [usize; 2],
    allowed: &[usize],
    per_cpu: usize,
    reuseport: bool,
) -> Result<Locality, LocalityError> {
    let listeners = in_ns(ns, move || -> Result<Vec<TcpListener>, LocalityError> {
        Ok(vec![listener(port)?, listener(port)?])
    })??;
    // Kept alive until the listeners are closed (the program belongs to the group).
    let _selector = if reuseport {
        let mut selector = bpf::ReuseportCpuSelector::load()?;
        selector.attach_to_group(&listeners[0])?;
        for (cpu, l) in cpus.iter().zip(&listeners) {
            // cpu ids are < 1024 (MAX_CPUS), checked by set_listener.
            selector.set_listener(u32::try_from(*cpu).unwrap_or(u32::MAX), l)?;
        }
        Some(selector)
    } else {
        None
    };
    let expected = per_cpu * 2;
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut acceptors = Vec::new();
    for (cpu, l) in cpus.into_iter().zip(listeners) {
        let (done, allowed) = (Arc::clone(&done), allowed.to_vec());
        acceptors.push(std::thread::spawn(
            move || -> Result<Locality, LocalityError> {
                pin(cpu, &allowed)?;
                let mut counts = Locality {
                    accepted: 0,
                    local: 0,
                };
                // SYNC: Relaxed: a progress count; each acceptor reads only its own streams.
                while done.load(Ordering::Relaxed) < expected && start.elapsed() < DEADLINE {
                    match l.accept() {
                        Ok((mut stream, _)) => {
                            stream
                                .set_read_timeout(Some(Duration::from_secs(5)))
                                .map_err(io("SO_RCVTIMEO"))?;
                            let mut byte = [0u8];
                            stream
                                .read_exact(&mut byte)
                                .map_err(io("reading the client's cpu"))?;
                            counts.accepted += 1;
                            counts.local += usize::from(usize::from(byte[0]) == cpu);
                            // SYNC: Relaxed: see the load above.
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(e) => return Err(io("accept")(e)),
                    }
                }
                Ok(counts)
            },
        ));
    }
    let mut clients = Vec::new();
    for cpu in cpus {
        let (ns, allowed) = (ns.to_owned(), allowed.to_vec());
        clients.push(std::thread::spawn(
            move || -> Result<Vec<TcpStream>, LocalityError> {
                pin(cpu, &allowed)?;
                enter(&ns)?;
                let id = u8::try_from(cpu).unwrap_or(u8::MAX); // cpus < 256 on our machines
                (0..per_cpu)
                    .map(|_| {
                        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                            .map_err(io("connect"))?;
                        s.write_all(&[id]).map_err(io("write"))?;
                        Ok(s)
                    })
                    .collect()
            },
        ));
    }
    // Client streams stay open until every acceptor is done.
    let mut streams = Vec::new();
    let mut first_error = None;
    for c in clients {
        match c
            .join()
            .map_err(|_| LocalityError::Panicked)
            .and_then(|r| r)
        {
            Ok(s) => streams.extend(s),
            Err(e) => {
                first_error.get_or_insert(e);
                // SYNC: Relaxed: ends the acceptors' loops early.
                done.store(usize::MAX / 2, Ordering::Relaxed);
            }
        }
    }
    let mut total = Locality {
        accepted: 0,
        local: 0,
    };
    for a in acceptors {
        match a
            .join()
            .map_err(|_| LocalityError::Panicked)
            .and_then(|r| r)
        {
            Ok(c) => {
                total.accepted += c.accepted;
                total.local += c.local;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    drop(streams);
    if let Some(e) = first_error {
        return Err(e);
    }
    if total.accepted != expected {
        return Err(LocalityError::Lost {
            accepted: total.accepted,
            expected,
        });
    }
    Ok(total)
}
