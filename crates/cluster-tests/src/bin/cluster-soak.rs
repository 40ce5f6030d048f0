//! `cluster-soak --duration D`: a local cluster (a master and three workers on 127.0.0.1) under a
//! steady mix of asks, one-way sends and task submissions, with a worker killed (SIGKILL) and
//! restarted every `--kill-every`; the master's RSS and descriptor count are sampled every
//! `--sample-every`. After a warm-up of a quarter of the duration, a least-squares line is fitted
//! to the samples: the run fails when RSS grows faster than 1 MiB/min, when the descriptors' line
//! grows by two or more over the measured window, or when a submitted task did not complete
//! exactly once. `bench/soak.sh` builds and runs it.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rpcenv::{RpcEnv, RpcTimeout};
use rpcenv_cli::cluster::{ClusterStatus, MasterMsg, MasterRef, SubmissionReport, Submitted};
use rpcenv_cluster_tests::process::{wait_until, Proc};
use rpcenv_cluster_tests::stats::slope;

#[derive(Parser)]
struct Args {
    /// How long to run.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    duration: Duration,
    /// The `rpcenv` binary (default: the one built next to this one).
    #[arg(long)]
    rpcenv: Option<PathBuf>,
    /// Workers in the cluster.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// How often a worker is killed and restarted.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    kill_every: Duration,
    /// How often the master's RSS and descriptors are sampled.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    sample_every: Duration,
    /// Asks and sends per second (each).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Tasks per submission (one every two seconds).
    #[arg(long, default_value_t = 100)]
    tasks: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    rpcenv::conf::parse_duration(s, rpcenv::conf::TimeUnit::Seconds)
}

/// RSS growth that fails the soak, in KiB per minute.
const MAX_RSS_SLOPE_KIB_PER_MIN: f64 = 1024.0;
/// Fitted descriptor growth over the measured window that fails the soak.
const MAX_FD_GROWTH: f64 = 2.0;
const START: Duration = Duration::from_secs(30);

struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: usize,
}

#[derive(Default)]
struct Load {
    stop: AtomicBool,
    asks: AtomicU64,
    ask_failures: AtomicU64,
    sends: AtomicU64,
    send_failures: AtomicU64,
}

