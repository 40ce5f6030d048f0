//! Runs checks against an `echo_server` (or the interop harness's JVM echo server):
//! `echo_client --port P [--host H] [security flags]` with the same security flags as
//! `echo_server` plus `--tls` (TLS on, trusting any server certificate unless `--tls-ca` is
//! given; `--tls-cert/--tls-key` present a client certificate).
//!
//! Checks: RPC echoes of 0 B, 1 B, 64 KiB and 4 MiB, 500 concurrent RPCs, the stream
//! `bytes/100000`. Prints one line per check (`ok <check>` or `FAILED <check>: <why>`), then
//! `N passed, M failed`; exits 1 if a check failed or the connection could not be made or
//! authenticated.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rpcenv_transport::{NoOpRpcHandler, TransportClient, TransportClientFactory, TransportConf};

#[path = "support/security.rs"]
mod security;

const DEADLINE: Duration = Duration::from_secs(60);

fn pattern(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<_>>())
}

fn usage() -> ! {
    eprintln!(
        "usage: echo_client --port PORT [--host HOST] {}",
        security::USAGE
    );
    std::process::exit(2);
}

#[derive(Default)]
struct Tally {
    passed: usize,
    failed: usize,
}

impl Tally {
    fn record(&mut self, what: &str, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.passed += 1;
                println!("ok {what}");
            }
            Err(why) => {
                self.failed += 1;
                println!("FAILED {what}: {why}");
            }
        }
    }

    fn finish(&self) -> ! {
        println!("{} passed, {} failed", self.passed, self.failed);
        std::process::exit(if self.failed == 0 { 0 } else { 1 });
    }
}

async fn within<T, E: std::fmt::Display>(
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(DEADLINE, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {} s", DEADLINE.as_secs())),
    }
}

async fn echo(c: &TransportClient, n: usize) -> Result<(), String> {
    let body = pattern(n);
    let got = within(c.send_rpc(body.clone())).await?;
    if got == body {
        Ok(())
    } else {
        Err(format!("got {} bytes back, not the {n} sent", got.len()))
    }
}

async fn concurrent(c: &TransportClient, n: usize) -> Result<(), String> {
    let futs: Vec<_> = (0..n)
        .map(|i| c.send_rpc(Bytes::from(format!("req-{i}"))))
        .collect();
    for (i, f) in futs.into_iter().enumerate() {
        let got = within(f).await?;
        if got != format!("req-{i}").as_bytes() {
            return Err(format!("request {i} got a wrong answer"));
        }
    }
    Ok(())
}

async fn stream(c: &TransportClient, n: usize) -> Result<(), String> {
    let s = within(c.stream(format!("bytes/{n}"))).await?;
    let body = within(s.collect(64 << 20)).await?;
    if body == pattern(n) {
        Ok(())
    } else {
        Err(format!(
            "got {} bytes, expected {n} of the pattern",
            body.len()
        ))
    }
}

#[tokio::main]
async fn main() {
    let (mut host, mut port) = ("127.0.0.1".to_string(), None);
    let mut sec = security::SecurityArgs::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--host" => host = args.next().unwrap_or_else(|| usage()),
            "--port" => port = args.next().and_then(|p| p.parse::<u16>().ok()),
            flag => match sec.take(flag, &mut args) {
                Ok(true) => {}
                Ok(false) => usage(),
                Err(e) => {
                    eprintln!("echo_client: {e}");
                    usage()
                }
            },
        }
    }
    let port = port.unwrap_or_else(|| usage());
    let mut tally = Tally::default();
    let bootstraps = match sec.client_bootstraps() {
        Ok(b) => b,
        Err(e) => {
            tally.record("security settings", Err(e.to_string()));
            tally.finish();
        }
    };
    eprintln!("echo_client: {}", sec.describe());
    let factory = TransportClientFactory::with_bootstraps(
        TransportConf::default(),
        Arc::new(NoOpRpcHandler),
        bootstraps,
    );
    let c = match within(factory.create_client(&host, port)).await {
        Ok(c) => c,
        Err(e) => {
            tally.record("connect and authenticate", Err(e));
            tally.finish();
        }
    };
    for (n, what) in [
        (0, "rpc echo 0 B"),
        (1, "rpc echo 1 B"),
        (64 << 10, "rpc echo 64 KiB"),
        (4 << 20, "rpc echo 4 MiB"),
    ] {
        tally.record(what, echo(&c, n).await);
    }
    tally.record("500 concurrent rpcs", concurrent(&c, 500).await);
    tally.record("stream bytes/100000", stream(&c, 100_000).await);
    factory.close();
    tally.finish();
}
