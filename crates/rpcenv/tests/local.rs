//! The local tests of Spark's RpcEnvSuite / NettyRpcEnvSuite (catalog §3.1), ported: everything
//! that happens inside one env. Waits are on channels or conditions with generous deadlines.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use rpcenv::{
    ConcurrentRpcEndpoint, EndpointCtx, FailureKind, HandlerResult, RpcCallContext, RpcEndpoint,
    RpcEndpointRef, RpcEnv, RpcError, RpcTimeout,
};
use serde::{Deserialize, Serialize};

mod common;
use common::{suite_conf, Acker, Echo, FailureSender, Hoarder, Oops, SelfReplier};

const WAIT: Duration = Duration::from_secs(10);

fn new_env() -> RpcEnv {
    RpcEnv::builder("local").conf(suite_conf()).build().unwrap()
}

fn env_with(conf: &[(&str, &str)]) -> RpcEnv {
    let mut c = suite_conf();
    for (k, v) in conf {
        c.set(k, *v).unwrap();
    }
    RpcEnv::builder("local").conf(c).build().unwrap()
}

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

#[test]
fn send_a_rpc_endpoint_ref() {
    let env = new_env();
    let r = env.setup_endpoint("send-ref", SelfReplier).unwrap();
    let new_ref: RpcEndpointRef<String> = r.ask_sync("Hello".into()).unwrap();
    assert_eq!(new_ref, r);
    assert_eq!(new_ref.ask_sync::<String>("Echo".into()).unwrap(), "Echo");
    env.shutdown();
}

#[test]
fn ask_a_message_locally() {
    let env = new_env();
    let r = env.setup_endpoint("ask-locally", Echo).unwrap();
    assert_eq!(r.ask_sync::<String>("hello".into()).unwrap(), "hello");
    env.shutdown();
}

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

#[test]
fn self_call_in_on_start() {
    let env = new_env();
    let rx = probe_self(&env, "self-onStart");
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("on_start", true));
    env.shutdown();
}

#[test]
fn self_call_in_receive() {
    let env = new_env();
    let rx = probe_self(&env, "self-receive");
    rx.recv_timeout(WAIT).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("receive", true));
    env.shutdown();
}

#[test]
fn self_call_in_on_stop() {
    let env = new_env();
    let rx = probe_self(&env, "self-onStop");
    rx.recv_timeout(WAIT).unwrap();
    rx.recv_timeout(WAIT).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("on_stop", false));
    env.shutdown();
}

/// Counts with a plain integer; also detects any overlap of two handler calls.
struct SequenceCounter {
    count: usize,
    inside: Arc<AtomicBool>,
    overlaps: Arc<AtomicUsize>,
    done: Sender<usize>,
    target: usize,
}

impl RpcEndpoint for SequenceCounter {
    type Message = String;
    fn receive(&mut self, _: &EndpointCtx<String>, _: String) -> HandlerResult {
        if self.inside.swap(true, Ordering::SeqCst) {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        self.count += 1;
        std::hint::spin_loop();
        self.inside.store(false, Ordering::SeqCst);
        if self.count == self.target {
            self.done.send(self.count)?;
        }
        Ok(())
    }
}

#[test]
fn call_receive_in_sequence() {
    let env = new_env();
    for round in 0..100 {
        let (tx, rx) = channel();
        let overlaps = Arc::new(AtomicUsize::new(0));
        let r = env
            .setup_endpoint(
                &format!("receive-in-sequence-{round}"),
                SequenceCounter {
                    count: 0,
                    inside: Arc::new(AtomicBool::new(false)),
                    overlaps: overlaps.clone(),
                    done: tx,
                    target: 1000,
                },
            )
            .unwrap();
        let senders: Vec<_> = (0..10)
            .map(|_| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        r.send("Hello".into()).unwrap();
                    }
                })
            })
            .collect();
        for s in senders {
            s.join().unwrap();
        }
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), 1000);
        assert_eq!(
            overlaps.load(Ordering::SeqCst),
            0,
            "handler calls overlapped"
        );
        env.stop(&r);
    }
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

/// Blocks in receive_and_reply until released.
struct Blocker(Arc<Barrier>);

impl RpcEndpoint for Blocker {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        _: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        self.0.wait();
        ctx.reply("hi".to_string());
        Ok(())
    }
    fn isolated(&self) -> bool {
        true
    }
}

