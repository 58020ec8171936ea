//! The XDP benchmark (binary `xdp`): what the eBPF data plane buys.
//!
//! 1. **Drop rate.** Namespaces A and B joined by a veth pair
//!    ([`netns::NetnsPair`], 10.252.k.0/30). Sender threads in A (one per cpu,
//!    pinned: both cores of our 2-core machines) flood UDP/IPv4 frames to a
//!    port nothing listens on through `AF_PACKET` + `PACKET_QDISC_BYPASS`,
//!    64 per `sendmmsg` ([`flood`]). On B's end, alternately:
//!    - **xdp**: [`bpf::XdpPolicy`] attached to the veth in strict mode
//!      (native, falling back to generic; the JSON says which), drops counted
//!      from its per-cpu stats (port 0 = "other" bucket);
//!    - **nftables**: a `udp dport P counter drop` rule at the earliest hook
//!      available ([`nft`]: netdev ingress on the device, else inet
//!      prerouting; the JSON says which), counted from the rule's counter.
//!
//!    Each round: start the flood, warm up, read the counter, run the window,
//!    read it again; rate = Δdrops / Δt (the time of a read is the midpoint of
//!    the call). Rounds alternate xdp, nft, xdp, nft… and the medians are
//!    reported, so noise on the machine hits both alike. On a veth the
//!    receiver runs in the sender's softirq on the same cpu, so the rate is
//!    what sender + drop path achieve together on those cpus; the sender's
//!    cost is the same in both modes, so the ratio understates the drop
//!    paths' own ratio.
//!
//!    **What a veth can and cannot show.** XDP's advantage on a NIC is that
//!    it drops before an skb exists. On a veth the sender has already built
//!    the skb; native veth XDP then *copies* it into a page-pool page when it
//!    has less than 256 bytes of headroom (`skb_pp_cow_data`, which `perf`
//!    shows for every `AF_PACKET` or UDP frame), and generic XDP does the
//!    same in `netif_receive_generic_xdp`, while a netdev-ingress rule simply
//!    frees the skb. So on this setup XDP is expected to be *slower* than
//!    nftables' netdev ingress hook; the numbers say by how much.
//! 2. **Cost per packet.** `BPF_PROG_TEST_RUN` (`XdpPolicy::run_on`, repeat
//!    1 000 000, in-kernel mean) on a UDP/IPv4 frame to an unknown port
//!    (strict → drop) and to an allow-listed port (pass); median of 5 calls
//!    each; `xdp_ns_per_packet` is the mean of the two.
//! 3. **Accept locality** ([`locality`]), with and without the sk_reuseport
//!    program, on B's loopback.
//!
//! Needs root (BPF, namespaces, `AF_PACKET`); exits non-zero without it.
//! Everything created (namespaces, links, nft table, BPF links) is removed by
//! guards on every path, also on Ctrl-C/SIGTERM (polled between sleeps).

pub mod flood;
pub mod frame;
pub mod locality;
pub mod netns;
pub mod nft;

use crate::affinity::{allowed_cpus, choose_two, AffinityError};
use crate::cli::CommonArgs;
use crate::clock::utc_timestamp;
use crate::gateway::interrupt;
use crate::machine::Machine;
use crate::report::{git_revision, Report, ReportError, Target};
use bpf::{XdpAttachMode, XdpPolicy, XdpVerdict};
use flood::{Flood, FloodError};
use frame::Udp4Frame;
use locality::LocalityError;
use netns::{in_ns, NetnsError, NetnsPair, VETH_A, VETH_B};
use nft::{NftDrop, NftError};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use thiserror::Error;

/// Command line of the `xdp` binary.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "xdp",
    about = "XDP strict-mode drop rate against nftables on a veth pair, XDP cost per packet, accept locality with sk_reuseport"
)]
pub struct XdpArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Measured window per drop round, seconds [default: 5, smoke 2].
    #[arg(long)]
    pub duration_s: Option<f64>,

    /// Rounds per drop mode (alternating xdp, nftables) [default: 5, smoke 2].
    #[arg(long)]
    pub rounds: Option<u32>,

    /// Flood before each window, seconds.
    #[arg(long, default_value_t = 0.5)]
    pub warmup_s: f64,

    /// Destination UDP port of the flood (nothing listens there).
    #[arg(long, default_value_t = 9999)]
    pub port: u16,

    /// UDP payload bytes of each flood frame.
    #[arg(long, default_value_t = 18)]
    pub payload: u16,

    /// `BPF_PROG_TEST_RUN` repeat count per call.
    #[arg(long, default_value_t = 1_000_000)]
    pub test_run_repeat: u32,

    /// XDP attach mode on the receiving veth: native falls back to generic
    /// when the driver refuses (the JSON records the mode used).
    #[arg(long, value_enum, default_value_t = ModeArg::Native)]
    pub xdp_mode: ModeArg,

    /// Connections per client cpu in each locality measurement [default: 1000, smoke 200].
    #[arg(long)]
    pub connections: Option<usize>,
}

