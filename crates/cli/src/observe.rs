//! Looking into running envs: `rpcenv status URI` prints an env's [`EnvStats`] as a table,
//! `rpcenv top URI` redraws it every second with rates, and `--metrics-addr` serves the
//! process's metrics in the Prometheus text format.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use rpcenv::{EnvStats, RpcAddress, RpcConf, RpcEndpointAddress, RpcEnv};

/// Arguments of `rpcenv status`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The env, `rpc://[name@]host:port` (the endpoint name, if any, is ignored).
    pub uri: String,
}

/// Arguments of `rpcenv top`.
#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// The env, `rpc://[name@]host:port` (the endpoint name, if any, is ignored).
    pub uri: String,
    /// Time between two frames.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    rpcenv::conf::parse_duration(s, rpcenv::conf::TimeUnit::Seconds)
}

/// The env address of `rpc://[name@]host:port`.
pub fn env_address(uri: &str) -> anyhow::Result<RpcAddress> {
    if uri.contains('@') {
        let endpoint = RpcEndpointAddress::parse(uri)?;
        endpoint
            .address()
            .cloned()
            .with_context(|| format!("{uri} names no host:port"))
    } else {
        Ok(RpcAddress::from_url(uri)?)
    }
}

fn client(conf: &RpcConf, name: &str) -> anyhow::Result<RpcEnv> {
    Ok(RpcEnv::builder(name)
        .client_mode(true)
        .conf(conf.clone())
        .build()?)
}

/// `rpcenv status`.
pub fn run_status(args: &StatusArgs, conf: &RpcConf) -> anyhow::Result<ExitCode> {
    let address = env_address(&args.uri)?;
    let env = client(conf, "status")?;
    let stats = env.remote_stats(&address);
    env.shutdown();
    let stats = stats.with_context(|| format!("cannot read the stats of {}", args.uri))?;
    print!("{}", render(&stats, None));
    std::io::stdout().flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The previous snapshot and when it was taken, for rates.
struct Previous<'a> {
    stats: &'a EnvStats,
    elapsed: Duration,
}

/// The snapshot as a table; with `previous`, each endpoint also gets its rate of messages per
/// second and the share of the time its handler was busy.
fn render(stats: &EnvStats, previous: Option<Previous<'_>>) -> String {
    let mut out = String::new();
    let address = stats.address.as_deref().unwrap_or("(client mode)");
    let _ = writeln!(
        out,
        "env {} at {address}: {} connections in, {} out",
        stats.name, stats.connections_in, stats.connections_out
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:>8} {:>12} {:>10} {:>7} {:>12} {:>14}",
        "ENDPOINT", "DEPTH", "PROCESSED", "MSG/S", "BUSY%", "BUSY", "MAX QUEUE"
    );
    for e in &stats.endpoints {
        let before = previous.as_ref().and_then(|p| {
            p.stats
                .endpoints
                .iter()
                .find(|b| b.name == e.name)
                .map(|b| (b, p.elapsed))
        });
        let (rate, busy) = match before {
            Some((b, elapsed)) if !elapsed.is_zero() => {
                let secs = elapsed.as_secs_f64();
                let rate = e.processed.saturating_sub(b.processed) as f64 / secs;
                let busy = e.busy.saturating_sub(b.busy).as_secs_f64() / secs * 100.0;
                (format!("{rate:.1}"), format!("{busy:.1}"))
            }
            _ => ("-".to_string(), "-".to_string()),
        };
        let _ = writeln!(
            out,
            "{:<24} {:>8} {:>12} {:>10} {:>7} {:>12} {:>14}",
            e.name,
            e.depth,
            e.processed,
            rate,
            busy,
            format!("{:.3}s", e.busy.as_secs_f64()),
            format!("{:.3}ms", e.max_queue_time.as_secs_f64() * 1000.0),
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<24} {:>14} {:>10}",
        "PEER", "OUTBOX BYTES", "CONNECTED"
    );
    if stats.peers.is_empty() {
        let _ = writeln!(out, "(none)");
    }
    for p in &stats.peers {
        let _ = writeln!(
            out,
            "{:<24} {:>14} {:>10}",
            p.address,
            p.outbox_bytes,
            if p.connected { "yes" } else { "no" }
        );
    }
    out
}

/// Restores the terminal when `top` ends, however it ends.
struct RawMode(bool);

