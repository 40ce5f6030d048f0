//! `rpcenv bench`: the shared benchmark workloads W1-W7 of `shared/design/WORKLOADS.md`, run
//! against rpcenv with its default configuration, printing one JSON line per workload in the
//! format every anchor harness prints (`"system":"rpcenv"`). `file_fetch`, run only when named,
//! fetches a 256 MiB file through `open_channel` from a file server over loopback (`ops` =
//! files, `ops_per_sec` = files/s, p50/p99 per file).
//!
//! One process: a server env hosting the endpoints and client env(s), each bound to its own
//! port on 127.0.0.1, so every remote message crosses a real TCP connection. Endpoints are the
//! default one-at-a-time kind. Warm-up (batches of 10% of the ops until at least 2 s have
//! passed; one batch with `--quick`) is not counted; W7 warms up for 1 s at its own pace. p50 /
//! p99 are nearest-rank over per-op latencies (W1, W2, W4, W6, W7). `rss_kb` is VmHWM at the end
//! of the workload. `cpu_us_per_op` is the CPU time (user + system, all threads) the whole process
//! used during the measured phase, read from `/proc/self/stat` when the phase starts and ends,
//! divided by the ops: it counts the server env, the client env(s) and any idle background
//! work, so a workload's figure covers both ends of every message. When several
//! workloads are asked for, each runs in a child process of its own (the same command, told which
//! workload through `RPCENV_BENCH_ONLY`), so that its peak RSS is its own and not what an earlier
//! workload left behind, as with the one-JVM-per-workload Spark anchor.

mod core_rtt;
mod workloads;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use rpcenv::RpcConf;

use crate::usage::peak_rss_kb;
pub(crate) use crate::usage::process_cpu;

/// Arguments of `rpcenv bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Workloads to run (W1..W7 or their names, or file_fetch); W1..W7 when none is given.
    pub workloads: Vec<String>,
    /// 10% of the operation counts (a smoke run).
    #[arg(long)]
    pub quick: bool,
    /// One JSON line per workload (the default).
    #[arg(long)]
    pub json: bool,
    /// A human-readable table instead of JSON lines.
    #[arg(long)]
    pub table: bool,
    /// Size of the file `file_fetch` serves and fetches (e.g. 256m, 1g); the run fetches it
    /// until about 1 GiB has been read (at least once).
    #[arg(long, value_name = "SIZE", default_value = "256m", value_parser = parse_file_size)]
    pub file_size: u64,
    /// Measure only the round trip of a cache line between two cores and print it as
    /// `{"probe":"core_round_trip","ns":N}`: the machine state that moves throughput most
    /// (about 55 ns or 340 ns on the 2-core virtual machines; W2 runs 1.8x slower in the second).
    #[arg(long, conflicts_with_all = ["workloads", "table"])]
    pub core_rtt: bool,
}

fn parse_file_size(v: &str) -> Result<u64, String> {
    match rpcenv::conf::parse_size(v, 1)? {
        0 => Err("the file must not be empty".to_string()),
        n => Ok(n),
    }
}

/// One of the shared workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    AskLatency,
    AskThroughput,
    SendThroughput,
    AskLarge,
    LocalSend,
    FanIn,
    PacedAsk,
    FileFetch,
}

const ALL: [Workload; 7] = [
    Workload::AskLatency,
    Workload::AskThroughput,
    Workload::SendThroughput,
    Workload::AskLarge,
    Workload::LocalSend,
    Workload::FanIn,
    Workload::PacedAsk,
];

/// Workloads run only when named: not among the shared W1-W7 that every anchor runs.
const EXTRA: [Workload; 1] = [Workload::FileFetch];

/// Bytes `file_fetch` reads in all: its file (`--file-size`, 256 MiB by default), fetched whole
/// through `open_channel` from the file server of an env in the same process, this many bytes'
/// worth of times.
const FILE_FETCH_TOTAL: u64 = 1 << 30;

