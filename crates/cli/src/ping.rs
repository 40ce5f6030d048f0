//! `rpcenv ping URI`: checks an endpoint through its env's endpoint-verifier and times round
//! trips to it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use rpcenv::{RpcConf, RpcEndpointAddress, RpcEnv};

/// Arguments of `rpcenv ping`.
#[derive(clap::Args, Debug)]
pub struct PingArgs {
    /// The endpoint, `rpc://name@host:port`.
    pub uri: String,
    /// Round trips to make.
    #[arg(long, default_value_t = 4)]
    pub count: u32,
    /// Pause between round trips.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    rpcenv::conf::parse_duration(s, rpcenv::conf::TimeUnit::Seconds)
}

/// `rpcenv ping`.
pub fn run(args: &PingArgs, conf: &RpcConf) -> anyhow::Result<ExitCode> {
    let target = RpcEndpointAddress::parse(&args.uri)?;
    let Some(address) = target.address().cloned() else {
        anyhow::bail!(
            "{} is an endpoint of a client-mode env, which has no address to ping (expected rpc://name@host:port)",
            args.uri
        );
    };
    let env = RpcEnv::builder("ping")
        .client_mode(true)
        .conf(conf.clone())
        .build()?;
    let mut times = Vec::new();
    let mut failed = 0;
    for seq in 1..=args.count.max(1) {
        if seq > 1 {
            std::thread::sleep(args.interval);
        }
        let start = Instant::now();
        match env.check_endpoint(&address, target.name()) {
            Ok(()) => {
                let t = start.elapsed();
                println!("reply from {}: seq={seq} time={:.3} ms", args.uri, ms(t));
                times.push(t);
            }
            Err(e) => {
                failed += 1;
                println!("no reply from {}: seq={seq}: {e}", args.uri);
                if seq == 1 {
                    // The first failure is usually final (no such endpoint, nothing listening).
                    env.shutdown();
                    return Err(e).with_context(|| format!("ping {} failed", args.uri));
                }
            }
        }
    }
    times.sort();
    let answered = times.len();
    if let (Some(min), Some(max)) = (times.first(), times.last()) {
        let median = times[answered / 2];
        println!(
            "{} pings, {answered} answered; min/median/max = {:.3}/{:.3}/{:.3} ms",
            answered + failed,
            ms(*min),
            ms(median),
            ms(*max)
        );
    }
    env.shutdown();
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