impl Drop for RawMode {
    fn drop(&mut self) {
        if self.0 {
            let _ = crossterm::terminal::disable_raw_mode();
        }
    }
}

/// `rpcenv top`.
pub fn run_top(args: &TopArgs, conf: &RpcConf) -> anyhow::Result<ExitCode> {
    use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyModifiers};

    let address = env_address(&args.uri)?;
    let env = client(conf, "top")?;
    // Keys arrive one at a time (no Enter) only in raw mode, which needs a terminal.
    let interactive = std::io::stdin().is_terminal();
    let _raw = RawMode(interactive && crossterm::terminal::enable_raw_mode().is_ok());
    let mut previous: Option<(EnvStats, Instant)> = None;
    let result = loop {
        let taken = Instant::now();
        let stats = match env.remote_stats(&address) {
            Ok(s) => s,
            Err(e) => {
                break Err(e).with_context(|| format!("cannot read the stats of {}", args.uri))
            }
        };
        let frame = render(
            &stats,
            previous.as_ref().map(|(s, t)| Previous {
                stats: s,
                elapsed: taken.duration_since(*t),
            }),
        );
        let mut stdout = std::io::stdout().lock();
        // Home, clear; in raw mode a line break must return the carriage itself.
        write!(stdout, "\x1b[H\x1b[2J")?;
        write!(stdout, "{}", frame.replace('\n', "\r\n"))?;
        write!(stdout, "\r\npress q to quit\r\n")?;
        stdout.flush()?;
        drop(stdout);
        previous = Some((stats, taken));
        let next = taken + args.interval;
        let mut quit = false;
        while !quit {
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() || !event::poll(left)? {
                break;
            }
            quit = matches!(
                event::read()?,
                Event::Key(KeyEvent {
                    code: KeyCode::Char('q') | KeyCode::Esc,
                    ..
                }) | Event::Key(KeyEvent {
                    code: KeyCode::Char('c'),
                    modifiers: KeyModifiers::CONTROL,
                    ..
                })
            );
        }
        if quit {
            break Ok(ExitCode::SUCCESS);
        }
    };
    env.shutdown();
    result
}

/// Serves this process's metrics at `http://ADDR/metrics` in the Prometheus text format.
pub fn serve_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    rpcenv::metrics::describe();
    tracing::info!(%addr, "serving metrics at http://{addr}/metrics");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rpcenv::{EndpointStats, PeerStats};

    fn sample(processed: u64, busy_ms: u64) -> EnvStats {
        let mut s = EnvStats::default();
        s.name = "master".into();
        s.address = Some("127.0.0.1:7077".into());
        s.connections_in = 2;
        s.endpoints = vec![EndpointStats {
            name: "master".into(),
            depth: 3,
            processed,
            busy: Duration::from_millis(busy_ms),
            max_queue_time: Duration::from_micros(1500),
        }];
        s.peers = vec![PeerStats {
            address: "127.0.0.1:40000".into(),
            outbox_bytes: 42,
            connected: true,
        }];
        s
    }

    #[test]
    fn the_table_names_every_endpoint_and_peer() {
        let table = render(&sample(10, 250), None);
        assert!(
            table.starts_with("env master at 127.0.0.1:7077: 2 connections in, 0 out\n"),
            "{table}"
        );
        let row = table.lines().find(|l| l.starts_with("master ")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells, ["master", "3", "10", "-", "-", "0.250s", "1.500ms"]);
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().eq(["127.0.0.1:40000", "42", "yes"])),
            "{table}"
        );
    }

    #[test]
    fn rates_come_from_the_previous_snapshot() {
        let before = sample(10, 250);
        let table = render(
            &sample(30, 750),
            Some(Previous {
                stats: &before,
                elapsed: Duration::from_secs(2),
            }),
        );
        let row = table.lines().find(|l| l.starts_with("master ")).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[3..5], ["10.0", "25.0"]);
    }

    #[test]
    fn uris_with_and_without_a_name_give_the_env_address() {
        assert_eq!(
            env_address("rpc://master@127.0.0.1:7077")
                .unwrap()
                .to_string(),
            "127.0.0.1:7077"
        );
        assert_eq!(
            env_address("rpc://127.0.0.1:7077").unwrap().to_string(),
            "127.0.0.1:7077"
        );
        assert!(env_address("127.0.0.1:7077").is_err());
    }
}
