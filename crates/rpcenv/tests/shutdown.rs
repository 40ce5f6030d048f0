//! Shutting down: queued messages run and every `on_stop` runs once, messages after the stop
//! are reported to their sender, shutdown from inside a handler, and no disconnection events
//! caused by the env's own shutdown.
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels, conditions or futures with
//! deadlines.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};

use rpcenv::{EndpointCtx, HandlerResult, RpcAddress, RpcEndpoint, RpcEndpointRef, RpcError};

mod common;
use common::{new_env, server, Echo, WAIT};

#[test]
fn messages_to_a_stopped_endpoint_or_env_are_reported_to_the_sender() {
    let env = new_env();
    let r = env.setup_endpoint("short-lived", Echo).unwrap();
    env.stop(&r);
    assert!(matches!(
        r.send("x".into()),
        Err(RpcError::EndpointStopped { ref name }) if name == "short-lived"
    ));
    assert!(matches!(
        r.ask_sync::<String>("x".into()),
        Err(RpcError::EndpointStopped { .. })
    ));
    let r2 = env.setup_endpoint("other", Echo).unwrap();
    env.shutdown();
    assert!(matches!(r2.send("x".into()), Err(RpcError::EnvStopped)));
    assert!(matches!(
        r2.ask_sync::<String>("x".into()),
        Err(RpcError::EnvStopped)
    ));
}

/// Shuts its own env down from inside a handler.
struct Suicidal(Sender<()>);

impl RpcEndpoint for Suicidal {
    type Message = String;
    fn receive(&mut self, ctx: &EndpointCtx<String>, _: String) -> HandlerResult {
        ctx.env().ok_or("env gone")?.shutdown();
        Ok(())
    }
    fn on_stop(&mut self, _: &EndpointCtx<String>) -> HandlerResult {
        self.0.send(())?;
        Ok(())
    }
}

#[test]
fn shutdown_from_inside_a_handler_does_not_deadlock() {
    let env = new_env();
    let (tx, rx) = channel();
    let r = env.setup_endpoint("suicidal", Suicidal(tx)).unwrap();
    r.send("die".into()).unwrap();
    rx.recv_timeout(WAIT).unwrap();
    env.await_termination().unwrap();
    assert!(env.is_stopped());
}

#[test]
fn shutdown_runs_queued_messages_then_every_on_stop_once() {
    let env = new_env();
    let stops = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    struct Counting(Arc<AtomicUsize>, Arc<AtomicUsize>);
    impl RpcEndpoint for Counting {
        type Message = String;
        fn receive(&mut self, _: &EndpointCtx<String>, _: String) -> HandlerResult {
            self.1.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn on_stop(&mut self, _: &EndpointCtx<String>) -> HandlerResult {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }
    let refs: Vec<_> = (0..5)
        .map(|i| {
            env.setup_endpoint(&format!("e{i}"), Counting(stops.clone(), received.clone()))
                .unwrap()
        })
        .collect();
    for r in &refs {
        for _ in 0..100 {
            r.send("m".into()).unwrap();
        }
    }
    env.shutdown();
    env.shutdown();
    env.await_termination().unwrap();
    assert_eq!(stops.load(Ordering::SeqCst), 5);
    assert_eq!(received.load(Ordering::SeqCst), 500);
}

/// Records on_stop / on_disconnected / on_network_error.
struct ShutdownProbe(Arc<Mutex<Vec<&'static str>>>);

impl RpcEndpoint for ShutdownProbe {
    type Message = String;
    fn on_disconnected(&mut self, _: &EndpointCtx<String>, _: &RpcAddress) -> HandlerResult {
        self.0.lock().unwrap().push("onDisconnected");
        Ok(())
    }
    fn on_network_error(
        &mut self,
        _: &EndpointCtx<String>,
        _: &RpcError,
        _: &RpcAddress,
    ) -> HandlerResult {
        self.0.lock().unwrap().push("onNetworkError");
        Ok(())
    }
    fn on_stop(&mut self, _: &EndpointCtx<String>) -> HandlerResult {
        self.0.lock().unwrap().push("onStop");
        Ok(())
    }
}

/// Spark: RpcEnvSuite "SPARK-14699: RpcEnv.shutdown should not fire onDisconnected events".
#[test]
fn spark_14699_rpc_env_shutdown_should_not_fire_on_disconnected_events() {
    let env = server("server");
    env.setup_endpoint("SPARK-14699", Echo).unwrap();
    let another = server("another");
    let calls = Arc::new(Mutex::new(Vec::new()));
    another
        .setup_endpoint("mock", ShutdownProbe(calls.clone()))
        .unwrap();
    let r: RpcEndpointRef<String> = another
        .setup_endpoint_ref(env.address().unwrap(), "SPARK-14699")
        .unwrap();
    assert_eq!(r.ask_sync::<String>("hello".into()).unwrap(), "hello");
    another.shutdown();
    another.await_termination().unwrap();
    assert_eq!(*calls.lock().unwrap(), vec!["onStop"]);
    env.shutdown();
}