/// `--xdp-mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    Native,
    Generic,
}

/// Errors that end the benchmark.
#[derive(Debug, Error)]
pub enum XdpBenchError {
    #[error("the xdp benchmark needs root (BPF, network namespaces, AF_PACKET); run it as root")]
    NotRoot,
    #[error(transparent)]
    Affinity(#[from] AffinityError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("XDP: {0}")]
    Bpf(#[from] bpf::BpfError),
    #[error("nftables: {0}")]
    Nft(#[from] NftError),
    #[error(transparent)]
    Flood(#[from] FloodError),
    #[error("accept locality: {0}")]
    Locality(#[from] LocalityError),
    #[error("BPF_PROG_TEST_RUN on the {frame} frame returned {verdict:?}, expected {expected:?}")]
    Verdict {
        frame: &'static str,
        verdict: XdpVerdict,
        expected: XdpVerdict,
    },
    #[error("the flood stopped early without an error")]
    FloodEnded,
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("interrupted by a signal; namespaces and attachments removed")]
    Interrupted,
}

/// What was run (the JSON's `parameters`).
#[derive(Debug, Clone, Serialize)]
pub struct XdpParameters {
    pub veth: String,
    pub sender: String,
    pub sender_cpus: Vec<usize>,
    pub frame_bytes: usize,
    pub port: u16,
    pub rounds_per_mode: u32,
    pub window_s: f64,
    pub warmup_s: f64,
    pub xdp_attach_mode: String,
    pub nftables_hook: String,
    pub test_run_repeat: u32,
    pub test_run_calls: usize,
    pub locality_connections_per_cpu: usize,
    pub locality_cpus: [usize; 2],
    pub note: String,
}

/// Every number measured (the JSON's `results`).
#[derive(Debug, Clone, Serialize)]
pub struct XdpResults {
    pub xdp_drop_pps: f64,
    pub nftables_drop_pps: f64,
    pub xdp_to_nftables_drop_ratio: f64,
    pub xdp_ns_per_packet: f64,
    pub xdp_ns_per_packet_drop: f64,
    pub xdp_ns_per_packet_pass: f64,
    pub accept_locality_pct_reuseport: f64,
    pub accept_locality_pct_kernel_hash: f64,
    /// Frames the senders handed to the veth per second (median round).
    pub xdp_sent_pps: f64,
    pub nftables_sent_pps: f64,
    pub xdp_drop_pps_rounds: Vec<f64>,
    pub nftables_drop_pps_rounds: Vec<f64>,
}

/// One window's rates.
#[derive(Debug, Clone, Copy)]
struct Rate {
    dropped_pps: f64,
    sent_pps: f64,
}

/// The flood set-up shared by every round.
struct FloodSpec<'a> {
    pair: &'a NetnsPair,
    frame: Vec<u8>,
    cpus: Vec<usize>,
    allowed: Vec<usize>,
    warmup: Duration,
    window: Duration,
}

/// Sleeps `d` in short slices; fails on a signal or a dead sender.
fn sleep_watching(d: Duration, flood: &Flood) -> Result<(), XdpBenchError> {
    let end = Instant::now() + d;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if interrupt::interrupted() {
            return Err(XdpBenchError::Interrupted);
        }
        if flood.any_finished() {
            return Err(XdpBenchError::FloodEnded);
        }
        std::thread::sleep(left.min(Duration::from_millis(50)));
    }
    Ok(())
}

/// Floods for warm-up + window and returns the drop rate `count` observes.
fn measure_window(
    spec: &FloodSpec<'_>,
    mut count: impl FnMut() -> Result<u64, XdpBenchError>,
) -> Result<Rate, XdpBenchError> {
    let flood = Flood::start(&spec.pair.a, VETH_A, &spec.frame, &spec.cpus, &spec.allowed)?;
    let mut sample = |flood: &Flood| -> Result<(u64, u64, Instant), XdpBenchError> {
        let before = Instant::now();
        let n = count()?;
        let after = Instant::now();
        Ok((n, flood.sent(), before + (after - before) / 2))
    };
    let result = (|| -> Result<Rate, XdpBenchError> {
        sleep_watching(spec.warmup, &flood)?;
        let (c0, s0, t0) = sample(&flood)?;
        sleep_watching(spec.window, &flood)?;
        let (c1, s1, t1) = sample(&flood)?;
        let secs = (t1 - t0).as_secs_f64();
        #[allow(clippy::cast_precision_loss)] // packet counts far below 2^52
        let rate = Rate {
            dropped_pps: c1.saturating_sub(c0) as f64 / secs,
            sent_pps: s1.saturating_sub(s0) as f64 / secs,
        };
        Ok(rate)
    })();
    let stopped = flood.stop();
    let rate = result?;
    stopped?;
    Ok(rate)
}

fn xdp_round(
    spec: &FloodSpec<'_>,
    mode: XdpAttachMode,
) -> Result<(Rate, XdpAttachMode), XdpBenchError> {
    let mut policy = in_ns(&spec.pair.b, move || {
        XdpPolicy::load_and_attach(VETH_B, mode)
    })??;
    policy.set_strict(true)?;
    let used = policy.attachment().map_or(mode, |(_, m)| m);
    let rate = measure_window(spec, || {
        Ok(policy
            .stats()?
            .get(&bpf::abi::OTHER_PORT)
            .map_or(0, |s| s.drops))
    })?;
    drop(policy); // detaches before the nftables round
    Ok((rate, used))
}

fn nft_round(spec: &FloodSpec<'_>, port: u16) -> Result<(Rate, nft::Hook), XdpBenchError> {
    let rule = NftDrop::install(&spec.pair.b, VETH_B, port)?;
    let rate = measure_window(spec, || Ok(rule.packets()?))?;
    Ok((rate, rule.hook()))
}

/// Median of `xs` (mean of the middle two for an even count); 0 when empty.
#[must_use]
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median in-kernel ns per run of the program on `frame`, checking its verdict.
fn ns_per_run(
    policy: &mut XdpPolicy,
    frame: &[u8],
    repeat: u32,
    calls: usize,
    name: &'static str,
    expected: XdpVerdict,
) -> Result<f64, XdpBenchError> {
    let mut samples = Vec::with_capacity(calls);
    for _ in 0..calls {
        let (verdict, mean) = policy.run_on(frame, repeat)?;
        if verdict != expected {
            return Err(XdpBenchError::Verdict {
                frame: name,
                verdict,
                expected,
            });
        }
        samples.push(mean.as_secs_f64() * 1e9);
    }
    Ok(median(&samples))
}

/// Runs the benchmark and writes `<output-dir>/xdp.json`; returns its path.
///
/// # Errors
/// [`XdpBenchError`] when not root or any measurement fails.
pub fn run(args: &XdpArgs) -> Result<PathBuf, XdpBenchError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(XdpBenchError::NotRoot);
    }
    interrupt::install();
    let smoke = args.common.smoke;
    let window = Duration::from_secs_f64(args.duration_s.unwrap_or(if smoke { 2.0 } else { 5.0 }));
    let rounds = args.rounds.unwrap_or(if smoke { 2 } else { 5 }).max(1);
    let per_cpu = args.connections.unwrap_or(if smoke { 200 } else { 1000 });
    let allowed = allowed_cpus()?;
    let cpus = choose_two(None, &allowed)?;
    let test_run_calls = 5;

