//! placeholder, being written
use std::process::ExitCode;
use rpcenv::RpcConf;
#[derive(clap::Args, Debug)]
pub struct DemoArgs {}
#[allow(clippy::ptr_arg)]
pub fn run(_args: &DemoArgs, _conf: &RpcConf, _pairs: &[String], _log: &str) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet")
}
