//! The cluster across simulated hosts (network namespaces on a private bridge) under the faults
//! real networks have. Each scenario builds its own hosts, runs real processes on them (`rpcenv
//! master` / `worker` / `submit`, and `cluster-peer` for echo servers and askers), injects a fault
//! and checks how it surfaces. Scenarios run one at a time; each is bounded (its waits have
//! deadlines, all under 60 s in total). They need root: without it they print why and skip,
//! except under `CI=true`, where that is a failure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::MutexGuard;
use std::time::{Duration, Instant};

use rpcenv_cluster_tests::netns::{self, Network};
use rpcenv_cluster_tests::process::{wait_until, Proc};
use rpcenv_cluster_tests::{one_at_a_time, rpcenv_bin};

const PEER: &str = env!("CARGO_BIN_EXE_cluster-peer");
const START: Duration = Duration::from_secs(30);

/// The hosts of a scenario, or `None` when the scenario is skipped.
fn hosts(scenario: &str, names: &[&str]) -> Option<(MutexGuard<'static, ()>, Network)> {
    let serial = one_at_a_time();
    if !netns::available_or_skip(scenario) {
        return None;
    }
    let net = Network::new(names).unwrap_or_else(|e| panic!("{scenario}: creating the hosts: {e}"));
    Some((serial, net))
}

/// `key=value` fields of a result line.
fn fields(line: &str) -> HashMap<String, String> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn field(fields: &HashMap<String, String>, key: &str) -> u64 {
    fields
        .get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no numeric {key} in {fields:?}"))
}

/// An echo server on `host`, binding every address and advertising the host's name.
fn echo_server(net: &Network, host: &str) -> (Proc, String) {
    let mut c = net.command(host, PEER);
    c.args(["serve", "--bind-host", "0.0.0.0", "--advertise-host", host]);
    let p = Proc::spawn(format!("echo server on {host}"), c).unwrap();
    let line = p
        .wait_line("its serving line", START, |l| l.starts_with("serving "))
        .unwrap();
    let uri = line.text["serving ".len()..].to_string();
    assert_eq!(
        uri,
        format!("rpc://echo@{host}:{}", uri.rsplit(':').next().unwrap())
    );
    (p, uri)
}

/// `cluster-peer ask ARGS` on `host`.
fn asker(net: &Network, host: &str, label: &str, args: &[&str]) -> Proc {
    let mut c = net.command(host, PEER);
    c.arg("ask").args(args);
    Proc::spawn(label, c).unwrap()
}

/// Waits for an asker's result line and returns its fields.
fn ask_result(p: &Proc, within: Duration) -> HashMap<String, String> {
    let line = p
        .wait_line("its result line", within, |l| l.starts_with("asks "))
        .unwrap();
    fields(&line.text)
}

#[test]
fn s5_one_mib_asks_over_a_10_mbit_link_complete_in_order_without_spurious_timeouts() {
    let Some((_serial, net)) = hosts("scenario 5", &["server", "client"]) else {
        return;
    };
    let (_server, uri) = echo_server(&net, "server");
    net.limit_bandwidth("client", "10mbit").unwrap();
    let asks = 8u64;
    let client = asker(
        &net,
        "client",
        "asker",
        &[
            "--uri",
            &uri,
            "--asks",
            &asks.to_string(),
            "--size",
            "1048576",
            "--pipelined",
            "--conf",
            "rpc.askTimeout=40s",
        ],
    );
    let r = ask_result(&client, Duration::from_secs(55));
    eprintln!("scenario 5: {r:?}");
    assert_eq!(field(&r, "ok"), asks, "{}", client.transcript());
    assert_eq!(field(&r, "failed"), 0, "{}", client.transcript());
    assert_eq!(field(&r, "out_of_order"), 0);
    // 8 MiB each way at 10 Mbit/s needs at least 6.7 s: the limit was in force.
    assert!(field(&r, "elapsed_ms") >= 6_000, "{r:?}");
}

#[test]
fn s7_a_thousand_client_envs_ask_one_server_and_its_descriptors_come_back() {
    let Some((_serial, net)) = hosts("scenario 7", &["server", "clients"]) else {
        return;
    };
    let (server, uri) = echo_server(&net, "server");
    let base_fds = server.fd_count().unwrap();
    let base_rss = server.rss_kib().unwrap();
    let (processes, envs, asks) = (10, 100, 100);
    let mut clients: Vec<Proc> = (0..processes)
        .map(|i| {
            asker(
                &net,
                "clients",
                &format!("asker {i}"),
                &[
                    "--uri",
                    &uri,
                    "--envs",
                    &envs.to_string(),
                    "--asks",
                    &asks.to_string(),
                    "--hold",
                    "--conf",
                    "rpc.askTimeout=40s",
                    "--conf",
                    "rpc.netty.dispatcher.numThreads=1",
                ],
            )
        })
        .collect();
    let started = Instant::now();
    let (mut ok, mut failed, mut p50s, mut p99_max) = (0, 0, Vec::new(), 0);
    for c in &clients {
        let left = Duration::from_secs(50).saturating_sub(started.elapsed());
        let r = ask_result(c, left);
        ok += field(&r, "ok");
        failed += field(&r, "failed");
        p50s.push(field(&r, "p50_us"));
        p99_max = p99_max.max(field(&r, "p99_us"));
    }
    let took = started.elapsed();
    // Every client env is still connected (the askers hold their envs).
    let peak_fds = server.fd_count().unwrap();
    let rss = server.rss_kib().unwrap();
    let hwm = server.hwm_kib().unwrap();
    p50s.sort_unstable();
    eprintln!(
        "scenario 7: {ok} asks ok, {failed} failed in {took:?} from {} envs; p50 {} us (median of the \
         processes' p50), p99 {} us (worst process); server fds {base_fds} -> {peak_fds} with all \
         connected, RSS {base_rss} -> {rss} KiB (peak {hwm} KiB)",
        processes * envs,
        p50s[p50s.len() / 2],
        p99_max
    );
    assert_eq!(failed, 0);
    assert_eq!(ok, (processes * envs * asks) as u64);
    assert!(
        peak_fds >= base_fds + processes * envs,
        "one connection per env: {peak_fds}"
    );

    for c in &mut clients {
        c.close_stdin();
    }
    for c in &mut clients {
        assert!(
            c.wait_exit(Duration::from_secs(20)).unwrap().success(),
            "{}",
            c.transcript()
        );
    }
    let left = Instant::now();
    let fds = wait_until(
        "the server's descriptors back within 10 of the baseline",
        Duration::from_secs(5),
        Duration::from_millis(100),
        || server.fd_count().ok().filter(|n| *n <= base_fds + 10),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {} now, baseline {base_fds}",
            server.fd_count().unwrap_or(0)
        )
    });
    eprintln!(
        "scenario 7: server fds {fds} (baseline {base_fds}) {:?} after the clients left",
        left.elapsed()
    );
}

#[allow(dead_code)]
fn rpcenv() -> PathBuf {
    rpcenv_bin().unwrap()
}

#[allow(dead_code)]
fn command(net: &Network, host: &str) -> Command {
    net.command(host, rpcenv())
}
