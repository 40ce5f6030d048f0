//! Asks: the reply of a local ask (a moved value) and of a remote one (decoded by the asker),
//! timeouts that name their setting, aborts, and retries.
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels, conditions or futures with
//! deadlines.

use std::time::Duration;

use rpcenv::{
    EndpointCtx, HandlerResult, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcError, RpcTimeout,
};
use serde::{Deserialize, Serialize};

mod common;
use common::{client, env_with, new_env, server, Echo, FailureSender, Hoarder, SlowEcho};

/// Spark: RpcEnvSuite "ask a message locally".
#[test]
fn ask_a_message_locally() {
    let env = new_env();
    let r = env.setup_endpoint("ask-locally", Echo).unwrap();
    assert_eq!(r.ask_sync::<String>("hello".into()).unwrap(), "hello");
    env.shutdown();
}

/// Spark: RpcEnvSuite "ask a message abort".
#[test]
fn ask_a_message_abort() {
    let env = new_env();
    let r = env
        .setup_endpoint("ask-abort", Hoarder(Vec::new()))
        .unwrap();
    let ask = r.ask_with_timeout::<String>(
        "hello".into(),
        RpcTimeout::new(Duration::from_secs(10), "rpc.askTimeout"),
    );
    let abort = ask.abort_handle();
    let aborter = std::thread::spawn(move || abort.abort("TestAbort"));
    let e = ask.wait().unwrap_err();
    aborter.join().unwrap();
    match &e {
        RpcError::Aborted { reason, .. } => assert!(reason.to_string().contains("TestAbort")),
        other => panic!("expected Aborted, got {other:?}"),
    }
    env.shutdown();
}

#[derive(Serialize, Deserialize)]
enum Probe {
    Text(String),
    NeverReply,
}

impl rpcenv::RpcMessage for Probe {}

struct EchoOrIgnore(Vec<RpcCallContext>);

impl RpcEndpoint for EchoOrIgnore {
    type Message = Probe;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<Probe>,
        m: Probe,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        match m {
            Probe::Text(s) => ctx.reply(s),
            Probe::NeverReply => self.0.push(ctx),
        }
        Ok(())
    }
}

/// Spark: RpcEnvSuite "ask a message timeout on Future using RpcTimeout".
#[test]
fn ask_a_message_timeout_on_future_using_rpc_timeout() {
    let env = new_env();
    let r = env
        .setup_endpoint("ask-future", EchoOrIgnore(Vec::new()))
        .unwrap();
    let long = RpcTimeout::new(Duration::from_secs(1), "spark.rpc.long.timeout");
    let short = RpcTimeout::new(Duration::from_millis(10), "spark.rpc.short.timeout");

    // Ask with the long timeout: replied.
    let reply = long
        .await_result(r.ask_with_timeout::<String>(Probe::Text("hello".into()), long.clone()))
        .unwrap();
    assert_eq!(reply, "hello");

    // Never replied: the short timeout fails it and names its setting.
    let e = short
        .await_result(r.ask_with_timeout::<String>(Probe::NeverReply, short.clone()))
        .unwrap_err();
    assert!(e.is_timeout());
    assert!(e.to_string().contains("spark.rpc.short.timeout"), "{e}");

    // Waited with a plain wait longer than the ask's own timeout: the ask failed by itself
    // with its timeout, and the setting is named exactly once.
    let ask = r.ask_with_timeout::<String>(Probe::NeverReply, short.clone());
    let e = RpcTimeout::new(Duration::from_secs(2), "plain.wait")
        .await_result(ask)
        .unwrap_err();
    assert!(e.is_timeout());
    assert_eq!(
        e.to_string().matches("spark.rpc.short.timeout").count(),
        1,
        "{e}"
    );
    assert!(!e.to_string().contains("plain.wait"), "{e}");
    env.shutdown();
}

#[test]
fn ask_with_retry_retries_failed_attempts() {
    struct FlakyTwice(usize);
    impl RpcEndpoint for FlakyTwice {
        type Message = String;
        fn receive_and_reply(
            &mut self,
            _: &EndpointCtx<String>,
            m: String,
            ctx: RpcCallContext,
        ) -> HandlerResult {
            self.0 += 1;
            if self.0 <= 2 {
                ctx.send_failure(format!("attempt {} failed", self.0));
            } else {
                ctx.reply(m);
            }
            Ok(())
        }
    }
    let env = env_with(&[("rpc.retry.wait", "10ms")]);
    let r = env.setup_endpoint("flaky", FlakyTwice(0)).unwrap();
    assert_eq!(r.ask_with_retry::<String>("x".into()).unwrap(), "x");
    let r2 = env.setup_endpoint("always-failing", FailureSender).unwrap();
    match r2.ask_with_retry::<String>("x".into()).unwrap_err() {
        RpcError::RetriesExhausted { attempts, last, .. } => {
            assert_eq!(attempts, 3);
            assert_eq!(last.failure().unwrap().message(), "Oops");
        }
        other => panic!("expected RetriesExhausted, got {other:?}"),
    }
    env.shutdown();
}