/// Outstanding asks in W2.
pub(crate) const W2_WINDOW: usize = 64;
/// Client envs in W6.
pub(crate) const W6_CLIENTS: usize = 32;
/// Outstanding asks per client env in W6.
pub(crate) const W6_WINDOW: usize = 8;
/// Request size of W4.
pub(crate) const LARGE_BYTES: usize = 1 << 20;
/// Payload size of every other workload.
pub(crate) const SMALL_BYTES: usize = 16;

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::AskLatency => "ask_latency",
            Workload::AskThroughput => "ask_throughput",
            Workload::SendThroughput => "send_throughput",
            Workload::AskLarge => "ask_large",
            Workload::LocalSend => "local_send",
            Workload::FanIn => "fan_in",
            Workload::PacedAsk => "paced_ask",
            Workload::FileFetch => "file_fetch",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Workload::AskLatency => "W1",
            Workload::AskThroughput => "W2",
            Workload::SendThroughput => "W3",
            Workload::AskLarge => "W4",
            Workload::LocalSend => "W5",
            Workload::FanIn => "W6",
            Workload::PacedAsk => "W7",
            // Not one of the shared workloads: its name is its id.
            Workload::FileFetch => "file_fetch",
        }
    }

    fn base_ops(self) -> usize {
        match self {
            Workload::AskLatency => 20_000,
            Workload::AskThroughput => 200_000,
            Workload::SendThroughput => 1_000_000,
            Workload::AskLarge => 500,
            Workload::LocalSend => 2_000_000,
            Workload::FanIn => 200_000,
            Workload::PacedAsk => 5_000,
            // Counted by `Plan::ops`, from the file's size.
            Workload::FileFetch => 1,
        }
    }

    fn payload_bytes(self, plan: Plan) -> usize {
        match self {
            Workload::AskLarge => LARGE_BYTES,
            Workload::FileFetch => plan.file_bytes as usize,
            _ => SMALL_BYTES,
        }
    }

    fn has_latency(self) -> bool {
        matches!(
            self,
            Workload::AskLatency
                | Workload::AskThroughput
                | Workload::AskLarge
                | Workload::FanIn
                | Workload::PacedAsk
                | Workload::FileFetch
        )
    }

    fn matches(self, arg: &str) -> bool {
        arg.eq_ignore_ascii_case(self.id()) || arg.eq_ignore_ascii_case(self.name())
    }
}

/// How much to run: the counts of WORKLOADS.md, or 10% of them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    quick: bool,
    /// The size of `file_fetch`'s file.
    pub(crate) file_bytes: u64,
}

impl Plan {
    /// Measured operations of `w`.
    pub(crate) fn ops(self, w: Workload) -> usize {
        if w == Workload::FileFetch {
            let files = FILE_FETCH_TOTAL.div_ceil(self.file_bytes).max(1) as usize;
            return if self.quick { 1 } else { files };
        }
        let base = w.base_ops();
        let n = if self.quick { base.div_ceil(10) } else { base };
        if w == Workload::FanIn {
            // Divisible among the client envs.
            n.div_ceil(W6_CLIENTS) * W6_CLIENTS
        } else {
            n
        }
    }

    /// Warm-up batch: 10% of the measured ops (a multiple of the client envs in W6).
    pub(crate) fn warmup_batch(self, w: Workload) -> usize {
        let n = self.ops(w).div_ceil(10).max(1);
        if w == Workload::FanIn {
            n.div_ceil(W6_CLIENTS) * W6_CLIENTS
        } else {
            n
        }
    }

    /// Warm-up of W7: 1 s at its own rate (a tenth of that with `--quick`).
    pub(crate) fn paced_warmup(self) -> Duration {
        if self.quick {
            Duration::from_millis(100)
        } else {
            Duration::from_secs(1)
        }
    }

    /// Warm-up rule: batches of 10% of the ops until at least 2 s have passed, so at least
    /// max(2 s, 10% of the ops); with `--quick`, a single batch.
    pub(crate) fn warmup_min(self) -> Duration {
        if self.quick {
            Duration::ZERO
        } else {
            Duration::from_secs(2)
        }
    }
}

/// Calls `batch(n)` with warm-up batch sizes until the warm-up rule is satisfied.
pub(crate) fn warm_up(plan: Plan, w: Workload, mut batch: impl FnMut(usize)) {
    let n = plan.warmup_batch(w);
    let t0 = std::time::Instant::now();
    loop {
        batch(n);
        if t0.elapsed() >= plan.warmup_min() {
            break;
        }
    }
}

/// The result of one measured run.
pub(crate) struct Measured {
    pub(crate) ops: usize,
    pub(crate) elapsed: Duration,
    /// Per-op latencies in nanoseconds; empty where not measured.
    pub(crate) lat_ns: Vec<u64>,
    /// CPU time of the whole process during the measured phase; `None` where it could not be
    /// read.
    pub(crate) cpu: Option<Duration>,
}

/// One line of output.
struct Outcome {
    workload: Workload,
    payload_bytes: usize,
    ops: usize,
    secs: f64,
    p50_us: Option<f64>,
    p99_us: Option<f64>,
    rss_kb: u64,
    cpu_us_per_op: Option<f64>,
}

