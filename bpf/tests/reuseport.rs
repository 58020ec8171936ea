//! The sk_reuseport program on real connections: two listeners of one
//! `SO_REUSEPORT` group, one per CPU; clients pinned to CPU 0 and CPU 1 connect
//! over loopback (whose SYNs are processed on the sending CPU), and each
//! connection must be accepted by the listener of its CPU.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bpf::ReuseportCpuSelector;
use common::*;
use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;
use socket2::{Domain, Socket, Type};

const PORT: u16 = 18080;
const CONNECTIONS_PER_CPU: usize = 20;
const CPUS: [usize; 2] = [0, 1];

fn listener() -> TcpListener {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_reuse_port(true).unwrap();
    socket
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, PORT)).into())
        .unwrap();
    socket.listen(128).unwrap();
    socket.set_nonblocking(true).unwrap();
    socket.into()
}

fn pin_to(cpu: usize) {
    let mut set = CpuSet::new();
    set.set(cpu).unwrap();
    sched_setaffinity(Pid::from_raw(0), &set).unwrap();
}

/// Connects `count` times from a thread of namespace `ns` pinned to `cpu`;
/// each connection sends the CPU id. Returns the open streams.
fn connect_from(ns: &str, cpu: usize, count: usize) -> Vec<TcpStream> {
    NetnsPair::in_ns(ns, move || {
        pin_to(cpu);
        (0..count)
            .map(|_| {
                let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, PORT)).unwrap();
                stream.write_all(&[u8::try_from(cpu).unwrap()]).unwrap();
                stream
            })
            .collect()
    })
}

/// Accepts `total` connections over `listeners` (or what arrived within 2 s);
/// returns, per listener, the CPU id each of its connections sent.
fn accept_all(listeners: &[TcpListener], total: usize) -> Vec<Vec<u8>> {
    let mut senders = vec![Vec::new(); listeners.len()];
    let deadline = Instant::now() + Duration::from_secs(2);
    while senders.iter().map(Vec::len).sum::<usize>() < total && Instant::now() < deadline {
        for (listener, senders) in listeners.iter().zip(&mut senders) {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream.set_nonblocking(false).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(2)))
                        .unwrap();
                    let mut byte = [0u8];
                    stream.read_exact(&mut byte).unwrap();
                    senders.push(byte[0]);
                }
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(error) => panic!("accept: {error}"),
            }
        }
    }
    senders
}

#[test]
fn connections_are_accepted_by_the_listener_of_the_receiving_cpu() {
    let test = "connections_are_accepted_by_the_listener_of_the_receiving_cpu";
    if skip_if_unavailable(test) {
        return;
    }
    let allowed = sched_getaffinity(Pid::from_raw(0)).unwrap();
    if !CPUS.iter().all(|cpu| allowed.is_set(*cpu).unwrap_or(false)) {
        eprintln!("SKIP {test}: needs CPUs 0 and 1 in this process's affinity mask");
        return;
    }
    let pair = NetnsPair::new();
    let listeners: Vec<TcpListener> =
        NetnsPair::in_ns(&pair.b, || CPUS.iter().map(|_| listener()).collect());
    let mut selector = ReuseportCpuSelector::load().unwrap();
    selector.attach_to_group(&listeners[0]).unwrap();
    for (cpu, listener) in CPUS.iter().zip(&listeners) {
        selector
            .set_listener(u32::try_from(*cpu).unwrap(), listener)
            .unwrap();
    }

    let mut clients = Vec::new();
    for cpu in CPUS {
        clients.extend(connect_from(&pair.b, cpu, CONNECTIONS_PER_CPU));
    }
    let accepted = accept_all(&listeners, CPUS.len() * CONNECTIONS_PER_CPU);
    for (cpu, senders) in CPUS.iter().zip(&accepted) {
        let local = senders
            .iter()
            .filter(|sender| usize::from(**sender) == *cpu)
            .count();
        eprintln!(
            "listener of cpu {cpu}: {} accepted, {local} from its own cpu",
            senders.len()
        );
        assert_eq!(
            senders.len(),
            CONNECTIONS_PER_CPU,
            "listener of cpu {cpu}: {senders:?}"
        );
        assert_eq!(
            local, CONNECTIONS_PER_CPU,
            "listener of cpu {cpu} got {senders:?}"
        );
    }

    // Empty slots: the kernel's hash still spreads connections over the group.
    for cpu in CPUS {
        selector
            .clear_listener(u32::try_from(cpu).unwrap())
            .unwrap();
    }
    clients.extend(connect_from(&pair.b, 0, CONNECTIONS_PER_CPU));
    let spread: Vec<usize> = accept_all(&listeners, CONNECTIONS_PER_CPU)
        .iter()
        .map(Vec::len)
        .collect();
    eprintln!("kernel hash fallback, all from cpu 0: per listener {spread:?}");
    let fallback: usize = spread.iter().sum();
    // The control: without the program's choice, CPU 0's connections also
    // reach the other listener (all 20 on one listener by hash: p = 2^-20).
    assert!(
        spread.iter().all(|n| *n > 0),
        "hash fallback used one listener only: {spread:?}"
    );
    assert_eq!(
        fallback, CONNECTIONS_PER_CPU,
        "fallback to the kernel hash accepts all"
    );
    assert!(matches!(
        selector.clear_listener(bpf::abi::MAX_CPUS),
        Err(bpf::BpfError::CpuOutOfRange { .. })
    ));
}
