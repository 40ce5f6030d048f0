//! `cluster-peer`: the processes the fault scenarios run on their simulated hosts besides
//! `rpcenv` itself.
//!
//! - `serve`: an env with the [`Echo`] endpoint; prints `serving rpc://echo@HOST:PORT`.
//! - `ask`: N client envs (sharing one runtime) that each make M asks to a URI; prints
//!   `connected N envs`, then one `asks ok=.. failed=.. out_of_order=.. p50_us=.. p99_us=..
//!   elapsed_ms=..` line and, for a
//!   failure, `first error: ..`. With `--hold` it keeps its envs until stdin closes.
//! - `probe`: for each stdin line, checks that an endpoint exists with one ask to its env's
//!   endpoint-verifier (bounded by `rpc.lookupTimeout`); prints `ok MS` or `err MS ERROR`.
//!
//! Every subcommand exits when its stdin closes, so a harness that dies takes them along.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use rpcenv::{RpcConf, RpcEndpointAddress, RpcEndpointRef, RpcEnv};
use rpcenv_cluster_tests::probe::{ask_loop, Echo, Probe, ECHO};
use rpcenv_cluster_tests::stats::quantile;

#[derive(Parser)]
struct Cli {
    /// A setting as KEY=VALUE (repeatable).
    #[arg(long = "conf", global = true)]
    conf: Vec<String>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the echo endpoint.
    Serve {
        #[arg(long, default_value = "0.0.0.0")]
        bind_host: String,
        #[arg(long)]
        advertise_host: String,
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Ask an echo endpoint from many client envs.
    Ask {
        /// The echo endpoint's URI.
        #[arg(long)]
        uri: String,
        /// Client envs in this process.
        #[arg(long, default_value_t = 1)]
        envs: u32,
        /// Asks per env, one after another.
        #[arg(long, default_value_t = 1)]
        asks: u32,
        /// Payload bytes per ask (and per reply).
        #[arg(long, default_value_t = 16)]
        size: usize,
        /// Make each env's asks all at once (then await them in order) instead of one by one.
        #[arg(long)]
        pipelined: bool,
        /// Keep the envs (and their connections) until stdin closes.
        #[arg(long)]
        hold: bool,
    },
    /// Check an endpoint once per stdin line.
    Probe {
        #[arg(long)]
        uri: String,
    },
}

fn conf(pairs: &[String]) -> anyhow::Result<RpcConf> {
    let mut conf = RpcConf::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--conf {pair}: expected KEY=VALUE"))?;
        conf.set(k, v)?;
    }
    Ok(conf)
}

fn main() -> anyhow::Result<()> {
    rpcenv_cluster_tests::init_logging();
    let cli = Cli::parse();
    let conf = conf(&cli.conf)?;
    match cli.command {
        Cmd::Serve {
            bind_host,
            advertise_host,
            port,
        } => serve(conf, &bind_host, &advertise_host, port),
        Cmd::Ask {
            uri,
            envs,
            asks,
            size,
            pipelined,
            hold,
        } => ask(
            conf,
            &uri,
            Load {
                envs,
                asks,
                size,
                pipelined,
            },
            hold,
        ),
        Cmd::Probe { uri } => probe(conf, &uri),
    }
}

/// Blocks until stdin closes.
fn until_stdin_closes() {
    let mut sink = String::new();
    let stdin = std::io::stdin();
    while matches!(stdin.lock().read_line(&mut sink), Ok(n) if n > 0) {
        sink.clear();
    }
}

fn serve(conf: RpcConf, bind: &str, advertise: &str, port: u16) -> anyhow::Result<()> {
    let env = RpcEnv::builder("echo-server")
        .bind_host(bind)
        .advertise_host(advertise)
        .port(port)
        .conf(conf)
        .build()?;
    env.setup_endpoint(ECHO, Echo::default())?;
    let address = env.address().context("a server env has an address")?;
    println!("serving rpc://{ECHO}@{address}");
    std::io::stdout().flush()?;
    until_stdin_closes();
    env.shutdown();
    Ok(())
}

/// What `ask` does.
struct Load {
    envs: u32,
    asks: u32,
    size: usize,
    pipelined: bool,
}

fn ask(conf: RpcConf, uri: &str, load: Load, hold: bool) -> anyhow::Result<()> {
    let Load {
        envs,
        asks,
        size,
        pipelined,
    } = load;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut clients = Vec::new();
    for i in 0..envs {
        clients.push(
            RpcEnv::builder(format!("client-{i}"))
                .client_mode(true)
                .runtime(rt.handle().clone())
                .conf(conf.clone())
                .build()?,
        );
    }
    let refs: Vec<RpcEndpointRef<Probe>> = rt.block_on(async {
        let mut refs = Vec::new();
        for env in &clients {
            refs.push(env.setup_endpoint_ref_by_uri_async(uri).await?);
        }
        Ok::<_, rpcenv::RpcError>(refs)
    })?;
    println!("connected {envs} envs");
    std::io::stdout().flush()?;
    let start = Instant::now();
    let (outcomes, out_of_order) = rt.block_on(async {
        let tasks: Vec<_> = refs
            .into_iter()
            .map(|r| tokio::spawn(async move { ask_loop(&r, asks, size, pipelined).await }))
            .collect();
        let mut all = Vec::new();
        let mut out_of_order = 0;
        for t in tasks {
            let report = t.await.expect("an ask loop does not panic");
            all.extend(report.outcomes);
            out_of_order += report.out_of_order;
        }
        (all, out_of_order)
    });
    let elapsed = start.elapsed();
    let mut times: Vec<Duration> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().ok().copied())
        .collect();
    let failed = outcomes.len() - times.len();
    let p50 = quantile(&mut times, 0.5).unwrap_or_default();
    let p99 = quantile(&mut times, 0.99).unwrap_or_default();
    println!(
        "asks ok={} failed={failed} out_of_order={out_of_order} p50_us={} p99_us={} elapsed_ms={}",
        times.len(),
        p50.as_micros(),
        p99.as_micros(),
        elapsed.as_millis()
    );
    if let Some(Err(e)) = outcomes.iter().find(|o| o.is_err()) {
        println!("first error: {e}");
    }
    std::io::stdout().flush()?;
    if hold {
        until_stdin_closes();
    }
    for env in &clients {
        env.shutdown();
    }
    Ok(())
}

fn probe(conf: RpcConf, uri: &str) -> anyhow::Result<()> {
    let target = RpcEndpointAddress::parse(uri)?;
    let address = target
        .address()
        .context("probe needs rpc://name@host:port")?
        .clone();
    let env = RpcEnv::builder("probe")
        .client_mode(true)
        .conf(conf)
        .build()?;
    println!("probe ready");
    std::io::stdout().flush()?;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        if line.is_err() {
            break;
        }
        let start = Instant::now();
        let result = env.check_endpoint(&address, target.name());
        let ms = start.elapsed().as_millis();
        match result {
            Ok(()) => println!("ok {ms}"),
            Err(e) => println!("err {ms} {e}"),
        }
        std::io::stdout().flush()?;
    }
    env.shutdown();
    Ok(())
}