impl Outcome {
    fn new(w: Workload, plan: Plan, mut m: Measured) -> Self {
        let (p50_us, p99_us) = if w.has_latency() && !m.lat_ns.is_empty() {
            m.lat_ns.sort_unstable();
            (
                Some(percentile(&m.lat_ns, 50.0) as f64 / 1000.0),
                Some(percentile(&m.lat_ns, 99.0) as f64 / 1000.0),
            )
        } else {
            (None, None)
        };
        Outcome {
            workload: w,
            payload_bytes: w.payload_bytes(plan),
            ops: m.ops,
            secs: m.elapsed.as_secs_f64().max(1e-9),
            p50_us,
            p99_us,
            rss_kb: peak_rss_kb(),
            cpu_us_per_op: m
                .cpu
                .filter(|_| m.ops > 0)
                .map(|cpu| cpu.as_secs_f64() * 1e6 / m.ops as f64),
        }
    }

    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    fn json(&self) -> String {
        let us = |v: Option<f64>| v.map_or_else(|| "null".to_string(), |v| format!("{v:.1}"));
        // CPU per op goes down to hundredths of a µs in W2/W3/W5.
        let cpu = self
            .cpu_us_per_op
            .map_or_else(|| "null".to_string(), |v| format!("{v:.3}"));
        format!(
            "{{\"system\":\"rpcenv\",\"workload\":\"{}\",\"payload_bytes\":{},\"ops\":{},\"secs\":{:.4},\"ops_per_sec\":{:.1},\"p50_us\":{},\"p99_us\":{},\"rss_kb\":{},\"cpu_us_per_op\":{}}}",
            self.workload.name(),
            self.payload_bytes,
            self.ops,
            self.secs,
            self.ops_per_sec(),
            us(self.p50_us),
            us(self.p99_us),
            self.rss_kb,
            cpu
        )
    }
}

/// Nearest-rank percentile of a sorted slice.
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Set in a child process: the one workload it runs.
const ONLY_VAR: &str = "RPCENV_BENCH_ONLY";

/// Runs workload `w` in a child process (this command again, limited to `w`), whose output goes
/// straight to ours. `None` when no child could be started.
fn run_in_child(w: Workload) -> Option<bool> {
    let exe = std::env::current_exe().ok()?;
    let status = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(ONLY_VAR, w.id())
        .stdin(std::process::Stdio::null())
        .status()
        .ok()?;
    Some(status.success())
}

fn selected(args: &[String]) -> anyhow::Result<Vec<Workload>> {
    if args.is_empty() {
        return Ok(ALL.to_vec());
    }
    let known = || ALL.iter().chain(EXTRA.iter());
    for a in args {
        if !known().any(|w| w.matches(a)) {
            anyhow::bail!("unknown workload {a:?}: use W1..W7 or a workload name (ask_latency, ask_throughput, send_throughput, ask_large, local_send, fan_in, paced_ask; file_fetch only when named)");
        }
    }
    Ok(known()
        .copied()
        .filter(|w| args.iter().any(|a| w.matches(a)))
        .collect())
}

fn table_header() -> String {
    format!(
        "{:<4} {:<16} {:>9} {:>8} {:>12} {:>10} {:>10} {:>9} {:>10}",
        "id", "workload", "ops", "secs", "ops/s", "p50 µs", "p99 µs", "rss MiB", "cpu µs/op"
    )
}

fn table_row(o: &Outcome) -> String {
    let us = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
    let mut s = String::new();
    let _ = write!(
        s,
        "{:<4} {:<16} {:>9} {:>8.3} {:>12.0} {:>10} {:>10} {:>9.1} {:>10}",
        // A workload outside W1-W7 has no id of its own.
        if o.workload.id() == o.workload.name() {
            "-"
        } else {
            o.workload.id()
        },
        o.workload.name(),
        o.ops,
        o.secs,
        o.ops_per_sec(),
        us(o.p50_us),
        us(o.p99_us),
        o.rss_kb as f64 / 1024.0,
        o.cpu_us_per_op
            .map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
    );
    s
}

