//! `rpcenv bench`: the shared benchmark workloads (being written).

use std::process::ExitCode;

use rpcenv::RpcConf;

/// Arguments of `rpcenv bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Workloads to run (W1..W6 or their names); all when none is given.
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
}

pub fn run(args: &BenchArgs, conf: &RpcConf) -> anyhow::Result<ExitCode> {
    let _ = (args, conf);
    anyhow::bail!("rpcenv bench is not available in this build yet")
}
