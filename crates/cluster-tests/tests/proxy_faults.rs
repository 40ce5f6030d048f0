//! Scenario 6: faults between an asker and an endpoint through the fault-injecting proxy, on
//! 127.0.0.1 (no namespaces, no root): 50 ms of delay each way, a blackhole, a reset in the middle
//! of a frame.

use std::time::{Duration, Instant};

use rpcenv::{RpcConf, RpcEndpointRef, RpcEnv, RpcError, RpcTimeout};
use rpcenv_cluster_tests::probe::{Echo, Probe, ProbeReply, ECHO};
use rpcenv_cluster_tests::proxy::{FaultProxy, Faults};
use rpcenv_cluster_tests::stats::quantile;

/// The asker's `rpc.askTimeout`.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// The asker's `rpc.io.connectionTimeout`: a connection quiet this long with requests
/// outstanding is declared dead.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(3);

struct Setup {
    _serial: std::sync::MutexGuard<'static, ()>,
    _rt: tokio::runtime::Runtime,
    server: RpcEnv,
    client: RpcEnv,
    proxy: FaultProxy,
    echo: RpcEndpointRef<Probe>,
}

fn setup() -> Setup {
    let serial = rpcenv_cluster_tests::one_at_a_time();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let server = RpcEnv::builder("server")
        .bind_host("127.0.0.1")
        .port(0)
        .build()
        .unwrap();
    server.setup_endpoint(ECHO, Echo::default()).unwrap();
    let target = server.address().unwrap();
    let target = format!("{}:{}", target.host(), target.port())
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(target, rt.handle()).unwrap();
    let conf = RpcConf::new()
        .with("rpc.askTimeout", "2s")
        .unwrap()
        .with("rpc.io.connectionTimeout", "3s")
        .unwrap();
    let client = RpcEnv::builder("client")
        .client_mode(true)
        .conf(conf)
        .build()
        .unwrap();
    let echo = client
        .setup_endpoint_ref_by_uri(&format!("rpc://{ECHO}@{}", proxy.address()))
        .unwrap();
    Setup {
        _serial: serial,
        _rt: rt,
        server,
        client,
        proxy,
        echo,
    }
}

fn probe(seq: u64, bytes: usize) -> Probe {
    Probe {
        seq,
        payload: vec![1; bytes],
        reply_bytes: bytes as u32,
    }
}

fn ask(
    echo: &RpcEndpointRef<Probe>,
    seq: u64,
    bytes: usize,
) -> (Result<ProbeReply, RpcError>, Duration) {
    let start = Instant::now();
    let r = echo.ask_sync::<ProbeReply>(probe(seq, bytes));
    (r, start.elapsed())
}

impl Drop for Setup {
    fn drop(&mut self) {
        self.client.shutdown();
        self.server.shutdown();
    }
}

#[test]
fn delay_each_way_adds_a_round_trip_of_latency() {
    let s = setup();
    s.proxy.set(Faults {
        delay_up: Duration::from_millis(50),
        delay_down: Duration::from_millis(50),
        ..Faults::default()
    });
    let mut times = Vec::new();
    for seq in 0..20 {
        let (r, t) = ask(&s.echo, seq, 64);
        let reply = r.unwrap_or_else(|e| panic!("ask {seq} through a 50 ms + 50 ms delay: {e}"));
        assert_eq!(reply.seq, seq);
        times.push(t);
    }
    let p50 = quantile(&mut times, 0.5).unwrap();
    let p99 = quantile(&mut times, 0.99).unwrap();
    eprintln!("scenario 6 delay: p50 {p50:?}, p99 {p99:?} over 20 asks (50 ms each way)");
    // The delay is a floor every round trip pays; the ceiling is generous for a loaded machine.
    assert!(p50 >= Duration::from_millis(100), "p50 {p50:?}");
    assert!(p50 < Duration::from_millis(400), "p50 {p50:?}");
}

