//! `rpcenv`: the command-line tool of rpcenv.
//!
//! - `rpcenv demo`: a master and three workers as separate processes, a scenario with a killed
//!   worker, and a check that every task completed exactly once.
//! - `rpcenv master` / `rpcenv worker`: the same roles, run by hand; `rpcenv submit` queues tasks
//!   on a master and follows them.
//! - `rpcenv ping URI`: round trips to an endpoint.
//! - `rpcenv fetch URI -o FILE`: a file from an RpcEnv file server (`rpcenv master
//!   --serve-file`, or Spark's driver).
//! - `rpcenv bench`: the shared benchmark workloads W1-W7.
//! - `rpcenv status URI` / `rpcenv top URI`: what a running env is doing (once, or every
//!   second); `--metrics-addr` serves the process's metrics to Prometheus.

// A binary: no item is reachable from outside it, so `pub` inside it means "the crate" already.
#![allow(unreachable_pub)]

mod bench;
mod demo;
mod fetch;
mod generated;
mod hosts;
mod observe;
mod ping;
mod roles;
mod settings;
mod submit;
mod usage;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// What is logged unless `--log-level` says otherwise.
const DEFAULT_LOG_LEVEL: &str = "warn";

#[derive(Parser, Debug)]
#[command(
    name = "rpcenv",
    version,
    about = "Spark's RpcEnv re-created in Rust: demo cluster, master / worker, ping, bench"
)]
struct Cli {
    /// A setting as KEY=VALUE (repeatable): one of rpcenv's keys (e.g. rpc.askTimeout=10s; the
    /// `spark.` prefix is accepted) or a free application key under `app.`.
    #[arg(long = "conf", global = true, value_name = "KEY=VALUE")]
    conf: Vec<String>,

    /// What to log on stderr: error, warn, info, debug, trace, or a tracing filter such as
    /// `rpcenv=debug`.
    #[arg(long, global = true, default_value = DEFAULT_LOG_LEVEL, value_name = "LEVEL")]
    log_level: String,

    /// How log lines are written on stderr: `text` (coloured only when stderr is a terminal) or
    /// `json` (one object per line).
    #[arg(long, global = true, default_value = "text", value_name = "FORMAT")]
    log_format: LogFormat,

    /// Serve this process's metrics at http://HOST:PORT/metrics in the Prometheus text format
    /// (master, worker and demo; bench too, to measure the recorder's cost: one workload at a
    /// time, or port 0).
    #[arg(long, global = true, value_name = "HOST:PORT")]
    metrics_addr: Option<std::net::SocketAddr>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a master and three workers as processes on 127.0.0.1 and play the demo scenario.
    Demo(demo::DemoArgs),
    /// Run a master: workers register with it and receive tasks.
    Master(roles::MasterArgs),
    /// Run a worker that registers with a master (again whenever the master loses it) and runs
    /// its tasks.
    Worker(roles::WorkerArgs),
    /// Submit tasks to a master; with --wait, follow them to the end.
    Submit(submit::SubmitArgs),
    /// Look an endpoint up through its env's endpoint-verifier and time round trips to it.
    Ping(ping::PingArgs),
    /// Download a file from an RpcEnv file server (rpcenv's or Spark's) through open_channel.
    Fetch(fetch::FetchArgs),
    /// Run the benchmark workloads W1-W7 and print one JSON line per workload.
    Bench(bench::BenchArgs),
    /// Print what a running env is doing: its endpoints, outboxes and connections.
    Status(observe::StatusArgs),
    /// Show what a running env is doing, redrawn every second with rates (q quits).
    Top(observe::TopArgs),
}

/// The formats of `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut filter = cli.log_level.clone();
    if matches!(cli.command, Command::Worker(_)) && filter == DEFAULT_LOG_LEVEL {
        // A worker whose master is down logs one line per registration attempt, which already
        // names the connect failure that rpcenv's outbox would log too.
        filter.push_str(",rpcenv::outbox=error");
    }
    init_logging(&filter, cli.log_format);
    let conf = match settings::conf_from_args(&cli.conf) {
        Ok(conf) => conf,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            return ExitCode::from(2);
        }
    };
    if let Some(addr) = cli.metrics_addr {
        let serves = matches!(
            cli.command,
            Command::Master(_) | Command::Worker(_) | Command::Demo(_) | Command::Bench(_)
        );
        let served = if serves {
            observe::serve_metrics(addr)
        } else {
            Err(anyhow::anyhow!(
                "--metrics-addr applies to master, worker, demo and bench only"
            ))
        };
        if let Err(e) = served {
            eprintln!("error: {}", error_text(&e));
            return ExitCode::from(2);
        }
    }
    let result = match &cli.command {
        Command::Demo(args) => demo::run(args, &conf, &cli.conf, &cli.log_level),
        Command::Master(args) => roles::run_master(args, &conf),
        Command::Worker(args) => roles::run_worker(args, &conf),
        Command::Submit(args) => submit::run(args, &conf),
        Command::Ping(args) => ping::run(args, &conf),
        Command::Fetch(args) => fetch::run(args, &conf),
        Command::Bench(args) => bench::run(args, &conf),
        Command::Status(args) => observe::run_status(args, &conf),
        Command::Top(args) => observe::run_top(args, &conf),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str, format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr is a pipe whose reader died, e.g. a demo
        // killed with its children still running) is dropped. By default the subscriber reports
        // the failure with `eprintln!`, which panics on the same broken pipe: in whatever thread
        // logged, a message loop thread included, whose inbox then never ran again and whose
        // env's shutdown waited for it forever.
        .log_internal_errors(false)
        .with_target(false)
        // Colour escapes only where a person reads them, never into a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The error and its causes on one line, each cause once: a library error whose message
/// already quotes its source (`connection to X failed: <source>`) also returns that source
/// from `Error::source`, so a plain `{:#}` would print it twice.
fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let line = cause.to_string();
        if text.contains(&line) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&line);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_text;

    #[derive(Debug, thiserror::Error)]
    #[error("connection to h:1 failed: {source}")]
    struct Quoting {
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let e = anyhow::Error::new(Quoting {
            source: std::io::Error::other("refused"),
        })
        .context("fetch failed");
        assert_eq!(
            error_text(&e),
            "fetch failed: connection to h:1 failed: refused"
        );
        let plain = anyhow::anyhow!("bad").context("outer");
        assert_eq!(error_text(&plain), "outer: bad");
    }
}
