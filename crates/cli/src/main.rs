//! `rpcenv`: the command-line tool of rpcenv.
//!
//! - `rpcenv demo`: a master and three workers as separate processes, a scenario with a killed
//!   worker, and a check that every task completed exactly once.
//! - `rpcenv master` / `rpcenv worker`: the same roles, run by hand; `rpcenv submit` queues tasks
//!   on a master and follows them.
//! - `rpcenv ping URI`: round trips to an endpoint.
//! - `rpcenv bench`: the shared benchmark workloads W1-W7.

// A binary: no item is reachable from outside it, so `pub` inside it means "the crate" already.
#![allow(unreachable_pub)]

mod bench;
mod demo;
mod hosts;
mod ping;
mod roles;
mod settings;
mod submit;

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
    /// Run the benchmark workloads W1-W7 and print one JSON line per workload.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut filter = cli.log_level.clone();
    if matches!(cli.command, Command::Worker(_)) && filter == DEFAULT_LOG_LEVEL {
        // A worker whose master is down logs one line per registration attempt, which already
        // names the connect failure that rpcenv's outbox would log too.
        filter.push_str(",rpcenv::outbox=error");
    }
    init_logging(&filter);
    let conf = match settings::conf_from_args(&cli.conf) {
        Ok(conf) => conf,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let result = match &cli.command {
        Command::Demo(args) => demo::run(args, &conf, &cli.conf, &cli.log_level),
        Command::Master(args) => roles::run_master(args, &conf),
        Command::Worker(args) => roles::run_worker(args, &conf),
        Command::Submit(args) => submit::run(args, &conf),
        Command::Ping(args) => ping::run(args, &conf),
        Command::Bench(args) => bench::run(args, &conf),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
