//! Reading aetherd's metrics endpoint (Prometheus / OpenMetrics text).
//!
//! A sample line is `name{label="value",…} number`; lines starting with `#`
//! are metadata. The benchmark needs sums of a metric over the samples whose
//! labels include given pairs (e.g. instances of one function over every core
//! and state), and a histogram's cumulative buckets summed over cores, so the
//! difference of two scrapes gives the distribution of what happened between
//! them ([`Buckets::since`], [`Buckets::quantile`]).

use crate::gateway::http::{frame, get_request, FrameError};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use thiserror::Error;

/// Bound of every connect, read and write of a scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors scraping the endpoint.
#[derive(Debug, Error)]
pub enum ScrapeError {
    /// Connecting, writing or reading failed.
    #[error("GET http://{addr}/metrics: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The answer is not a framed HTTP response.
    #[error("GET http://{addr}/metrics: {source}")]
    Frame {
        addr: SocketAddr,
        source: FrameError,
    },
    /// The connection closed before a complete response.
    #[error("GET http://{addr}/metrics: closed before a complete response")]
    Truncated { addr: SocketAddr },
    /// The endpoint answered something other than 200.
    #[error("GET http://{addr}/metrics answered {status}")]
    Status { addr: SocketAddr, status: u16 },
}

/// One scrape of the metrics endpoint.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    text: String,
}

impl Metrics {
    /// `GET /metrics` on `addr` (one connection per scrape: aetherd closes it).
    ///
    /// aetherd writes the head and the body of the answer separately, so
    /// with Nagle the body waits for our ACK of the head, which a delayed
    /// ACK holds ~40 ms: every scrape would take that long. The socket asks
    /// for immediate ACKs (`TCP_QUICKACK`, re-armed before every read).
    ///
    /// # Errors
    /// [`ScrapeError`].
    pub fn scrape(addr: SocketAddr) -> Result<Self, ScrapeError> {
        let io = |source| ScrapeError::Io { addr, source };
        let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(SCRAPE_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(SCRAPE_TIMEOUT)).map_err(io)?;
        stream.write_all(&get_request("/metrics")).map_err(io)?;
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut chunk = [0u8; 16 * 1024];
        let framed = loop {
            if let Some(f) = frame(&buf).map_err(|source| ScrapeError::Frame { addr, source })? {
                break f;
            }
            socket2::SockRef::from(&stream)
                .set_tcp_quickack(true)
                .map_err(io)?;
            match stream.read(&mut chunk) {
                Ok(0) => return Err(ScrapeError::Truncated { addr }),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        };
        if framed.status != 200 {
            return Err(ScrapeError::Status {
                addr,
                status: framed.status,
            });
        }
        let body = &buf[framed.head..framed.total];
        Ok(Self::from_text(String::from_utf8_lossy(body).into_owned()))
    }

    /// A scrape from its text (tests, or a file).
    #[must_use]
    pub fn from_text(text: String) -> Self {
        Self { text }
    }

    /// Sample lines as (name, labels, value).
    fn samples(&self) -> impl Iterator<Item = (&str, Vec<(&str, &str)>, f64)> {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value = value.parse::<f64>().ok()?;
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, parse_labels(rest.trim_end_matches('}'))),
                    None => (series, Vec::new()),
                };
                Some((name, labels, value))
            })
    }

    /// Sum of `name`'s samples whose labels include every pair of `want`;
    /// `None` when no sample matched (the metric is not exported).
    #[must_use]
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        let mut found = None;
        for (n, labels, v) in self.samples() {
            if n == name && want.iter().all(|w| labels.contains(w)) {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }

    /// The cumulative buckets of histogram `name` (its `name_bucket` series)
    /// whose labels include `want`, summed over the other labels (cores).
    #[must_use]
    pub fn buckets(&self, name: &str, want: &[(&str, &str)]) -> Buckets {
        let bucket = format!("{name}_bucket");
        let mut by_le: Vec<(f64, f64)> = Vec::new();
        for (n, labels, v) in self.samples() {
            if n != bucket || !want.iter().all(|w| labels.contains(w)) {
                continue;
            }
            let Some(le) = labels
                .iter()
                .find(|(k, _)| *k == "le")
                .and_then(|(_, v)| parse_le(v))
            else {
                continue;
            };
            match by_le.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += v,
                None => by_le.push((le, v)),
            }
        }
        by_le.sort_by(|a, b| a.0.total_cmp(&b.0));
        Buckets { cumulative: by_le }
    }
}