fn main() -> ExitCode {
    rpcenv_cluster_tests::init_logging();
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            println!("soak FAILED: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn start_worker(bin: &PathBuf, uri: &str, id: &str) -> anyhow::Result<Proc> {
    let mut c = Command::new(bin);
    c.args([
        "worker",
        "--master",
        uri,
        "--host",
        "127.0.0.1",
        "--id",
        id,
        "--task-time",
        "5ms",
        "--parent-watch",
    ]);
    let p = Proc::spawn(format!("worker {id}"), c)?;
    let expected = format!("worker {id} registered with ");
    p.wait_line("its registration line", START, |l| l.starts_with(&expected))?;
    Ok(p)
}

fn run(args: &Args) -> anyhow::Result<bool> {
    let bin = match &args.rpcenv {
        Some(p) => p.clone(),
        None => rpcenv_cluster_tests::rpcenv_bin()?,
    };
    let mut master_cmd = Command::new(&bin);
    master_cmd.args([
        "master",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--worker-timeout",
        "2s",
        "--parent-watch",
    ]);
    let master = Proc::spawn("master", master_cmd)?;
    let uri = master
        .wait_line("its listening line", START, |l| {
            l.starts_with("master listening on ")
        })?
        .text["master listening on ".len()..]
        .to_string();
    let ids: Vec<String> = (0..args.workers).map(|i| format!("soak-{i}")).collect();
    let mut workers = ids
        .iter()
        .map(|id| start_worker(&bin, &uri, id))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let env = RpcEnv::builder("soak").client_mode(true).build()?;
    let master_ref: MasterRef = env.setup_endpoint_ref_by_uri(&uri)?;
    let load = Arc::new(Load::default());
    let pause = Duration::from_micros(1_000_000 / args.rate.max(1));
    let asker = {
        let (load, m) = (load.clone(), master_ref.clone());
        std::thread::spawn(move || {
            while !load.stop.load(Ordering::Relaxed) {
                match m.ask_sync::<ClusterStatus>(MasterMsg::Status) {
                    Ok(_) => load.asks.fetch_add(1, Ordering::Relaxed),
                    Err(_) => load.ask_failures.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(pause);
            }
        })
    };
    let sender = {
        let (load, m) = (load.clone(), master_ref.clone());
        std::thread::spawn(move || {
            while !load.stop.load(Ordering::Relaxed) {
                match m.send(MasterMsg::CheckWorkers) {
                    Ok(()) => load.sends.fetch_add(1, Ordering::Relaxed),
                    Err(_) => load.send_failures.fetch_add(1, Ordering::Relaxed),
                };
                std::thread::sleep(pause);
            }
        })
    };

    let started = Instant::now();
    let mut samples = Vec::new();
    let mut submissions: Vec<Submitted> = Vec::new();
    let (mut next_sample, mut next_kill, mut next_submit) =
        (Duration::ZERO, args.kill_every / 2, Duration::ZERO);
    let mut kills = 0usize;
    loop {
        let now = started.elapsed();
        if now >= args.duration {
            break;
        }
        if now >= next_sample {
            let s = Sample {
                at: now,
                rss_kib: master.rss_kib()?,
                fds: master.fd_count()?,
            };
            println!(
                "t={:>4}s rss_kib={} fds={} asks={} sends={} submissions={} kills={kills}",
                s.at.as_secs(),
                s.rss_kib,
                s.fds,
                load.asks.load(Ordering::Relaxed),
                load.sends.load(Ordering::Relaxed),
                submissions.len()
            );
            std::io::stdout().flush()?;
            samples.push(s);
            next_sample += args.sample_every;
        }
        if now >= next_submit {
            let s: Submitted = master_ref
                .ask_sync(MasterMsg::SubmitTasks { count: args.tasks })
                .context("a submission")?;
            submissions.push(s);
            next_submit += Duration::from_secs(2);
        }
        if now >= next_kill {
            let i = kills % workers.len();
            workers[i].kill()?;
            workers[i] = start_worker(&bin, &uri, &ids[i])?;
            kills += 1;
            next_kill += args.kill_every;
        }
        let next = next_sample
            .min(next_kill)
            .min(next_submit)
            .min(args.duration);
        std::thread::sleep(next.saturating_sub(started.elapsed()));
    }
    load.stop.store(true, Ordering::Relaxed);
    let _ = asker.join();
    let _ = sender.join();

    // Every submission must complete, each task exactly once.
    let mut report = SubmissionReport::default();
    for s in &submissions {
        let r = wait_until(
            "a submission completing",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                master_ref
                    .ask_sync_with_timeout::<SubmissionReport>(
                        MasterMsg::SubmissionStatus { first: s.first },
                        RpcTimeout::new(Duration::from_secs(10), "the soak's status timeout"),
                    )
                    .ok()
                    .filter(|r| r.completed >= r.count)
            },
        )?;
        report.count += r.count;
        report.completed += r.completed;
        report.duplicates += r.duplicates;
        report.wrong_results += r.wrong_results;
    }
    env.shutdown();
    drop(workers);

    let warm_up = args.duration / 4;
    let measured: Vec<&Sample> = samples.iter().filter(|s| s.at >= warm_up).collect();
    if measured.len() < 3 {
        bail!(
            "only {} samples after the warm-up: run longer",
            measured.len()
        );
    }
    let minutes = |s: &Sample| s.at.as_secs_f64() / 60.0;
    // Growth per minute of one sampled quantity, fitted over the measured samples.
    let per_minute = |value: fn(&Sample) -> f64| {
        let points: Vec<(f64, f64)> = measured.iter().map(|s| (minutes(s), value(s))).collect();
        slope(&points).unwrap_or(0.0)
    };
    let rss_slope = per_minute(|s| s.rss_kib as f64);
    let fd_slope = per_minute(|s| s.fds as f64);
    let window = minutes(measured[measured.len() - 1]) - minutes(measured[0]);
    let (first, last) = (measured[0], measured[measured.len() - 1]);
    let asks = load.asks.load(Ordering::Relaxed);
    let sends = load.sends.load(Ordering::Relaxed);
    let ask_failures = load.ask_failures.load(Ordering::Relaxed);
    let send_failures = load.send_failures.load(Ordering::Relaxed);
    let summary = format!(
        "{}s, master RSS {:.1} -> {:.1} MiB after the warm-up (slope {:+.3} MiB/min, limit 1), \
         fds {} -> {} (slope {:+.2}/min), asks {asks} ({ask_failures} failed), sends {sends} \
         ({send_failures} failed), tasks {}/{} exactly once, kills survived {kills}",
        args.duration.as_secs(),
        first.rss_kib as f64 / 1024.0,
        last.rss_kib as f64 / 1024.0,
        rss_slope / 1024.0,
        first.fds,
        last.fds,
        fd_slope,
        report.completed - report.duplicates.min(report.completed),
        report.count,
    );
    let mut failures = Vec::new();
    if rss_slope > MAX_RSS_SLOPE_KIB_PER_MIN {
        failures.push("RSS grows faster than 1 MiB/min".to_string());
    }
    if fd_slope * window >= MAX_FD_GROWTH {
        failures.push(format!(
            "descriptors grow ({:+.1} over the measured window)",
            fd_slope * window
        ));
    }
    if report.completed != report.count || report.duplicates > 0 || report.wrong_results > 0 {
        failures.push(format!(
            "tasks: {} submitted, {} completed, {} duplicates, {} wrong",
            report.count, report.completed, report.duplicates, report.wrong_results
        ));
    }
    if ask_failures > 0 {
        failures.push(format!("{ask_failures} asks to the master failed"));
    }
    if failures.is_empty() {
        println!("soak OK: {summary}");
        Ok(true)
    } else {
        println!("soak FAILED: {}: {summary}", failures.join("; "));
        Ok(false)
    }
}