/// Runs the selected workloads and prints their results.
pub fn run(args: &BenchArgs, conf: &RpcConf) -> anyhow::Result<ExitCode> {
    if args.json && args.table {
        anyhow::bail!("--json and --table exclude each other");
    }
    if args.core_rtt {
        let ns = core_rtt::core_round_trip_ns();
        println!("{{\"probe\":\"core_round_trip\",\"ns\":{ns:.1}}}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut workloads = selected(&args.workloads)?;
    let child = std::env::var(ONLY_VAR).ok();
    if let Some(only) = &child {
        workloads.retain(|w| w.matches(only));
    }
    let plan = Plan {
        quick: args.quick,
        file_bytes: args.file_size,
    };
    if args.table && child.is_none() {
        println!("{}", table_header());
    }
    let mut failed = false;
    for w in workloads {
        if child.is_none() {
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            if let Some(ok) = run_in_child(w) {
                failed |= !ok;
                continue;
            }
        }
        match workloads::run(w, plan, conf) {
            Ok(m) => {
                let outcome = Outcome::new(w, plan, m);
                if args.table {
                    println!("{}", table_row(&outcome));
                } else {
                    println!("{}", outcome.json());
                }
            }
            Err(e) => {
                failed = true;
                eprintln!("error: {} {}: {e:#}", w.id(), w.name());
                if args.table {
                    println!("{:<4} {:<16} skipped: {e}", w.id(), w.name());
                } else {
                    println!(
                        "{{\"system\":\"rpcenv\",\"workload\":\"{}\",\"skipped\":{}}}",
                        w.name(),
                        json_string(&format!("error: {e:#}"))
                    );
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUICK: Plan = Plan {
        quick: true,
        file_bytes: 256 << 20,
    };

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&[7], 99.0), 7);
    }

    #[test]
    fn quick_counts_are_a_tenth() {
        let quick = QUICK;
        assert_eq!(quick.ops(Workload::AskLatency), 2_000);
        assert_eq!(quick.ops(Workload::AskLarge), 50);
        assert_eq!(quick.ops(Workload::FanIn) % W6_CLIENTS, 0);
        let full = Plan {
            quick: false,
            ..QUICK
        };
        assert_eq!(full.ops(Workload::SendThroughput), 1_000_000);
        assert_eq!(full.ops(Workload::FanIn), 200_000);
    }

    #[test]
    fn workloads_are_selected_by_id_or_name() {
        let picked = selected(&["w4".into(), "ask_latency".into()]).unwrap();
        assert_eq!(picked, vec![Workload::AskLatency, Workload::AskLarge]);
        assert!(selected(&["W9".into()]).is_err());
        assert_eq!(selected(&[]).unwrap().len(), 7);
        assert_eq!(
            selected(&["paced_ask".into()]).unwrap(),
            vec![Workload::PacedAsk]
        );
    }

    #[test]
    fn file_fetch_runs_only_when_named() {
        assert!(!selected(&[]).unwrap().contains(&Workload::FileFetch));
        assert_eq!(
            selected(&["file_fetch".into(), "W1".into()]).unwrap(),
            vec![Workload::AskLatency, Workload::FileFetch]
        );
        assert_eq!(Workload::FileFetch.payload_bytes(QUICK), 256 << 20);
        let full = |file_bytes| Plan {
            quick: false,
            file_bytes,
        };
        // About 1 GiB in all, at least one file.
        assert_eq!(full(256 << 20).ops(Workload::FileFetch), 4);
        assert_eq!(full(1 << 30).ops(Workload::FileFetch), 1);
        assert_eq!(full(3 << 30).ops(Workload::FileFetch), 1);
        assert_eq!(QUICK.ops(Workload::FileFetch), 1);
        assert_eq!(parse_file_size("1g"), Ok(1 << 30));
        assert!(parse_file_size("0").is_err());
    }

    #[test]
    fn json_line_has_the_shared_format() {
        let o = Outcome {
            workload: Workload::LocalSend,
            payload_bytes: Workload::LocalSend.payload_bytes(QUICK),
            ops: 10,
            secs: 0.5,
            p50_us: None,
            p99_us: None,
            rss_kb: 1234,
            cpu_us_per_op: Some(41.5),
        };
        assert_eq!(
            o.json(),
            "{\"system\":\"rpcenv\",\"workload\":\"local_send\",\"payload_bytes\":16,\"ops\":10,\"secs\":0.5000,\"ops_per_sec\":20.0,\"p50_us\":null,\"p99_us\":null,\"rss_kb\":1234,\"cpu_us_per_op\":41.500}"
        );
    }

    #[test]
    fn cpu_per_op_is_the_measured_cpu_over_the_ops() {
        let m = Measured {
            ops: 4,
            elapsed: Duration::from_secs(1),
            lat_ns: Vec::new(),
            cpu: Some(Duration::from_millis(20)),
        };
        let o = Outcome::new(Workload::SendThroughput, QUICK, m);
        assert_eq!(o.cpu_us_per_op, Some(5_000.0));
        let unknown = Measured {
            ops: 4,
            elapsed: Duration::from_secs(1),
            lat_ns: Vec::new(),
            cpu: None,
        };
        assert!(Outcome::new(Workload::SendThroughput, QUICK, unknown)
            .json()
            .ends_with("\"cpu_us_per_op\":null}"));
    }
}