/// `k="v",k2="v2"` (values here never hold a comma or an escaped quote).
fn parse_labels(s: &str) -> Vec<(&str, &str)> {
    s.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
        .collect()
}

fn parse_le(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" | "inf" => Some(f64::INFINITY),
        _ => v.parse().ok(),
    }
}

/// Cumulative histogram buckets: (upper bound, observations ≤ bound), sorted
/// by bound, the last normally `+Inf`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    pub cumulative: Vec<(f64, f64)>,
}

impl Buckets {
    /// Observations made after `before` was scraped (bucket-wise difference;
    /// a bucket `before` lacks counts from zero).
    #[must_use]
    pub fn since(&self, before: &Self) -> Self {
        let cumulative = self
            .cumulative
            .iter()
            .map(|&(le, c)| {
                let old = before
                    .cumulative
                    .iter()
                    .find(|(b, _)| *b == le)
                    .map_or(0.0, |(_, c)| *c);
                (le, (c - old).max(0.0))
            })
            .collect();
        Self { cumulative }
    }

    /// Adds `other`'s counts bucket by bucket (same bounds expected).
    pub fn add(&mut self, other: &Self) {
        for &(le, c) in &other.cumulative {
            match self.cumulative.iter_mut().find(|(b, _)| *b == le) {
                Some((_, mine)) => *mine += c,
                None => self.cumulative.push((le, c)),
            }
        }
        self.cumulative.sort_by(|a, b| a.0.total_cmp(&b.0));
    }

    /// Number of observations.
    #[must_use]
    pub fn count(&self) -> f64 {
        self.cumulative.last().map_or(0.0, |(_, c)| *c)
    }

    /// Observations above `bound` (e.g. the requests that waited at all,
    /// with `bound` = 0 and a bucket at exactly 0).
    #[must_use]
    pub fn above(&self, bound: f64) -> f64 {
        let at_or_below = self
            .cumulative
            .iter()
            .filter(|(le, _)| *le <= bound)
            .map(|(_, c)| *c)
            .fold(0.0, f64::max);
        self.count() - at_or_below
    }

    /// Only the observations above `bound` (buckets at or below it dropped,
    /// the rest reduced by their count): the distribution of, say, the
    /// requests that waited.
    #[must_use]
    pub fn only_above(&self, bound: f64) -> Self {
        let below = self.count() - self.above(bound);
        Self {
            cumulative: self
                .cumulative
                .iter()
                .filter(|(le, _)| *le > bound)
                .map(|&(le, c)| (le, (c - below).max(0.0)))
                .collect(),
        }
    }

    /// The upper bound of the highest bucket that gained an observation
    /// (`+Inf` if that is the `+Inf` bucket); `None` without observations.
    #[must_use]
    pub fn max_bound(&self) -> Option<f64> {
        let mut prev = 0.0;
        let mut top = None;
        for &(le, c) in &self.cumulative {
            if c > prev {
                top = Some(le);
            }
            prev = c;
        }
        top
    }

