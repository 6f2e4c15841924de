//! `mercato bench`: a gRPC load generator for our API (in the spirit of ghz).
//!
//! Closed loop (the default): `--concurrency` callers over `--connections`
//! HTTP/2 connections, each sending its next call when the previous one
//! answers. Open loop (`--rate`): calls start on a fixed schedule whatever
//! the answers, and each latency is measured from the call's scheduled
//! start, so a stalled server shows up in the percentiles instead of
//! silently slowing the load (coordinated omission). A warm-up runs first
//! and is not recorded. Latencies go into an HDR histogram (µs, 3
//! significant digits).

mod ceiling;
mod report;
mod scenarios;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use clap::Args;
use hdrhistogram::Histogram;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

pub(crate) use ceiling::{CeilingArgs, serve as serve_ceiling};
pub(crate) use report::Report;
use scenarios::{Clients, Scenario, Seeded};

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// health, get-user, create-user, list-orders, create-order or mixed.
    #[arg(long, default_value = "health")]
    scenario: Scenario,
    /// The user service (and health checks), host:port.
    #[arg(long, default_value = "127.0.0.1:9090")]
    user_addr: String,
    /// The order service (catalog and orders), host:port.
    #[arg(long, default_value = "127.0.0.1:9090")]
    order_addr: String,
    /// Calls in flight at once (closed loop), or at most (open loop).
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// HTTP/2 connections per service the calls are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Open loop: start this many calls per second instead of a closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// Seconds of unrecorded warm-up.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// What create-order pays with: `pm_approve` for the simulated
    /// provider, a Stripe test method (`pm_card_visa`) through Stripe.
    #[arg(long, default_value = "pm_approve")]
    payment_method: String,
    /// Bearer token (admin: the scenarios seed their own data).
    #[arg(long, env = "MERCATO_TOKEN", default_value = "")]
    token: String,
    /// The name the report gives the run (default: the scenario's).
    #[arg(long)]
    label: Option<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

async fn connect(addr: &str, count: usize) -> Result<Vec<Channel>, Box<dyn std::error::Error>> {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        // One Endpoint::connect per channel: each is its own TCP connection.
        let channel = Endpoint::from_shared(uri.clone())?
            .tcp_nodelay(true)
            .initial_connection_window_size(4 << 20)
            .initial_stream_window_size(1 << 20)
            .connect()
            .await?;
        channels.push(channel);
    }
    Ok(channels)
}

/// What the callers share while running.
struct Run {
    /// Calls finished so far (for the progress line), warm-up included.
    done: AtomicU64,
    failed: AtomicU64,
    /// Set when the measured period is over.
    stop: AtomicBool,
}

/// One caller's (or the open-loop collector's) results.
struct Tally {
    latencies: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latencies: Histogram::new_with_bounds(1, 120_000_000, 3)
                .expect("valid histogram bounds"),
            errors: BTreeMap::new(),
        }
    }

    fn record(&mut self, latency: Duration, outcome: Result<(), tonic::Code>) {
        let micros = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        let _ = self.latencies.record(micros.min(120_000_000));
        if let Err(code) = outcome {
            *self.errors.entry(format!("{code:?}")).or_default() += 1;
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.latencies.add(&other.latencies);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
    }
}

