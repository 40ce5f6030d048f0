//! `rpcenv submit <master-uri> --tasks N [--wait]`: queues tasks on a running master and, with
//! `--wait`, follows them to the end.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use rpcenv::{RpcConf, RpcEnv};
use rpcenv_cli::cluster::{MasterMsg, MasterRef, SubmissionReport, Submitted};

/// Arguments of `rpcenv submit`.
#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    /// The master, `rpc://master@host:port`.
    pub master: String,
    /// How many tasks (1 to the master's app.maxTasksPerSubmit, default 100000).
    #[arg(long)]
    pub tasks: u64,
    /// Follow the tasks to the end; the last line says whether each completed exactly once.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    rpcenv::conf::parse_duration(s, rpcenv::conf::TimeUnit::Seconds)
}

/// How often `--wait` asks the master.
const POLL: Duration = Duration::from_millis(100);

/// `rpcenv submit`.
pub fn run(args: &SubmitArgs, conf: &RpcConf) -> anyhow::Result<ExitCode> {
    let env = RpcEnv::builder("submit")
        .client_mode(true)
        .conf(conf.clone())
        .build()?;
    let result = submit(args, &env);
    env.shutdown();
    result
}

fn submit(args: &SubmitArgs, env: &RpcEnv) -> anyhow::Result<ExitCode> {
    let master: MasterRef = env
        .setup_endpoint_ref_by_uri(&args.master)
        .with_context(|| format!("cannot reach the master at {}", args.master))?;
    let n = args.tasks;
    let submitted: Submitted = master
        .ask_sync(MasterMsg::SubmitTasks { count: n })
        .with_context(|| format!("the master at {} refused {n} tasks", args.master))?;
    let Submitted { first, count } = submitted;
    if !args.wait {
        println!(
            "submitted {n} tasks (tasks {first} to {})",
            first + count - 1
        );
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = Instant::now() + args.timeout;
    let mut report = SubmissionReport {
        count,
        ..SubmissionReport::default()
    };
    let stopped = loop {
        match master.ask_sync::<SubmissionReport>(MasterMsg::SubmissionStatus { first }) {
            Ok(r) => report = r,
            Err(e) => break Some(format!("the master stopped answering: {e}")),
        }
        if report.completed >= count {
            break None;
        }
        if Instant::now() >= deadline {
            break Some(format!("gave up after {:?}", args.timeout));
        }
        std::thread::sleep(POLL);
    };
    let once = report.completed.saturating_sub(report.wrong_results);
    if stopped.is_none() && once == n && report.duplicates == 0 {
        println!("submitted {n} tasks: {n} completed exactly once");
        return Ok(ExitCode::SUCCESS);
    }
    let mut line = format!(
        "submitted {n} tasks: {once} completed exactly once, {} not completed",
        n - report.completed.min(n)
    );
    if report.duplicates > 0 {
        line += &format!(", {} completed more than once", report.duplicates);
    }
    if report.wrong_results > 0 {
        line += &format!(", {} with a wrong result", report.wrong_results);
    }
    if let Some(why) = stopped {
        line += &format!(" ({why})");
    }
    println!("{line}");
    Ok(ExitCode::FAILURE)
}
