//! One-way messages: `send` to a local endpoint (moved into its inbox) and to a remote one
//! (serialized once, through the outbox of its address), and refs sent inside messages.
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels, conditions or futures with
//! deadlines.

use std::sync::mpsc::channel;

use rpcenv::{EndpointCtx, HandlerResult, RpcEndpoint, RpcEndpointRef};

mod common;
use common::{client, new_env, server, Forward, SelfReplier, WAIT};

/// An endpoint built from closures, for tests that need one callback.
struct Fn1<F>(F);

impl<F: FnMut(&EndpointCtx<String>, String) -> HandlerResult + Send + 'static> RpcEndpoint
    for Fn1<F>
{
    type Message = String;
    fn receive(&mut self, ctx: &EndpointCtx<String>, m: String) -> HandlerResult {
        (self.0)(ctx, m)
    }
}

/// Spark: RpcEnvSuite "send a message locally".
#[test]
fn send_a_message_locally() {
    let env = new_env();
    let (tx, rx) = channel();
    let r = env
        .setup_endpoint(
            "send-locally",
            Fn1(move |_: &EndpointCtx<String>, m: String| {
                tx.send(m)?;
                Ok(())
            }),
        )
        .unwrap();
    r.send("hello".into()).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "hello");
    env.shutdown();
}

/// Spark: RpcEnvSuite "send a RpcEndpointRef".
#[test]
fn send_a_rpc_endpoint_ref() {
    let env = new_env();
    let r = env.setup_endpoint("send-ref", SelfReplier).unwrap();
    let new_ref: RpcEndpointRef<String> = r.ask_sync("Hello".into()).unwrap();
    assert_eq!(new_ref, r);
    assert_eq!(new_ref.ask_sync::<String>("Echo".into()).unwrap(), "Echo");
    env.shutdown();
}

/// Spark: RpcEnvSuite "send a message remotely".
#[test]
fn send_a_message_remotely() {
    let env = server("server");
    let (tx, rx) = channel();
    env.setup_endpoint("send-remotely", Forward(tx)).unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "send-remotely")
        .unwrap();
    r.send("hello".into()).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "hello");
    another.shutdown();
    another.await_termination().unwrap();
    env.shutdown();
}

#[test]
fn send_a_rpc_endpoint_ref_remotely() {
    let env = server("server");
    let local = env.setup_endpoint("send-ref", SelfReplier).unwrap();
    let another = client("client");
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "send-ref")
        .unwrap();
    let new_ref: RpcEndpointRef<String> = r.ask_sync("Hello".into()).unwrap();
    assert_eq!(new_ref, local);
    assert_eq!(new_ref.ask_sync::<String>("Echo".into()).unwrap(), "Echo");
    another.shutdown();
    env.shutdown();
}
