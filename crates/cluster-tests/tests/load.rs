//! Load across simulated hosts: large asks over a slow link (scenario 5) and a thousand client
//! envs asking one server (scenario 7). Needs root (see `common::hosts`).

mod common;

use std::time::{Duration, Instant};

use common::{ask_result, asker, echo_server, field, hosts};
use rpcenv_cluster_tests::process::{wait_until, Proc};

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