#[test]
fn a_blackhole_fails_asks_at_their_timeout_then_the_connection_and_recovers_when_lifted() {
    let s = setup();
    let (r, _) = ask(&s.echo, 0, 64);
    r.expect("an ask before the fault");
    let connections = s.proxy.accepted();
    s.proxy.set(Faults {
        blackhole: true,
        ..Faults::default()
    });

    // An ask fails at its own timeout, naming the setting.
    let (r, took) = ask(&s.echo, 1, 64);
    let e = r.expect_err("an ask into a blackhole");
    assert!(matches!(e, RpcError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("rpc.askTimeout"), "{e}");
    assert!(took >= ASK_TIMEOUT && took < ASK_TIMEOUT * 3, "{took:?}");

    // An ask with a longer timeout is failed earlier, when the connection is declared dead: the
    // outbox to the peer fails what it holds.
    let start = Instant::now();
    let e = s
        .echo
        .ask_sync_with_timeout::<ProbeReply>(
            probe(2, 64),
            RpcTimeout::new(Duration::from_secs(30), "app.test.longAsk"),
        )
        .expect_err("an ask on a dead connection");
    let took = start.elapsed();
    eprintln!("scenario 6 blackhole: ask timed out after {ASK_TIMEOUT:?}; the connection was failed after {took:?}: {e}");
    assert!(
        !matches!(e, RpcError::Timeout { .. }),
        "failed by the connection, not its own timeout: {e}"
    );
    assert!(e.to_string().contains("connectionTimeout"), "{e}");
    assert!(took < CONNECTION_TIMEOUT * 3, "{took:?}");

    // Lifted: the next ask opens a new connection and succeeds.
    s.proxy.set(Faults::default());
    let (r, _) = ask(&s.echo, 3, 64);
    assert_eq!(r.expect("an ask after the blackhole lifts").seq, 3);
    assert!(
        s.proxy.accepted() > connections,
        "a new connection was made"
    );
}

#[test]
fn a_reset_in_the_middle_of_a_frame_reaches_the_asker_and_the_next_ask_reconnects() {
    let s = setup();
    let (r, _) = ask(&s.echo, 0, 64);
    r.expect("an ask before the fault");
    let connections = s.proxy.accepted();
    // The next ask's frame is 64 KiB; the connection is reset after its first 1,000 bytes.
    s.proxy.set(Faults {
        reset_after: Some(1000),
        ..Faults::default()
    });
    let (r, took) = ask(&s.echo, 1, 64 * 1024);
    let e = r.expect_err("an ask whose frame was cut");
    eprintln!("scenario 6 reset: the asker heard after {took:?}: {e}");
    assert!(
        !matches!(e, RpcError::Timeout { .. }),
        "the reset itself reaches the asker: {e}"
    );
    assert!(took < ASK_TIMEOUT, "{took:?}");
    assert_eq!(s.proxy.resets(), 1);

    s.proxy.set(Faults::default());
    let (r, _) = ask(&s.echo, 2, 64 * 1024);
    assert_eq!(r.expect("the ask after the reset").seq, 2);
    assert!(s.proxy.accepted() > connections, "the asker reconnected");
}

#[test]
fn a_throttled_link_keeps_order_and_delivers_everything() {
    let s = setup();
    // 2 MiB/s each way: 8 asks of 256 KiB each take about a second each way in all.
    s.proxy.set(Faults {
        throttle: Some(2 * 1024 * 1024),
        ..Faults::default()
    });
    let asks: Vec<_> = (0..8u64)
        .map(|seq| {
            s.echo.ask_with_timeout::<ProbeReply>(
                probe(seq, 256 * 1024),
                RpcTimeout::new(Duration::from_secs(30), "app.test.throttledAsk"),
            )
        })
        .collect();
    let mut arrivals = Vec::new();
    for (seq, a) in asks.into_iter().enumerate() {
        let r = a.wait().unwrap_or_else(|e| panic!("ask {seq}: {e}"));
        assert_eq!(r.seq, seq as u64);
        assert_eq!(r.received, 256 * 1024);
        arrivals.push(r.arrival);
    }
    let mut sorted = arrivals.clone();
    sorted.sort_unstable();
    assert_eq!(arrivals, sorted, "asks arrive in the order they were made");
}