/// Spark: RpcEnvSuite "ask a message remotely".
#[test]
fn ask_a_message_remotely() {
    let env = server("server");
    env.setup_endpoint("ask-remotely", Echo).unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref_by_uri(&format!("rpc://ask-remotely@{}", env.address().unwrap()))
        .unwrap();
    assert_eq!(r.ask_sync::<String>("hello".into()).unwrap(), "hello");
    another.shutdown();
    env.shutdown();
}

/// Spark: RpcEnvSuite "ask a message timeout".
#[test]
fn ask_a_message_timeout() {
    let env = server("server");
    env.setup_endpoint("ask-timeout", SlowEcho(Duration::from_millis(100)))
        .unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "ask-timeout")
        .unwrap();
    let short = RpcTimeout::new(Duration::from_millis(1), "spark.rpc.short.timeout");
    let e = r
        .ask_sync_with_timeout::<String>("hello".into(), short)
        .unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("spark.rpc.short.timeout"), "{text}");
    assert!(text.contains("ask-timeout"), "{text}");
    // The late reply is dropped; the connection keeps working.
    assert_eq!(r.ask_sync::<String>("again".into()).unwrap(), "again");
    another.shutdown();
    env.shutdown();
}

/// Spark: RpcEnvSuite "ask a message abort" (between two envs).
#[test]
fn ask_a_message_abort_remotely() {
    let env = server("server");
    env.setup_endpoint("ask-abort", Hoarder(Vec::new()))
        .unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "ask-abort")
        .unwrap();
    let ask = r.ask_with_timeout::<String>(
        "hello".into(),
        RpcTimeout::new(Duration::from_secs(10), "rpc.askTimeout"),
    );
    let abort = ask.abort_handle();
    let aborter = std::thread::spawn(move || abort.abort("TestAbort"));
    let e = ask.wait().unwrap_err();
    aborter.join().unwrap();
    match e {
        RpcError::Aborted { reason, .. } => assert!(reason.to_string().contains("TestAbort")),
        other => panic!("expected Aborted, got {other:?}"),
    }
    another.shutdown();
    env.shutdown();
}

#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Blobs {
    note: String,
    blobs: Vec<rpcenv::codec::Blob>,
    n: u32,
}

impl rpcenv::RpcMessage for Blobs {}

/// Answers with the blobs it got in reverse order, one more of its own, and their sum.
struct Reverse;

impl RpcEndpoint for Reverse {
    type Message = Blobs;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<Blobs>,
        m: Blobs,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        let mut blobs = m.blobs;
        blobs.reverse();
        blobs.push(vec![0xa5; 300_000].into());
        ctx.reply(Blobs {
            note: format!("{}!", m.note),
            n: blobs
                .iter()
                .map(|b| b.iter().map(|&x| u32::from(x)).sum::<u32>())
                .sum(),
            blobs,
        });
        Ok(())
    }
}

/// Large blobs are written from where they lie, in asks and in replies (the envelope is encoded
/// around them): what arrives is byte-exact, blob by blob, whatever side of `Blob::SHARE_MIN`
/// each is on.
#[test]
fn messages_with_large_blobs_arrive_byte_exact_both_ways() {
    use rpcenv::codec::Blob;
    let env = server("server");
    env.setup_endpoint("reverse", Reverse).unwrap();
    let another = client("client");
    let r: RpcEndpointRef<Blobs> = another
        .setup_endpoint_ref_by_uri(&format!("rpc://reverse@{}", env.address().unwrap()))
        .unwrap();
    let pattern = |len: usize, seed: u8| -> Blob {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<u8>>()
            .into()
    };
    let sent = vec![
        pattern(0, 1),
        pattern(Blob::SHARE_MIN - 1, 2),
        pattern(Blob::SHARE_MIN, 3),
        pattern((1 << 20) + 7, 4),
        pattern(5, 5),
    ];
    let reply: Blobs = r
        .ask_sync(Blobs {
            note: "there and back".into(),
            blobs: sent.clone(),
            n: 0,
        })
        .unwrap();
    let mut expected = sent;
    expected.reverse();
    expected.push(vec![0xa5; 300_000].into());
    assert_eq!(reply.note, "there and back!");
    assert_eq!(reply.blobs.len(), expected.len());
    for (i, (got, want)) in reply.blobs.iter().zip(&expected).enumerate() {
        assert!(
            got[..] == want[..],
            "blob {i} ({} bytes) differs",
            want.len()
        );
    }
    let sum: u32 = expected
        .iter()
        .map(|b| b.iter().map(|&x| u32::from(x)).sum::<u32>())
        .sum();
    assert_eq!(reply.n, sum);
    another.shutdown();
    env.shutdown();
}
