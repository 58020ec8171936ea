//! The server: `threads` workers, each an epoll loop over its own connections.
//!
//! All workers watch the one non-blocking listener with `EPOLLEXCLUSIVE`, so a
//! new connection wakes one worker, which accepts it and serves it for its
//! whole life. Epoll is level-triggered: one `read` per readiness report (a
//! partial read is reported again), every response of a batch of pipelined
//! requests goes out in one `write`. While output is backed up the connection
//! stops reading (back-pressure) until the socket is writable again.

use crate::epoll::{self, Epoll, Ready};
use crate::http::{Answer, Responder, MAX_HEAD_BYTES};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use thiserror::Error;

/// Errors that stop a worker.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Creating or driving the worker's epoll instance failed.
    #[error("worker {worker}: epoll failed: {source}")]
    Epoll { worker: usize, source: io::Error },
    /// The listener could not be made non-blocking or shared.
    #[error("the listening socket cannot be prepared: {source}")]
    Listener { source: io::Error },
    /// A worker thread could not be started or panicked.
    #[error("worker {worker}: {what}")]
    Thread { worker: usize, what: String },
}

/// Token of the listener in every worker's epoll set (connections use their fd).
const LISTENER: u64 = u64::MAX;
/// Initial per-connection input buffer.
const INPUT_BYTES: usize = 8 * 1024;
/// Events taken per `epoll_wait`.
const EVENTS: usize = 256;

/// Serves on `listener` with `threads` workers (at least one) until a worker
/// fails; it never returns `Ok` on its own.
///
/// # Errors
/// The first worker's [`ServeError`].
pub fn serve(listener: TcpListener, threads: usize) -> Result<(), ServeError> {
    listener
        .set_nonblocking(true)
        .map_err(|source| ServeError::Listener { source })?;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|worker| {
                let listener = &listener;
                std::thread::Builder::new()
                    .name(format!("hello-{worker}"))
                    .spawn_scoped(s, move || run_worker(worker, listener))
                    .map_err(|e| ServeError::Thread {
                        worker,
                        what: format!("cannot spawn: {e}"),
                    })
            })
            .collect();
        for (worker, h) in handles.into_iter().enumerate() {
            match h?.join() {
                Ok(r) => r?,
                Err(_) => {
                    return Err(ServeError::Thread {
                        worker,
                        what: "panicked".to_owned(),
                    })
                }
            }
        }
        Ok(())
    })
}

fn run_worker(worker: usize, listener: &TcpListener) -> Result<(), ServeError> {
    let err = |source| ServeError::Epoll { worker, source };
    let ep = Epoll::new().map_err(err)?;
    ep.add(listener.as_raw_fd(), epoll::IN | epoll::EXCLUSIVE, LISTENER)
        .map_err(err)?;
    let mut conns: HashMap<u64, Conn> = HashMap::new();
    let mut buf = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
    let mut ready: Vec<Ready> = Vec::with_capacity(EVENTS);
    let mut responder = Responder::default();
    loop {
        ep.wait(&mut buf, -1, &mut ready).map_err(err)?;
        for r in &ready {
            if r.token == LISTENER {
                accept_all(listener, &ep, &mut conns);
                continue;
            }
            let Some(conn) = conns.get_mut(&r.token) else {
                continue;
            };
            match conn.service(r.flags, &mut responder) {
                Next::Read if conn.writing => {
                    conn.writing = false;
                    if ep
                        .modify(conn.fd(), epoll::IN | epoll::RDHUP, r.token)
                        .is_err()
                    {
                        conns.remove(&r.token);
                    }
                }
                Next::Write if !conn.writing => {
                    conn.writing = true;
                    if ep.modify(conn.fd(), epoll::OUT, r.token).is_err() {
                        conns.remove(&r.token);
                    }
                }
                Next::Read | Next::Write => {}
                // Closing the socket removes it from the epoll set.
                Next::Close => drop(conns.remove(&r.token)),
            }
        }
    }
}

fn accept_all(listener: &TcpListener, ep: &Epoll, conns: &mut HashMap<u64, Conn>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                // Responses leave in one write; no reason to let Nagle hold them.
                let _ = stream.set_nodelay(true);
                let Ok(token) = u64::try_from(stream.as_raw_fd()) else {
                    continue;
                };
                if ep
                    .add(stream.as_raw_fd(), epoll::IN | epoll::RDHUP, token)
                    .is_ok()
                {
                    conns.insert(token, Conn::new(stream));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE, ENOBUFS…: keep serving the connections we have.
                eprintln!("hello-native: accept failed: {e}");
                return;
            }
        }
    }
}

/// What a connection waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    Read,
    Write,
    Close,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Input bytes `input[start..filled]` are unprocessed.
    input: Vec<u8>,
    start: usize,
    filled: usize,
    /// Request body bytes still to discard.
    skip: u64,
    /// Output bytes `output[sent..]` are unsent.
    output: Vec<u8>,
    sent: usize,
    /// The connection ends once the output is sent.
    closing: bool,
    /// Registered for writability instead of readability.
    writing: bool,
}

impl Conn {
    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            input: vec![0; INPUT_BYTES],
            start: 0,
            filled: 0,
            skip: 0,
            output: Vec::with_capacity(1024),
            sent: 0,
            closing: false,
            writing: false,
        }
    }

    fn fd(&self) -> i32 {
        self.stream.as_raw_fd()
    }

    fn service(&mut self, flags: u32, responder: &mut Responder) -> Next {
        if flags & epoll::OUT != 0 {
            return self.flush();
        }
        if flags & (epoll::IN | epoll::RDHUP | epoll::ERR_HUP) == 0 {
            return Next::Read;
        }
        if self.filled == self.input.len() {
            self.make_room();
        }
        match self.stream.read(&mut self.input[self.filled..]) {
            Ok(0) => self.closing = true, // peer finished sending: answer what is there, then close
            Ok(n) => self.filled += n,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                return Next::Read;
            }
            Err(_) => return Next::Close,
        }
        self.process(responder);
        self.flush()
    }

    /// Answers every complete request in the input buffer.
    fn process(&mut self, responder: &mut Responder) {
        loop {
            let avail = self.filled - self.start;
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(avail, |s| s.min(avail));
                self.start += n;
                self.skip -= n as u64;
                if self.skip > 0 {
                    break;
                }
                continue;
            }
            if avail == 0 {
                break;
            }
            match responder.answer(&self.input[self.start..self.filled], &mut self.output) {
                Answer::Incomplete => break,
                Answer::Done {
                    consumed,
                    body,
                    keep_alive,
                } => {
                    self.start += consumed;
                    self.skip = body;
                    if !keep_alive {
                        self.closing = true;
                        break;
                    }
                }
            }
        }
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
        }
    }

    /// Moves unprocessed input to the front, growing the buffer when a
    /// request head is longer than it (up to the head limit plus one read).
    fn make_room(&mut self) {
        if self.start > 0 {
            self.input.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.filled == self.input.len() && self.input.len() <= MAX_HEAD_BYTES {
            self.input.resize(self.input.len() * 2, 0);
        }
    }

    fn flush(&mut self) -> Next {
        while self.sent < self.output.len() {
            match self.stream.write(&self.output[self.sent..]) {
                Ok(0) => return Next::Close,
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Write,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Next::Close,
            }
        }
        self.output.clear();
        self.sent = 0;
        if self.closing {
            Next::Close
        } else {
            Next::Read
        }
    }
}
