//! The packet flood: threads in the sender namespace writing one UDP/IPv4
//! frame over and over through an `AF_PACKET` socket with
//! `PACKET_QDISC_BYPASS` (straight into the veth's `ndo_start_xmit`, no
//! qdisc, no IP stack), 64 frames per `sendmmsg`.
//!
//! On a veth the receiving side runs in the sender's softirq on the same cpu
//! (native XDP in the peer's NAPI poll, the generic/nftables path in the
//! backlog), so each sender thread is pinned to one cpu and the drop rate
//! measures what sender + receiver manage together on that many cpus.

use crate::affinity::pin_current_thread;
use crate::xdp::netns::{enter, NetnsError};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use thiserror::Error;

/// Frames per `sendmmsg` call.
pub const BATCH: usize = 64;

// Small constants in the C types the syscalls take; every value fits.
#[allow(clippy::cast_possible_truncation)] // AF_PACKET = 17
const FAMILY: libc::c_ushort = libc::AF_PACKET as libc::c_ushort;
#[allow(clippy::cast_possible_truncation)] // ETH_P_IP = 0x0800
const PROTO_IP: u16 = libc::ETH_P_IP as u16;
#[allow(clippy::cast_possible_truncation)] // 20 bytes
const SOCKADDR_LL_LEN: libc::socklen_t =
    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
#[allow(clippy::cast_possible_truncation)] // 4 bytes
const C_INT_LEN: libc::socklen_t = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
#[allow(clippy::cast_possible_truncation)] // 64
const BATCH_LEN: libc::c_uint = BATCH as libc::c_uint;

/// Errors of the flood threads.
#[derive(Debug, Error)]
pub enum FloodError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    /// A syscall setting up or driving the `AF_PACKET` socket failed.
    #[error("flood thread on cpu {cpu}: {op} failed: {source}")]
    Socket {
        cpu: usize,
        op: &'static str,
        source: std::io::Error,
    },
    /// Pinning a sender thread failed.
    #[error("flood thread on cpu {cpu}: {detail}")]
    Pin { cpu: usize, detail: String },
    /// A sender thread could not be spawned or panicked.
    #[error("flood thread: {0}")]
    Thread(String),
}

/// Running sender threads; stopped and joined by [`Flood::stop`] or on drop.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    threads: Vec<JoinHandle<Result<(), FloodError>>>,
}

impl Flood {
    /// Starts one sender per entry of `cpus` (pinned to it, `allowed` being
    /// the process's cpuset), in namespace `ns`, writing `frame` on `ifname`.
    ///
    /// # Errors
    /// [`FloodError::Thread`] when a thread cannot be spawned.
    pub fn start(
        ns: &str,
        ifname: &str,
        frame: &[u8],
        cpus: &[usize],
        allowed: &[usize],
    ) -> Result<Self, FloodError> {
        let mut flood = Self {
            stop: Arc::new(AtomicBool::new(false)),
            sent: Arc::new(AtomicU64::new(0)),
            threads: Vec::new(),
        };
        for &cpu in cpus {
            let (stop, sent) = (Arc::clone(&flood.stop), Arc::clone(&flood.sent));
            let (ns, ifname, frame, allowed) = (
                ns.to_owned(),
                ifname.to_owned(),
                frame.to_vec(),
                allowed.to_vec(),
            );
            let handle = std::thread::Builder::new()
                .name(format!("flood-{cpu}"))
                .spawn(move || {
                    pin_current_thread(cpu, &allowed).map_err(|e| FloodError::Pin {
                        cpu,
                        detail: e.to_string(),
                    })?;
                    enter(&ns)?;
                    send_loop(cpu, &ifname, &frame, &stop, &sent)
                })
                .map_err(|e| FloodError::Thread(e.to_string()))?;
            flood.threads.push(handle);
        }
        Ok(flood)
    }

    /// Frames handed to the device so far (by all threads).
    #[must_use]
    pub fn sent(&self) -> u64 {
        // SYNC: Relaxed: a statistic read between sleeps, no data depends on it.
        self.sent.load(Ordering::Relaxed)
    }

    /// Whether a sender thread has ended (it only ends early on an error).
    #[must_use]
    pub fn any_finished(&self) -> bool {
        self.threads.iter().any(JoinHandle::is_finished)
    }

    /// Stops and joins the threads; the first thread error, if any.
    ///
    /// # Errors
    /// The first [`FloodError`] a sender thread returned.
    pub fn stop(mut self) -> Result<(), FloodError> {
        self.join_all()
    }

    fn join_all(&mut self) -> Result<(), FloodError> {
        // SYNC: Relaxed: a stop request; the join below synchronises.
        self.stop.store(true, Ordering::Relaxed);
        let mut first = Ok(());
        for handle in self.threads.drain(..) {
            let result = handle
                .join()
                .unwrap_or_else(|_| Err(FloodError::Thread("a sender panicked".to_owned())));
            if first.is_ok() {
                first = result;
            }
        }
        first
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        if let Err(e) = self.join_all() {
            eprintln!("xdp bench: flood: {e}");
        }
    }
}

/// An owned file descriptor closed on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: self.0 is a descriptor this struct owns and closes once.
        unsafe { libc::close(self.0) };
    }
}

fn send_loop(
    cpu: usize,
    ifname: &str,
    frame: &[u8],
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> Result<(), FloodError> {
    let os = |op: &'static str| FloodError::Socket {
        cpu,
        op,
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: plain socket(2) call; protocol 0 = send only, receive nothing.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(os("socket(AF_PACKET)"));
    }
    let fd = Fd(raw);
    let name = std::ffi::CString::new(ifname).map_err(|e| FloodError::Socket {
        cpu,
        op: "interface name",
        source: std::io::Error::other(e),
    })?;
    // SAFETY: `name` is a NUL-terminated string alive for the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(os("if_nametoindex"));
    }
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = FAMILY;
    addr.sll_protocol = PROTO_IP.to_be();
    addr.sll_ifindex = i32::try_from(ifindex).unwrap_or(i32::MAX);
    // SAFETY: addr is a valid sockaddr_ll and its size is passed.
    let rc = unsafe { libc::bind(fd.0, (&raw const addr).cast(), SOCKADDR_LL_LEN) };
    if rc != 0 {
        return Err(os("bind(AF_PACKET)"));
    }
    let one: libc::c_int = 1;
    // SAFETY: `one` is a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.0,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&raw const one).cast(),
            C_INT_LEN,
        )
    };
    if rc != 0 {
        return Err(os("setsockopt(PACKET_QDISC_BYPASS)"));
    }
    let mut iov = libc::iovec {
        iov_base: frame.as_ptr().cast_mut().cast(),
        iov_len: frame.len(),
    };
    // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for m in &mut msgs {
        m.msg_hdr.msg_iov = &raw mut iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SYNC: Relaxed: a stop request, no data depends on it.
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: msgs holds BATCH headers each pointing at `iov`, which
        // points at `frame`; all outlive the call, and the kernel only reads
        // the frame (the iovec is never written through).
        let n = unsafe { libc::sendmmsg(fd.0, msgs.as_mut_ptr(), BATCH_LEN, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // A full device queue is back-pressure, not a failure.
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR)
            ) {
                std::thread::yield_now();
                continue;
            }
            return Err(FloodError::Socket {
                cpu,
                op: "sendmmsg",
                source: e,
            });
        }
        // SYNC: Relaxed: a statistic; see `Flood::sent`.
        sent.fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
    }
    Ok(())
}