#[test]
fn isolated_endpoints() {
    let env = env_with(&[("spark.rpc.netty.dispatcher.numThreads", "1")]);
    let release = Arc::new(Barrier::new(2));
    let blocker = env
        .setup_endpoint("blocker", Blocker(release.clone()))
        .unwrap();
    let blocked = blocker.ask_with_timeout::<String>(
        "hi".into(),
        RpcTimeout::new(Duration::from_secs(30), "test.wait"),
    );
    let echo = env.setup_endpoint("echo", Echo).unwrap();
    // The shared pool (one thread) still serves while the isolated endpoint blocks.
    assert_eq!(echo.ask_sync::<String>("hello".into()).unwrap(), "hello");
    release.wait();
    assert_eq!(blocked.wait().unwrap(), "hi");
    env.shutdown();
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

#[test]
fn duplicate_names_and_registration_after_shutdown_are_refused() {
    let env = new_env();
    env.setup_endpoint("dup", Echo).unwrap();
    let e = env.setup_endpoint("dup", Echo).unwrap_err();
    assert_eq!(e.to_string(), "There is already an RpcEndpoint called dup");
    env.shutdown();
    assert!(matches!(
        env.setup_endpoint("late", Echo),
        Err(RpcError::EnvStopped)
    ));
}

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

#[test]
fn lookups_name_the_missing_endpoint_or_both_message_types() {
    let env = new_env();
    env.setup_endpoint("echo", Echo).unwrap();
    assert!(env.endpoint_ref::<String>("echo").is_ok());
    let e = env.endpoint_ref::<String>("nonexist-endpoint").unwrap_err();
    assert!(
        e.to_string().contains("rpc://nonexist-endpoint@127.0.0.1:"),
        "{e}"
    );
    let e = env.endpoint_ref::<u64>("echo").unwrap_err();
    match e {
        RpcError::MessageTypeMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, "u64");
            assert_eq!(actual, "alloc::string::String");
        }
        other => panic!("expected a type mismatch, got {other:?}"),
    }
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

#[test]
fn an_unanswered_context_fails_the_ask_at_once() {
    let env = new_env();
    let (tx, rx) = channel();
    let r = env.setup_endpoint("careless", Careless(tx)).unwrap();
    // The ask's own timeout is long; the failure must come from the drop, not the timeout.
    let long = RpcTimeout::new(Duration::from_secs(300), "test.long");
    for m in ["drop", "later"] {
        let e = r
            .ask_sync_with_timeout::<String>(m.into(), long.clone())
            .unwrap_err();
        assert!(
            matches!(e, RpcError::NoReply { ref endpoint } if endpoint == "careless"),
            "{e:?}"
        );
    }
    // A handler error reaches the asker (not NoReply) and on_error.
    let e = r
        .ask_sync_with_timeout::<String>("boom".into(), long)
        .unwrap_err();
    let failure = e.failure().expect("a failure");
    assert_eq!(failure.kind(), FailureKind::Handler);
    assert_eq!(failure.message(), "cannot handle boom");
    assert!(rx
        .recv_timeout(WAIT)
        .unwrap()
        .to_string()
        .contains("cannot handle boom"));
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

#[test]
fn refs_are_equal_and_hashed_by_address_and_display_like_sparks() {
    let env = new_env();
    let r = env.setup_endpoint("echo", Echo).unwrap();
    let again = env.endpoint_ref::<String>("echo").unwrap();
    assert_eq!(r, again);
    let set: HashSet<_> = [r.clone(), again].into_iter().collect();
    assert_eq!(set.len(), 1);
    let port = env.address().unwrap().port();
    assert_eq!(
        r.to_string(),
        format!("RpcEndpointRef(rpc://echo@127.0.0.1:{port})")
    );
    assert_eq!(r.name(), "echo");
    env.shutdown();
}

#[test]
fn blocking_calls_on_runtime_threads_return_an_error() {
    let env = new_env();
    let r = env.setup_endpoint("echo", Echo).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        assert!(matches!(
            r.ask_sync::<String>("x".into()),
            Err(RpcError::BlockingInAsyncContext { .. })
        ));
        assert!(matches!(
            env.await_termination(),
            Err(RpcError::BlockingInAsyncContext { .. })
        ));
        // The async form works on the same thread.
        assert_eq!(r.ask::<String>("x".into()).await.unwrap(), "x");
    });
    env.shutdown();
}

