#![cfg(feature = "metrics")]
//! The metrics an env records through the `metrics` facade, read back with metrics-util's
//! debugging recorder after a scripted sequence: asks (answered, failed, panicked, timed out),
//! a send refused with QueueFull, a handshake that fails authentication, and outboxes closed by a
//! failed connect and by a shutdown. One test per binary: the recorder is process-wide.

mod common;

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::mpsc::{channel, Receiver};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::WAIT;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use rpcenv::metrics::*;
use rpcenv::{
    EndpointCtx, HandlerResult, RpcAddress, RpcCallContext, RpcConf, RpcEndpoint, RpcEndpointRef,
    RpcEnv, RpcError, RpcTimeout,
};
use rpcenv_transport::metrics::{AUTH_FAILURES, CONNECTIONS_IN, CONNECTIONS_OUT, FRAMES_IN};

/// Answers "ok", fails "fail", panics on "panic", and holds "hold" until released.
struct Calc(Mutex<Receiver<()>>);

impl RpcEndpoint for Calc {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        m: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        match m.as_str() {
            "fail" => Err("asked to fail".into()),
            "panic" => panic!("asked to panic"),
            "hold" => {
                let _ = self.0.lock().unwrap().recv_timeout(WAIT);
                ctx.reply("held".to_string());
                Ok(())
            }
            _ => {
                ctx.reply(m);
                Ok(())
            }
        }
    }
}

/// AES authentication (its own security settings, not the suite's: the auth failure below is a
/// handshake the AES protocol fails).
fn auth_conf() -> RpcConf {
    let mut c = RpcConf::new();
    c.set("authenticate", "true").unwrap();
    c.set("authenticate.secret", "good").unwrap();
    c
}

/// One series: kind, name and labels.
type Series = (MetricKind, String, Vec<(String, String)>);

/// The totals of what the recorder saw. The debugging recorder's snapshots drain it (counters
/// and gauges swap to 0, histograms empty), so every reading is added to these: counters and
/// up/down gauges sum, histograms count their samples.
struct Totals {
    snap: Snapshotter,
    seen: Mutex<HashMap<Series, f64>>,
}

impl Totals {
    fn value(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut seen = self.seen.lock().unwrap();
        for (k, _, _, v) in self.snap.snapshot().into_vec() {
            let labels = k
                .key()
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            let add = match v {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            };
            *seen
                .entry((k.kind(), k.key().name().to_string(), labels))
                .or_default() += add;
        }
        seen.iter()
            .filter(|((k, n, ls), _)| {
                *k == kind
                    && n == name
                    && labels
                        .iter()
                        .all(|(lk, lv)| ls.iter().any(|(k, v)| k == lk && v == lv))
            })
            .map(|(_, v)| *v)
            .sum()
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(MetricKind::Counter, name, labels)
    }

    /// Waits (bounded) until the counter reaches `want`.
    fn wait_counter(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let deadline = Instant::now() + WAIT;
        while self.counter(name, labels) < want {
            assert!(
                Instant::now() < deadline,
                "{name}{labels:?} never reached {want}: {}",
                self.counter(name, labels)
            );
            std::thread::yield_now();
        }
        assert_eq!(self.counter(name, labels), want, "{name}{labels:?}");
    }
}