/// Seeds the scenario's data, runs it, prints and returns the report.
pub(crate) async fn run(args: BenchArgs) -> Result<Report, Box<dyn std::error::Error>> {
    let clients = Clients::new(
        connect(&args.user_addr, args.connections).await?,
        connect(&args.order_addr, args.connections).await?,
        &args.token,
    )?;
    let seeded = Arc::new(Seeded::prepare(args.scenario, &clients, &args.payment_method).await?);
    let run = Arc::new(Run {
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let started = Instant::now();
    let measure_from = started + Duration::from_secs_f64(args.warmup);
    let measure_until = measure_from + Duration::from_secs_f64(args.duration);
    let progress = tokio::spawn(progress(run.clone(), started, measure_from));

    let tally = match args.rate {
        None => closed_loop(&args, &clients, &seeded, &run, measure_from, measure_until).await,
        Some(rate) => {
            open_loop(
                &args,
                rate,
                &clients,
                &seeded,
                &run,
                measure_from,
                measure_until,
            )
            .await
        }
    };
    run.stop.store(true, Ordering::Release);
    progress.abort();
    eprintln!();
    let report = Report::new(&args, &tally.latencies, tally.errors, args.duration);
    report.print();
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(report)
}

/// Each caller sends its next call as soon as the previous one answers.
async fn closed_loop(
    args: &BenchArgs,
    clients: &Clients,
    seeded: &Arc<Seeded>,
    run: &Arc<Run>,
    measure_from: Instant,
    measure_until: Instant,
) -> Tally {
    let sequence = Arc::new(AtomicU64::new(0));
    let callers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (clients, seeded, run, sequence) = (
                clients.clone(),
                seeded.clone(),
                run.clone(),
                sequence.clone(),
            );
            let scenario = args.scenario;
            tokio::spawn(async move {
                let mut tally = Tally::new();
                loop {
                    let start = Instant::now();
                    if start >= measure_until {
                        return tally;
                    }
                    let n = sequence.fetch_add(1, Ordering::Relaxed);
                    let outcome = scenario.call(&clients, &seeded, n).await;
                    run.done.fetch_add(1, Ordering::Relaxed);
                    if outcome.is_err() {
                        run.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    if start >= measure_from && start < measure_until {
                        tally.record(start.elapsed(), outcome);
                    }
                }
            })
        })
        .collect();
    let mut total = Tally::new();
    for caller in callers {
        if let Ok(tally) = caller.await {
            total.merge(tally);
        }
    }
    total
}

/// Calls start on schedule; latency counts from the scheduled start.
async fn open_loop(
    args: &BenchArgs,
    rate: u64,
    clients: &Clients,
    seeded: &Arc<Seeded>,
    run: &Arc<Run>,
    measure_from: Instant,
    measure_until: Instant,
) -> Tally {
    let (tx, mut rx) =
        tokio::sync::mpsc::unbounded_channel::<(Duration, Result<(), tonic::Code>)>();
    let collector = tokio::spawn(async move {
        let mut tally = Tally::new();
        while let Some((latency, outcome)) = rx.recv().await {
            tally.record(latency, outcome);
        }
        tally
    });
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let origin = Instant::now();
    let mut n: u64 = 0;
    loop {
        let scheduled = origin + interval.mul_f64(n as f64);
        if scheduled >= measure_until {
            break;
        }
        tokio::time::sleep_until(scheduled).await;
        let (clients, seeded, run, tx, in_flight) = (
            clients.clone(),
            seeded.clone(),
            run.clone(),
            tx.clone(),
            in_flight.clone(),
        );
        let scenario = args.scenario;
        tokio::spawn(async move {
            // Waiting for a free slot counts: the call was due at `scheduled`.
            let Ok(_permit) = in_flight.acquire_owned().await else {
                return;
            };
            let outcome = scenario.call(&clients, &seeded, n).await;
            run.done.fetch_add(1, Ordering::Relaxed);
            if outcome.is_err() {
                run.failed.fetch_add(1, Ordering::Relaxed);
            }
            if scheduled >= measure_from {
                let _ = tx.send((scheduled.elapsed(), outcome));
            }
        });
        n += 1;
    }
    drop(tx);
    // Calls still in flight finish and report before the collector ends.
    collector.await.unwrap_or_else(|_| Tally::new())
}

/// One line per second on stderr: phase, calls/s, errors so far.
async fn progress(run: Arc<Run>, started: Instant, measure_from: Instant) {
    let mut last = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        if run.stop.load(Ordering::Acquire) {
            return;
        }
        let done = run.done.load(Ordering::Relaxed);
        let phase = if Instant::now() < measure_from {
            "warm-up"
        } else {
            "measuring"
        };
        eprint!(
            "\r[{:>4.0}s {phase:>9}] {:>8} calls/s, {} errors   ",
            started.elapsed().as_secs_f64(),
            done - last,
            run.failed.load(Ordering::Relaxed)
        );
        last = done;
    }
}
