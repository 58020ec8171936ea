//! Rough latency of one GET through the gateway against the same GET sent
//! straight to the upstream: one keep-alive connection, a few thousand
//! sequential requests, p50/p99 printed. A measurement, not a pass/fail
//! benchmark (that is bench/): run with
//! `cargo test --release -p dataplane --test gateway_latency -- --ignored --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod gateway_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gateway_support::{backends, connect, start, upstream, GatewayOptions, Reply};
use glommio::Placement;

const N: usize = 5000;

fn run(addr: SocketAddr) -> (u64, u64) {
    let mut c = connect(addr);
    let req = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n";
    let mut samples = Vec::with_capacity(N);
    for i in 0..N + 500 {
        let t = Instant::now();
        c.send(req);
        let r = c.read_response("GET").unwrap();
        let dt = t.elapsed();
        assert_eq!(r.status, 200);
        if i >= 500 {
            samples.push(u64::try_from(dt.as_nanos()).unwrap());
        }
    }
    samples.sort_unstable();
    (samples[N / 2], samples[N * 99 / 100])
}

#[test]
#[ignore = "measurement; run explicitly with --release --ignored --nocapture"]
fn gateway_hop_latency() {
    let up = upstream(|_| Reply::ok("hello"));
    let configs = [
        ("pinned to cpu 1", Placement::Fixed(1), None),
        ("unpinned", Placement::Unbound, None),
        (
            "pinned, spin 50us",
            Placement::Fixed(1),
            Some(Duration::from_micros(50)),
        ),
    ];
    for (label, placement, spin) in configs {
        let gw = start(
            GatewayOptions {
                placement,
                spin,
                ..GatewayOptions::default()
            },
            backends(vec![(up.addr, 8)]),
        );
        let (d50, d99) = run(up.addr);
        let (g50, g99) = run(gw.addr);
        let (d50b, _) = run(up.addr);
        println!(
            "[{label}] direct p50 {:.1} µs p99 {:.1} µs | gateway p50 {:.1} µs p99 {:.1} µs | added p50 {:.1} µs (direct again {:.1})",
            d50 as f64 / 1e3,
            d99 as f64 / 1e3,
            g50 as f64 / 1e3,
            g99 as f64 / 1e3,
            (g50 as f64 - d50.min(d50b) as f64) / 1e3,
            d50b as f64 / 1e3,
        );
        drop(gw);
    }
    if let Some((n50, n99, d50)) = nginx(up.addr) {
        println!(
            "[nginx 1 worker, keepalive upstream] p50 {:.1} µs p99 {:.1} µs | added p50 {:.1} µs",
            n50 as f64 / 1e3,
            n99 as f64 / 1e3,
            (n50 as f64 - d50 as f64) / 1e3
        );
    }
}

/// The same measurement through nginx as a reverse proxy, when installed.
fn nginx(upstream: SocketAddr) -> Option<(u64, u64, u64)> {
    let dir = std::env::temp_dir().join(format!("gw-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let conf = format!(
        "worker_processes 1; daemon off; master_process off; error_log {d}/error.log; pid {d}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; keepalive_requests 1000000; client_body_temp_path {d}; proxy_temp_path {d};\n\
           upstream u {{ server {upstream}; keepalive 16; }}\n\
           server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://u;\n\
             proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let Ok(child) = std::process::Command::new("nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-p")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        eprintln!("SKIP nginx comparison: nginx not runnable");
        return None;
    };
    // Killed on every path out, panics included.
    struct Reap(std::process::Child);
    impl Drop for Reap {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Reap(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().ok()?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (n50, n99) = run(addr);
    let (d50, _) = run(upstream);
    let _ = std::fs::remove_dir_all(&dir);
    Some((n50, n99, d50))
}