#[test]
fn a_scripted_sequence_moves_each_metric() {
    let recorder = DebuggingRecorder::new();
    let snap = Totals {
        snap: recorder.snapshotter(),
        seen: Mutex::new(HashMap::new()),
    };
    recorder.install().unwrap();

    let server = RpcEnv::builder("metrics-server")
        .bind_host("127.0.0.1")
        .conf(auth_conf())
        .build()
        .unwrap();
    let (release, held) = channel();
    server
        .setup_endpoint("calc", Calc(Mutex::new(held)))
        .unwrap();
    let client = RpcEnv::builder("metrics-client")
        .client_mode(true)
        .conf(auth_conf())
        .build()
        .unwrap();
    let calc: RpcEndpointRef<String> = client
        .setup_endpoint_ref(server.address().unwrap(), "calc")
        .unwrap();
    let peer = server.address().unwrap().to_string();
    let ep = [("endpoint", "calc")];

    // Asks: three answered, one failed, one panicked, one timed out.
    for _ in 0..3 {
        assert_eq!(calc.ask_sync::<String>("ok".into()).unwrap(), "ok");
    }
    assert!(calc.ask_sync::<String>("fail".into()).is_err());
    assert!(calc.ask_sync::<String>("panic".into()).is_err());
    let short = RpcTimeout::new(Duration::from_millis(50), "test.short");
    let timed_out = calc.ask_with_timeout::<String>("hold".into(), short).wait();
    assert!(
        matches!(timed_out, Err(RpcError::Timeout { .. })),
        "{timed_out:?}"
    );
    release.send(()).unwrap();

    snap.wait_counter(ASKS_ANSWERED, &ep, 4.0); // three "ok" and the held one
    assert_eq!(snap.counter(RECEIVED, &ep), 7.0); // six asks and the client's on_connected
    assert_eq!(snap.counter(ASKS_FAILED, &ep), 2.0);
    assert_eq!(snap.counter(PANICS, &ep), 1.0);
    assert_eq!(snap.counter(ASK_TIMEOUTS, &[]), 1.0);
    assert!(snap.value(MetricKind::Histogram, PROCESSING_TIME, &ep) >= 6.0);
    assert!(snap.value(MetricKind::Histogram, QUEUE_TIME, &ep) >= 1.0);
    let stats = server.stats();
    let calc_stats = stats.endpoints.iter().find(|e| e.name == "calc").unwrap();
    assert_eq!((calc_stats.depth, calc_stats.processed), (0, 8)); // + on_start
    assert_eq!(snap.value(MetricKind::Gauge, PENDING_ASKS, &[]), 0.0);
    assert_eq!(snap.counter(CONNECTS, &[("peer", &peer)]), 1.0);
    assert_eq!(snap.counter(OUTBOX_SENT, &[("peer", &peer)]), 7.0); // + the verifier's ask
    assert_eq!(snap.counter(CONNECTIONS_OUT, &[]), 1.0);
    assert_eq!(snap.counter(CONNECTIONS_IN, &[]), 1.0);
    assert!(snap.counter(FRAMES_IN, &[("type", "RpcRequest")]) >= 7.0);
    assert!(snap.counter(FRAMES_IN, &[("type", "RpcResponse")]) >= 6.0);

    // A peer that accepts and never answers the handshake: while the connect waits, the outbox
    // takes one message and refuses the next (QueueFull); when the peer hangs up, the handshake
    // fails authentication, the connect fails and the outbox closes.
    let mute = TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_addr = RpcAddress::new("127.0.0.1", mute.local_addr().unwrap().port());
    let mut tight = auth_conf();
    tight.set("rpc.outbox.maxBytes", "1").unwrap();
    let sender = RpcEnv::builder("metrics-sender")
        .client_mode(true)
        .conf(tight)
        .build()
        .unwrap();
    let mute_peer = mute_addr.to_string();
    let first = {
        let (sender, mute_addr) = (sender.clone(), mute_addr.clone());
        std::thread::spawn(move || sender.remote_stats(&mute_addr))
    };
    snap.wait_counter(OUTBOX_SENT, &[("peer", &mute_peer)], 1.0);
    let refused = sender.remote_stats(&mute_addr);
    assert!(
        matches!(refused, Err(RpcError::QueueFull { .. })),
        "{refused:?}"
    );
    assert_eq!(snap.counter(QUEUE_FULL, &[("peer", &mute_peer)]), 1.0);
    let (socket, _) = mute.accept().unwrap();
    drop(socket);
    snap.wait_counter(
        CLOSES,
        &[("peer", &mute_peer), ("cause", "connect_failed")],
        1.0,
    );
    assert_eq!(snap.counter(CONNECT_FAILURES, &[("peer", &mute_peer)]), 1.0);
    assert_eq!(snap.counter(AUTH_FAILURES, &[]), 1.0);
    assert!(first.join().unwrap().is_err());

    // Closing: the client's outbox to the server closes with the client's shutdown.
    client.shutdown();
    assert_eq!(
        snap.counter(CLOSES, &[("peer", &peer), ("cause", "shutdown")]),
        1.0
    );
    sender.shutdown();
    server.shutdown();
}
