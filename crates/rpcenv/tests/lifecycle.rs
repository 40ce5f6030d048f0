//! The lifecycle of an endpoint: `on_start` first and `on_stop` last, errors and panics handed
//! to `on_error` (the dispatcher survives them), `self_ref` in each callback, and `stop`.
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels, conditions or futures with
//! deadlines.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use rpcenv::{
    EndpointCtx, FailureKind, HandlerResult, RpcCallContext, RpcEndpoint, RpcEnv, RpcError,
};
use serde::{Deserialize, Serialize};

mod common;
use common::{env_with, new_env, WAIT};

#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<String>>>);

impl Calls {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn get(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

struct Lifecycle(Calls, Sender<()>);

impl RpcEndpoint for Lifecycle {
    type Message = String;
    fn on_start(&mut self, _: &EndpointCtx<String>) -> HandlerResult {
        self.0.push("start");
        Ok(())
    }
    fn on_stop(&mut self, _: &EndpointCtx<String>) -> HandlerResult {
        self.0.push("stop");
        self.1.send(())?;
        Ok(())
    }
}

/// Spark: RpcEnvSuite "onStart and onStop".
#[test]
fn on_start_and_on_stop() {
    let env = new_env();
    let calls = Calls::default();
    let (tx, rx) = channel();
    let r = env
        .setup_endpoint("start-stop-test", Lifecycle(calls.clone(), tx))
        .unwrap();
    env.stop(&r);
    rx.recv_timeout(WAIT).unwrap();
    assert_eq!(calls.get(), vec!["start", "stop"]);
    env.shutdown();
}

/// Fails in the callback named by `fail_in`, and reports what on_error received.
struct Failing {
    fail_in: &'static str,
    errors: Sender<RpcError>,
}

impl RpcEndpoint for Failing {
    type Message = String;
    fn on_start(&mut self, _: &EndpointCtx<String>) -> HandlerResult {
        if self.fail_in == "on_start" {
            return Err("Oops!".into());
        }
        Ok(())
    }
    fn receive(&mut self, _: &EndpointCtx<String>, _: String) -> HandlerResult {
        if self.fail_in == "receive" {
            return Err("Oops!".into());
        }
        Ok(())
    }
    fn on_stop(&mut self, _: &EndpointCtx<String>) -> HandlerResult {
        if self.fail_in == "on_stop" {
            return Err("Oops!".into());
        }
        Ok(())
    }
    fn on_error(&mut self, _: &EndpointCtx<String>, e: RpcError) -> HandlerResult {
        self.errors.send(e)?;
        Ok(())
    }
}

fn assert_oops(e: RpcError) {
    match e {
        RpcError::Handler { source, .. } => assert_eq!(source.to_string(), "Oops!"),
        other => panic!("expected a handler error, got {other:?}"),
    }
}

/// Spark: RpcEnvSuite "onError: error in onStart".
#[test]
fn on_error_error_in_on_start() {
    let env = new_env();
    let (tx, rx) = channel();
    env.setup_endpoint(
        "onError-onStart",
        Failing {
            fail_in: "on_start",
            errors: tx,
        },
    )
    .unwrap();
    assert_oops(rx.recv_timeout(WAIT).unwrap());
    env.shutdown();
}

/// Spark: RpcEnvSuite "onError: error in onStop".
#[test]
fn on_error_error_in_on_stop() {
    let env = new_env();
    let (tx, rx) = channel();
    let r = env
        .setup_endpoint(
            "onError-onStop",
            Failing {
                fail_in: "on_stop",
                errors: tx,
            },
        )
        .unwrap();
    env.stop(&r);
    assert_oops(rx.recv_timeout(WAIT).unwrap());
    env.shutdown();
}

/// Spark: RpcEnvSuite "onError: error in receive".
#[test]
fn on_error_error_in_receive() {
    let env = new_env();
    let (tx, rx) = channel();
    let r = env
        .setup_endpoint(
            "onError-receive",
            Failing {
                fail_in: "receive",
                errors: tx,
            },
        )
        .unwrap();
    r.send("Foo".into()).unwrap();
    assert_oops(rx.recv_timeout(WAIT).unwrap());
    env.shutdown();
}

/// Reports whether `self_ref` was available in each callback.
struct SelfProbe(Sender<(&'static str, bool)>);

impl RpcEndpoint for SelfProbe {
    type Message = String;
    fn on_start(&mut self, ctx: &EndpointCtx<String>) -> HandlerResult {
        self.0.send(("on_start", ctx.self_ref().is_some()))?;
        Ok(())
    }
    fn receive(&mut self, ctx: &EndpointCtx<String>, _: String) -> HandlerResult {
        self.0.send(("receive", ctx.self_ref().is_some()))?;
        Ok(())
    }
    fn on_stop(&mut self, ctx: &EndpointCtx<String>) -> HandlerResult {
        self.0.send(("on_stop", ctx.self_ref().is_some()))?;
        Ok(())
    }
}

fn probe_self(env: &RpcEnv, name: &str) -> Receiver<(&'static str, bool)> {
    let (tx, rx) = channel();
    let r = env.setup_endpoint(name, SelfProbe(tx)).unwrap();
    r.send("Foo".into()).unwrap();
    env.stop(&r);
    rx
}

/// Spark: RpcEnvSuite "self: call in onStart".
#[test]
fn self_call_in_on_start() {
    let env = new_env();
    let rx = probe_self(&env, "self-onStart");
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("on_start", true));
    env.shutdown();
}

/// Spark: RpcEnvSuite "self: call in receive".
#[test]
fn self_call_in_receive() {
    let env = new_env();
    let rx = probe_self(&env, "self-receive");
    rx.recv_timeout(WAIT).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("receive", true));
    env.shutdown();
}

/// Spark: RpcEnvSuite "self: call in onStop".
#[test]
fn self_call_in_on_stop() {
    let env = new_env();
    let rx = probe_self(&env, "self-onStop");
    rx.recv_timeout(WAIT).unwrap();
    rx.recv_timeout(WAIT).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("on_stop", false));
    env.shutdown();
}

struct StopCounter(Arc<AtomicUsize>);

impl RpcEndpoint for StopCounter {
    type Message = String;
    fn on_stop(&mut self, _: &EndpointCtx<String>) -> HandlerResult {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Spark: RpcEnvSuite "stop(RpcEndpointRef) reentrant".
#[test]
fn stop_rpc_endpoint_ref_reentrant() {
    let env = new_env();
    let stops = Arc::new(AtomicUsize::new(0));
    let r = env
        .setup_endpoint("stop-reentrant", StopCounter(stops.clone()))
        .unwrap();
    env.stop(&r);
    env.stop(&r);
    env.shutdown();
    env.await_termination().unwrap();
    assert_eq!(stops.load(Ordering::SeqCst), 1);
}

/// Panics for text, echoes numbers.
struct Panicky;

#[derive(Serialize, Deserialize)]
enum TextOrNumber {
    Text(String),
    Number(i32),
}

impl rpcenv::RpcMessage for TextOrNumber {}

impl RpcEndpoint for Panicky {
    type Message = TextOrNumber;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<TextOrNumber>,
        m: TextOrNumber,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        match m {
            TextOrNumber::Text(_) => panic!("stack overflow (simulated)"),
            TextOrNumber::Number(n) => ctx.reply(n),
        }
        Ok(())
    }
}

/// The Rust analog of "StackOverflowError should be sent back and Dispatcher should survive"
/// (a real stack overflow aborts a Rust process; a panic is what a handler can survive).
///
/// Spark: RpcEnvSuite "StackOverflowError should be sent back and Dispatcher should survive".
#[test]
fn panic_should_be_sent_back_and_dispatcher_should_survive() {
    let env = env_with(&[("rpc.netty.dispatcher.numThreads", "2")]);
    let r = env.setup_endpoint("panicky", Panicky).unwrap();
    for _ in 0..2 {
        let e = r
            .ask_sync::<i32>(TextOrNumber::Text("hello".into()))
            .unwrap_err();
        let failure = e.failure().expect("a failure");
        assert_eq!(failure.kind(), FailureKind::Panic);
        assert!(
            failure.message().contains("stack overflow (simulated)"),
            "{e}"
        );
    }
    assert_eq!(r.ask_sync::<i32>(TextOrNumber::Number(100)).unwrap(), 100);
    env.shutdown();
}

struct Silent(Sender<RpcError>);

impl RpcEndpoint for Silent {
    type Message = String;
    fn on_error(&mut self, _: &EndpointCtx<String>, e: RpcError) -> HandlerResult {
        self.0.send(e)?;
        Ok(())
    }
}

#[test]
fn default_handlers_report_what_is_not_implemented() {
    let env = new_env();
    let (tx, rx) = channel();
    let r = env.setup_endpoint("silent", Silent(tx)).unwrap();
    r.send("hello".into()).unwrap();
    match rx.recv_timeout(WAIT).unwrap() {
        RpcError::NotImplemented { endpoint, method } => {
            assert_eq!(endpoint, "silent");
            assert_eq!(method, "receive");
        }
        other => panic!("expected NotImplemented, got {other:?}"),
    }
    let e = r.ask_sync::<String>("hello".into()).unwrap_err();
    assert_eq!(
        e.failure().unwrap().message(),
        "silent does not implement 'receive_and_reply'"
    );
    env.shutdown();
}
