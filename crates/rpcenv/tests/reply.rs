//! Replies through the call context: values, failures (local and remote), unserializable
//! replies, replies of the wrong type, contexts dropped unanswered or answered later.
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels, conditions or futures with
//! deadlines.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::Duration;

use rpcenv::{
    EndpointCtx, FailureKind, HandlerResult, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcError,
    RpcTimeout,
};
use serde::{Deserialize, Serialize};

mod common;
use common::{client, new_env, server, Acker, Echo, FailureSender, Oops, WAIT};

/// Spark: RpcEnvSuite "sendWithReply".
#[test]
fn send_with_reply() {
    let env = new_env();
    let r = env.setup_endpoint("sendWithReply", Acker).unwrap();
    let reply = RpcTimeout::new(WAIT, "test.wait")
        .await_result(r.ask::<String>("Hi".into()))
        .unwrap();
    assert_eq!(reply, "ack");
    env.shutdown();
}

/// Spark: RpcEnvSuite "sendWithReply: error".
#[test]
fn send_with_reply_error() {
    let env = new_env();
    let r = env
        .setup_endpoint("sendWithReply-error", FailureSender)
        .unwrap();
    let e = RpcTimeout::new(WAIT, "test.wait")
        .await_result(r.ask::<String>("Hi".into()))
        .unwrap_err();
    let failure = e.failure().expect("a failure");
    assert_eq!(failure.message(), "Oops");
    assert_eq!(failure.kind(), FailureKind::Reported);
    // Locally the original error travels too.
    assert!(failure.source().unwrap().downcast_ref::<Oops>().is_some());
}

#[test]
fn a_reply_of_another_type_fails_naming_both_types() {
    let env = new_env();
    let r = env.setup_endpoint("echo", Echo).unwrap();
    let e = r.ask_sync::<u32>("hello".into()).unwrap_err();
    match &e {
        RpcError::UnexpectedReplyType {
            expected, actual, ..
        } => {
            assert_eq!(*expected, "u32");
            assert_eq!(actual, "alloc::string::String");
        }
        other => panic!("expected UnexpectedReplyType, got {other:?}"),
    }
    env.shutdown();
}

/// Drops the context (by accident) or returns an error, depending on the message.
struct Careless(Sender<RpcError>);

impl RpcEndpoint for Careless {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        m: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        match m.as_str() {
            "drop" => drop(ctx),
            "later" => {
                std::thread::spawn(move || drop(ctx));
            }
            _ => return Err(format!("cannot handle {m}").into()),
        }
        Ok(())
    }
    fn on_error(&mut self, _: &EndpointCtx<String>, e: RpcError) -> HandlerResult {
        self.0.send(e)?;
        Ok(())
    }
}

/// Asks `careless` (a [`Careless`] endpoint whose errors arrive on `errors`): a dropped context
/// fails its ask at once with `NoReply`, not after the ask's long timeout, and a handler error
/// reaches the asker (not `NoReply`) and `on_error`, `rounds` times.
fn unanswered_asks_fail_at_once(
    careless: &RpcEndpointRef<String>,
    errors: &Receiver<RpcError>,
    rounds: usize,
) {
    let long = RpcTimeout::new(Duration::from_secs(300), "test.long");
    for m in ["drop", "later"] {
        let e = careless
            .ask_sync_with_timeout::<String>(m.into(), long.clone())
            .unwrap_err();
        assert!(
            matches!(e, RpcError::NoReply { ref endpoint } if endpoint.ends_with("careless")),
            "{m}: {e:?}"
        );
    }
    for _ in 0..rounds {
        let e = careless
            .ask_sync_with_timeout::<String>("boom".into(), long.clone())
            .unwrap_err();
        let failure = e
            .failure()
            .unwrap_or_else(|| panic!("a failure, not {e:?}"));
        assert_eq!(failure.kind(), FailureKind::Handler);
        assert_eq!(failure.message(), "cannot handle boom");
        assert!(errors
            .recv_timeout(WAIT)
            .unwrap()
            .to_string()
            .contains("cannot handle boom"));
    }
}

#[test]
fn an_unanswered_context_fails_the_ask_at_once() {
    let env = new_env();
    let (tx, rx) = channel();
    let r = env.setup_endpoint("careless", Careless(tx)).unwrap();
    unanswered_asks_fail_at_once(&r, &rx, 1);
    env.shutdown();
}

/// The same over the network: a remote ask is told apart from the other contexts its handler
/// dropped by its connection and request id, wherever its context has been moved to.
#[test]
fn an_unanswered_remote_context_fails_the_ask_with_the_handler_error() {
    let env = server("server");
    let (tx, rx) = channel();
    env.setup_endpoint("careless", Careless(tx)).unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "careless")
        .unwrap();
    unanswered_asks_fail_at_once(&r, &rx, 3);
    another.shutdown();
    env.shutdown();
}

#[test]
fn a_context_answered_later_from_another_thread() {
    struct Later;
    impl RpcEndpoint for Later {
        type Message = u64;
        fn receive_and_reply(
            &mut self,
            _: &EndpointCtx<u64>,
            n: u64,
            ctx: RpcCallContext,
        ) -> HandlerResult {
            std::thread::spawn(move || ctx.reply(n + 1));
            Ok(())
        }
    }
    let env = new_env();
    let r = env.setup_endpoint("later", Later).unwrap();
    assert_eq!(r.ask_sync::<u64>(41).unwrap(), 42);
    env.shutdown();
}

/// Spark: RpcEnvSuite "sendWithReply: remotely".
#[test]
fn send_with_reply_remotely() {
    let env = server("server");
    env.setup_endpoint("sendWithReply-remotely", Acker).unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "sendWithReply-remotely")
        .unwrap();
    let reply = RpcTimeout::new(WAIT, "test.wait")
        .await_result(r.ask::<String>("hi".into()))
        .unwrap();
    assert_eq!(reply, "ack");
    another.shutdown();
    env.shutdown();
}

/// Spark: RpcEnvSuite "sendWithReply: remotely error".
#[test]
fn send_with_reply_remotely_error() {
    let env = server("server");
    env.setup_endpoint("sendWithReply-remotely-error", FailureSender)
        .unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "sendWithReply-remotely-error")
        .unwrap();
    let e = r.ask_sync::<String>("hi".into()).unwrap_err();
    let failure = e.failure().expect("a failure");
    assert_eq!(failure.message(), "Oops");
    assert_eq!(failure.kind(), FailureKind::Reported);
    another.shutdown();
    env.shutdown();
}

/// A reply type whose serialization always fails.
#[derive(Debug)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom(
            "this value refuses to be serialized",
        ))
    }
}

impl<'de> Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| Unserializable)
    }
}

struct UnserializableReplier;

impl RpcEndpoint for UnserializableReplier {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        _: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        ctx.reply(Unserializable);
        Ok(())
    }
}

/// Rust analog of "sendWithReply: unserializable error": what cannot be serialized is replaced
/// by the serialization error itself.
///
/// Spark: RpcEnvSuite "sendWithReply: unserializable error".
#[test]
fn send_with_reply_unserializable_error() {
    let env = server("server");
    env.setup_endpoint("unserializable", UnserializableReplier)
        .unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "unserializable")
        .unwrap();
    let e = r.ask_sync::<Unserializable>("hi".into()).unwrap_err();
    let failure = e.failure().expect("a failure");
    assert_eq!(failure.kind(), FailureKind::Serialization);
    // (postcard does not keep a custom serialization error's text.)
    assert!(failure.message().contains("could not be serialized"), "{e}");
    another.shutdown();
    env.shutdown();
}
