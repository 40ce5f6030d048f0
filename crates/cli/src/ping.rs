//! placeholder, being written
use std::process::ExitCode;
use rpcenv::RpcConf;
#[derive(clap::Args, Debug)]
pub struct PingArgs {}
#[allow(clippy::ptr_arg)]
pub fn run(_args: &PingArgs, _conf: &RpcConf) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