    /// The `q` quantile the way Prometheus' `histogram_quantile` estimates
    /// it: find the first bucket whose cumulative count reaches `q × count`
    /// and interpolate linearly inside it (the lowest bucket starts at 0; a
    /// quantile in the `+Inf` bucket is the highest finite bound). `None`
    /// without observations.
    #[must_use]
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut lower = (0.0, 0.0);
        for &(le, c) in &self.cumulative {
            if c >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let inside = c - lower.1;
                let frac = if inside > 0.0 {
                    (rank - lower.1) / inside
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * frac);
            }
            lower = (le, c);
        }
        Some(lower.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::float_cmp)] // tests fail loudly by design
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP aether_instances Handler instances by lifecycle state.
# TYPE aether_instances gauge
aether_instances{core="0",function="f",state="ready"} 2
aether_instances{core="0",function="f",state="starting"} 1
aether_instances{core="1",function="f",state="ready"} 3
aether_instances{core="1",function="g",state="ready"} 7
aether_autoscale_desired_instances{function="f"} 8
aether_queue_wait_seconds_bucket{core="0",function="f",le="0.001"} 10
aether_queue_wait_seconds_bucket{core="0",function="f",le="0.01"} 10
aether_queue_wait_seconds_bucket{core="0",function="f",le="+Inf"} 10
aether_queue_wait_seconds_bucket{core="1",function="f",le="0.001"} 80
aether_queue_wait_seconds_bucket{core="1",function="f",le="0.01"} 90
aether_queue_wait_seconds_bucket{core="1",function="f",le="+Inf"} 100
aether_queue_wait_seconds_count{core="1",function="f"} 100
# EOF
"#;

    #[test]
    fn sums_samples_with_the_wanted_labels() {
        let m = Metrics::from_text(TEXT.to_owned());
        assert_eq!(m.sum("aether_instances", &[("function", "f")]), Some(6.0));
        assert_eq!(
            m.sum("aether_instances", &[("function", "f"), ("state", "ready")]),
            Some(5.0)
        );
        assert_eq!(m.sum("aether_instances", &[]), Some(13.0));
        assert_eq!(
            m.sum("aether_autoscale_desired_instances", &[("function", "f")]),
            Some(8.0)
        );
        assert_eq!(m.sum("aether_instances", &[("function", "h")]), None);
        assert_eq!(m.sum("aether_missing", &[]), None);
    }

    #[test]
    fn histogram_buckets_sum_over_cores_and_subtract() {
        let m = Metrics::from_text(TEXT.to_owned());
        let b = m.buckets("aether_queue_wait_seconds", &[("function", "f")]);
        assert_eq!(
            b.cumulative,
            vec![(0.001, 90.0), (0.01, 100.0), (f64::INFINITY, 110.0)]
        );
        let before = Buckets {
            cumulative: vec![(0.001, 40.0), (0.01, 40.0), (f64::INFINITY, 40.0)],
        };
        let d = b.since(&before);
        assert_eq!(
            d.cumulative,
            vec![(0.001, 50.0), (0.01, 60.0), (f64::INFINITY, 70.0)]
        );
        assert_eq!(d.count(), 70.0);
        let mut sum = d.clone();
        sum.add(&d);
        assert_eq!(sum.count(), 140.0);
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let b = Buckets {
            cumulative: vec![(0.001, 50.0), (0.01, 100.0), (f64::INFINITY, 100.0)],
        };
        // Rank 25 of 100 is half-way through the first bucket [0, 1 ms].
        assert!((b.quantile(0.25).unwrap() - 0.0005).abs() < 1e-12);
        // Rank 99: 49/50 of the way through (1 ms, 10 ms].
        assert!((b.quantile(0.99).unwrap() - (0.001 + 0.009 * 49.0 / 50.0)).abs() < 1e-12);
        // In the +Inf bucket: the highest finite bound.
        let tail = Buckets {
            cumulative: vec![(0.001, 1.0), (f64::INFINITY, 10.0)],
        };
        assert_eq!(tail.quantile(0.99), Some(0.001));
        assert_eq!(Buckets::default().quantile(0.5), None);
    }

    #[test]
    fn waits_above_zero_are_split_off() {
        // 90 did not wait (bucket le=0), 8 waited up to 1 ms, 2 up to 10 ms.
        let b = Buckets {
            cumulative: vec![
                (0.0, 90.0),
                (0.001, 98.0),
                (0.01, 100.0),
                (f64::INFINITY, 100.0),
            ],
        };
        assert_eq!(b.above(0.0), 10.0);
        assert_eq!(b.quantile(0.5), Some(0.0));
        let waited = b.only_above(0.0);
        assert_eq!(waited.count(), 10.0);
        assert_eq!(
            waited.cumulative,
            vec![(0.001, 8.0), (0.01, 10.0), (f64::INFINITY, 10.0)]
        );
        assert_eq!(b.max_bound(), Some(0.01));
        assert_eq!(Buckets::default().max_bound(), None);
    }
}
