//! placeholder, being written
use std::process::ExitCode;
use rpcenv::RpcConf;
#[derive(clap::Args, Debug)]
pub struct MasterArgs {}
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {}
pub fn run_master(_args: &MasterArgs, _conf: &RpcConf) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
pub fn run_worker(_args: &WorkerArgs, _conf: &RpcConf) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