#[test]
fn an_env_created_used_and_dropped_inside_async_code_never_panics() {
    for flavor in ["current", "multi"] {
        let rt = match flavor {
            "current" => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .unwrap();
        rt.block_on(async {
            let env = RpcEnv::builder("async").conf(suite_conf()).build().unwrap();
            let r = env.setup_endpoint("echo", Echo).unwrap();
            assert_eq!(r.ask::<String>("x".into()).await.unwrap(), "x");
            let timed_out = r
                .ask_with_timeout::<String>("y".into(), RpcTimeout::new(Duration::ZERO, "t"))
                .await;
            // Either the reply or the timeout wins the race; neither panics.
            let _ = timed_out;
            let env2 = env.clone();
            drop(env);
            env2.shutdown();
            tokio::time::timeout(WAIT, env2.terminated())
                .await
                .expect("env terminates");
            drop(env2);
            // Dropping an env without shutting it down is fine too.
            let env3 = RpcEnv::builder("dropped")
                .conf(suite_conf())
                .build()
                .unwrap();
            env3.setup_endpoint("echo", Echo).unwrap();
            drop(env3);
        });
    }
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

/// Two messages meet: only possible if they run at the same time. Fails (rather than hangs)
/// after a deadline.
struct Rendezvous {
    arrived: Mutex<usize>,
    cond: std::sync::Condvar,
    started: AtomicBool,
    message_before_start: AtomicBool,
}

impl ConcurrentRpcEndpoint for Rendezvous {
    type Message = String;
    fn on_start(&self, _: &EndpointCtx<String>) -> HandlerResult {
        self.started.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn receive_and_reply(
        &self,
        _: &EndpointCtx<String>,
        m: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        if !self.started.load(Ordering::SeqCst) {
            self.message_before_start.store(true, Ordering::SeqCst);
        }
        let mut n = self.arrived.lock().unwrap();
        *n += 1;
        self.cond.notify_all();
        let (n, timeout) = self.cond.wait_timeout_while(n, WAIT, |n| *n < 2).unwrap();
        drop(n);
        if timeout.timed_out() {
            return Err("the other message never ran concurrently".into());
        }
        ctx.reply(m);
        Ok(())
    }
}

#[test]
fn concurrent_endpoints_run_messages_on_several_threads() {
    let env = env_with(&[("rpc.netty.dispatcher.numThreads", "2")]);
    let ep = Arc::new(Rendezvous {
        arrived: Mutex::new(0),
        cond: std::sync::Condvar::new(),
        started: AtomicBool::new(false),
        message_before_start: AtomicBool::new(false),
    });
    struct Shared(Arc<Rendezvous>);
    impl ConcurrentRpcEndpoint for Shared {
        type Message = String;
        fn on_start(&self, ctx: &EndpointCtx<String>) -> HandlerResult {
            self.0.on_start(ctx)
        }
        fn receive_and_reply(
            &self,
            ctx: &EndpointCtx<String>,
            m: String,
            reply: RpcCallContext,
        ) -> HandlerResult {
            self.0.receive_and_reply(ctx, m, reply)
        }
    }
    let r = env
        .setup_concurrent_endpoint("rendezvous", Shared(ep.clone()))
        .unwrap();
    let a = r.ask::<String>("a".into());
    let b = r.ask::<String>("b".into());
    assert_eq!(a.wait().unwrap(), "a");
    assert_eq!(b.wait().unwrap(), "b");
    assert!(!ep.message_before_start.load(Ordering::SeqCst));
    env.shutdown();
}

/// The stress test of the issue: 8 threads x 10,000 asks to one endpoint; every reply matched to
/// its request, nothing lost, per-sender order kept.
#[test]
fn stress_eight_threads_ten_thousand_asks_each() {
    #[derive(Serialize, Deserialize)]
    struct Req {
        sender: usize,
        seq: usize,
    }
    impl rpcenv::RpcMessage for Req {}
    struct OrderChecker {
        next: Vec<usize>,
        out_of_order: usize,
    }
    impl RpcEndpoint for OrderChecker {
        type Message = Req;
        fn receive_and_reply(
            &mut self,
            _: &EndpointCtx<Req>,
            r: Req,
            ctx: RpcCallContext,
        ) -> HandlerResult {
            if self.next[r.sender] != r.seq {
                self.out_of_order += 1;
            }
            self.next[r.sender] = r.seq + 1;
            ctx.reply((r.sender, r.seq, self.out_of_order));
            Ok(())
        }
    }
    const THREADS: usize = 8;
    const ASKS: usize = 10_000;
    let env = new_env();
    let r = env
        .setup_endpoint(
            "stress",
            OrderChecker {
                next: vec![0; THREADS],
                out_of_order: 0,
            },
        )
        .unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|sender| {
            let r = r.clone();
            std::thread::spawn(move || {
                // Pipelined in windows of 100 outstanding asks.
                let mut replies = 0;
                for window in 0..ASKS / 100 {
                    let asks: Vec<_> = (0..100)
                        .map(|i| {
                            let seq = window * 100 + i;
                            (seq, r.ask::<(usize, usize, usize)>(Req { sender, seq }))
                        })
                        .collect();
                    for (seq, ask) in asks {
                        let (s, q, out_of_order) = ask.wait().unwrap();
                        assert_eq!((s, q), (sender, seq), "reply matched to its request");
                        assert_eq!(out_of_order, 0, "per-sender order kept");
                        replies += 1;
                    }
                }
                replies
            })
        })
        .collect();
    let total: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert_eq!(total, THREADS * ASKS);
    env.shutdown();
}
