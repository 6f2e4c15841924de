//! The figures of a run, printed and as JSON.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::BenchArgs;

/// Latency percentiles in microseconds.
#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    pub(crate) p50: u64,
    pub(crate) p90: u64,
    pub(crate) p99: u64,
    pub(crate) p999: u64,
    pub(crate) max: u64,
    pub(crate) mean: f64,
}

/// What `mercato bench` measured.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) mode: String,
    pub(crate) concurrency: usize,
    pub(crate) connections: usize,
    pub(crate) duration_secs: f64,
    pub(crate) calls: u64,
    pub(crate) calls_per_sec: f64,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) latency_us: Latency,
}

impl Report {
    pub(super) fn new(
        args: &BenchArgs,
        latencies: &Histogram<u64>,
        errors: BTreeMap<String, u64>,
        duration_secs: f64,
    ) -> Self {
        let calls = latencies.len();
        Self {
            scenario: args
                .label
                .clone()
                .unwrap_or_else(|| format!("{:?}", args.scenario)),
            mode: match args.rate {
                Some(rate) => format!("open loop at {rate}/s"),
                None => "closed loop".into(),
            },
            concurrency: args.concurrency,
            connections: args.connections,
            duration_secs,
            calls,
            calls_per_sec: calls as f64 / duration_secs.max(f64::EPSILON),
            errors,
            latency_us: Latency {
                p50: latencies.value_at_quantile(0.50),
                p90: latencies.value_at_quantile(0.90),
                p99: latencies.value_at_quantile(0.99),
                p999: latencies.value_at_quantile(0.999),
                max: latencies.max(),
                mean: latencies.mean(),
            },
        }
    }

    pub(super) fn print(&self) {
        let ms = |us: u64| us as f64 / 1000.0;
        let l = &self.latency_us;
        println!(
            "{} ({}, {} callers over {} connections, {:.0} s)",
            self.scenario, self.mode, self.concurrency, self.connections, self.duration_secs
        );
        println!("  calls      {} ({:.0}/s)", self.calls, self.calls_per_sec);
        println!(
            "  latency    p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max)
        );
        if self.errors.is_empty() {
            println!("  errors     none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            println!("  errors     {}", list.join(", "));
        }
    }
}