    // 2. Cost per packet (no interface needed).
    let mut policy = XdpPolicy::load()?;
    policy.set_strict(true)?;
    policy.allow_port(22)?;
    let probe = |dport| Udp4Frame {
        dst_mac: [2, 0, 0, 0, 0, 2],
        src_mac: [2, 0, 0, 0, 0, 1],
        src: std::net::Ipv4Addr::new(10, 252, 0, 1),
        dst: std::net::Ipv4Addr::new(10, 252, 0, 2),
        dport,
        payload_len: args.payload,
    };
    let repeat = args.test_run_repeat;
    let ns_drop = ns_per_run(
        &mut policy,
        &probe(args.port).bytes(),
        repeat,
        test_run_calls,
        "drop",
        XdpVerdict::Drop,
    )?;
    let ns_pass = ns_per_run(
        &mut policy,
        &probe(22).bytes(),
        repeat,
        test_run_calls,
        "pass",
        XdpVerdict::Pass,
    )?;
    drop(policy);
    eprintln!("xdp: BPF_PROG_TEST_RUN {ns_drop:.1} ns/drop, {ns_pass:.1} ns/pass");

    // 1. Drop rate, alternating rounds.
    let pair = NetnsPair::new()?;
    let frame = Udp4Frame {
        dst_mac: pair.mac_b,
        src_mac: pair.mac_a,
        src: pair.addr_a,
        dst: pair.addr_b,
        dport: args.port,
        payload_len: args.payload,
    }
    .bytes();
    let spec = FloodSpec {
        pair: &pair,
        frame,
        cpus: cpus.to_vec(),
        allowed: allowed.clone(),
        warmup: Duration::from_secs_f64(args.warmup_s),
        window,
    };
    let mut mode = match args.xdp_mode {
        ModeArg::Native => XdpAttachMode::Auto,
        ModeArg::Generic => XdpAttachMode::Generic,
    };
    let mut hook = nft::Hook::NetdevIngress;
    let (mut xdp_rates, mut nft_rates) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (rate, used) = xdp_round(&spec, mode)?;
        mode = used;
        eprintln!(
            "xdp: round {round} xdp ({used}): {:.0} drops/s ({:.0} sent/s)",
            rate.dropped_pps, rate.sent_pps
        );
        xdp_rates.push(rate);
        let (rate, used) = nft_round(&spec, args.port)?;
        hook = used;
        eprintln!(
            "xdp: round {round} nftables: {:.0} drops/s ({:.0} sent/s)",
            rate.dropped_pps, rate.sent_pps
        );
        nft_rates.push(rate);
    }

    // 3. Accept locality on B's loopback (ports of our own namespace).
    let with = locality::measure(&pair.b, 18181, cpus, &allowed, per_cpu, true)?;
    let without = locality::measure(&pair.b, 18182, cpus, &allowed, per_cpu, false)?;
    eprintln!(
        "xdp: accept locality {:.1} % with sk_reuseport, {:.1} % with the kernel hash",
        with.pct(),
        without.pct()
    );
    let frame_bytes = spec.frame.len();
    drop(spec);
    drop(pair);

    let drops = |r: &[Rate]| r.iter().map(|r| r.dropped_pps).collect::<Vec<_>>();
    let sents = |r: &[Rate]| median(&r.iter().map(|r| r.sent_pps).collect::<Vec<_>>());
    let (xdp_pps, nft_pps) = (median(&drops(&xdp_rates)), median(&drops(&nft_rates)));
    let ratio = if nft_pps > 0.0 {
        xdp_pps / nft_pps
    } else {
        0.0
    };
    let results = XdpResults {
        xdp_drop_pps: xdp_pps,
        nftables_drop_pps: nft_pps,
        xdp_to_nftables_drop_ratio: ratio,
        xdp_ns_per_packet: f64::midpoint(ns_drop, ns_pass),
        xdp_ns_per_packet_drop: ns_drop,
        xdp_ns_per_packet_pass: ns_pass,
        accept_locality_pct_reuseport: with.pct(),
        accept_locality_pct_kernel_hash: without.pct(),
        xdp_sent_pps: sents(&xdp_rates),
        nftables_sent_pps: sents(&nft_rates),
        xdp_drop_pps_rounds: drops(&xdp_rates),
        nftables_drop_pps_rounds: drops(&nft_rates),
    };
    let mut targets = BTreeMap::new();
    targets.insert(
        "xdp_drop_rate_vs_nftables".to_owned(),
        Target::at_least(
            "XDP strict-mode drop rate >= 3 x nftables' on the same veth pair (ratio)",
            3.0,
            ratio,
        ),
    );
    targets.insert(
        "accept_locality_reuseport".to_owned(),
        Target::at_least(
            "100 % of accepts on the receiving core with sk_reuseport (%)",
            100.0,
            with.pct(),
        ),
    );
    let parameters = XdpParameters {
        veth: format!("{VETH_A} (ns A) -> {VETH_B} (ns B), 10.252.k.0/30"),
        sender: format!(
            "AF_PACKET + PACKET_QDISC_BYPASS, sendmmsg x {}, one thread per cpu",
            flood::BATCH
        ),
        sender_cpus: cpus.to_vec(),
        frame_bytes,
        port: args.port,
        rounds_per_mode: rounds,
        window_s: window.as_secs_f64(),
        warmup_s: args.warmup_s,
        xdp_attach_mode: mode.to_string(),
        nftables_hook: hook.describe().to_owned(),
        test_run_repeat: repeat,
        test_run_calls,
        locality_connections_per_cpu: per_cpu,
        locality_cpus: cpus,
        note: "2-core machine: the senders use both cores and the veth receive path runs in \
               their softirq, so the drop rates are sender + drop path on 2 cores; the \
               sender's cost is the same for both modes. On a veth the skb exists before \
               XDP runs, and veth/generic XDP copy skbs with < 256 B headroom \
               (skb_pp_cow_data), so XDP cannot show its NIC-driver advantage here"
            .to_owned(),
    };
    let (git_rev, git_dirty) = git_revision();
    let report = Report {
        benchmark: "xdp".to_owned(),
        timestamp: utc_timestamp(),
        git_rev,
        git_dirty,
        machine: Machine::detect(&cpus),
        smoke,
        parameters,
        results,
        targets,
    };
    Ok(report.write_to(&args.common.output_dir)?)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-12);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-12);
        assert!(median(&[]).abs() < 1e-12);
    }
}
