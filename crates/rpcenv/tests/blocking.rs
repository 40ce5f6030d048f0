//! Blocking inside handlers: an `ask_sync` that can only deadlock fails at once naming the
//! deadlock, handlers blocked in `ask_sync` or `Ask::wait` do not stop the shared pool (a
//! compensating loop thread serves it), and shutdown fails the asks such handlers wait in.
//!
//! Every env binds 127.0.0.1 with port 0. Waits are on channels with deadlines.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use rpcenv::{
    EndpointCtx, HandlerResult, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcEnv, RpcError,
    RpcTimeout,
};

mod common;
use common::{env_with, server, Echo, WAIT};

/// Asks itself (one message at a time) from its handler and replies with the outcome.
struct SelfAsker;

impl RpcEndpoint for SelfAsker {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        ctx: &EndpointCtx<String>,
        m: String,
        reply: RpcCallContext,
    ) -> HandlerResult {
        if m == "inner" {
            reply.reply("inner".to_string());
            return Ok(());
        }
        let me = ctx.self_ref().cloned().ok_or("no self ref")?;
        let outcome = me.ask_sync::<String>("inner".into());
        reply.reply(format!("{outcome:?}"));
        Ok(())
    }
}

#[test]
fn a_one_at_a_time_endpoint_asking_itself_fails_at_once_naming_the_deadlock() {
    let env = env_with(&[("rpc.askTimeout", "120s")]);
    let r = env.setup_endpoint("self-asker", SelfAsker).unwrap();
    let outcome = r
        .ask_sync_with_timeout::<String>("go".into(), RpcTimeout::new(WAIT, "test.wait"))
        .unwrap();
    assert!(outcome.contains("Deadlock"), "{outcome}");
    assert!(outcome.contains("asked itself"), "{outcome}");
    // The endpoint still works.
    assert_eq!(r.ask_sync::<String>("inner".into()).unwrap(), "inner");
    env.shutdown();
}

/// `a` asks `b`, whose handler asks `a` back: the second ask fails at once.
struct ChainA(RpcEndpointRef<String>);

impl RpcEndpoint for ChainA {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        m: String,
        reply: RpcCallContext,
    ) -> HandlerResult {
        if m == "back" {
            reply.reply("a answers".to_string());
            return Ok(());
        }
        let outcome = self.0.ask_sync::<String>("go".into());
        reply.reply(format!("{outcome:?}"));
        Ok(())
    }
}

struct ChainB(Option<RpcEndpointRef<String>>);

impl RpcEndpoint for ChainB {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        ctx: &EndpointCtx<String>,
        _: String,
        reply: RpcCallContext,
    ) -> HandlerResult {
        let a = self
            .0
            .clone()
            .or_else(|| ctx.env()?.endpoint_ref::<String>("a").ok())
            .ok_or("no a")?;
        match a.ask_sync::<String>("back".into()) {
            Ok(s) => reply.reply(s),
            Err(e) => reply.reply(format!("b: {e:?}")),
        }
        Ok(())
    }
}

#[test]
fn a_chain_of_blocking_asks_back_to_a_one_at_a_time_endpoint_fails_at_once() {
    let env = env_with(&[("rpc.askTimeout", "120s")]);
    let b = env.setup_endpoint("b", ChainB(None)).unwrap();
    let a = env.setup_endpoint("a", ChainA(b)).unwrap();
    let outcome = a
        .ask_sync_with_timeout::<String>("go".into(), RpcTimeout::new(WAIT, "test.wait"))
        .unwrap();
    assert!(outcome.contains("Deadlock"), "{outcome}");
    // b's ask to a fails: a waits for b.
    assert!(outcome.contains("chain a -> b"), "{outcome}");
    env.shutdown();
}

/// Asks `second` and waits; answers `back` at once.
struct First(RpcEndpointRef<String>);

impl RpcEndpoint for First {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        m: String,
        reply: RpcCallContext,
    ) -> HandlerResult {
        if m == "back" {
            reply.reply("first answers".to_string());
            return Ok(());
        }
        let outcome = self.0.ask_sync::<String>("go".into());
        reply.reply(format!("{outcome:?}"));
        Ok(())
    }
}

/// Answers, then asks `first` back from the same handler and reports how that went.
struct Second(Sender<String>);

impl RpcEndpoint for Second {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        ctx: &EndpointCtx<String>,
        _: String,
        reply: RpcCallContext,
    ) -> HandlerResult {
        reply.reply("second answers".to_string());
        let first = ctx.env().ok_or("no env")?.endpoint_ref::<String>("first")?;
        let _ = self
            .0
            .send(format!("{:?}", first.ask_sync::<String>("back".into())));
        Ok(())
    }
}

/// `first` waits in an ask to `second`, which answers it and then asks `first` back: no
/// deadlock, since `first` has its answer and is about to return (its thread may not have
/// woken yet). The check must not count a handler whose ask was answered as still blocked.
#[test]
fn asking_back_a_handler_whose_ask_was_just_answered_is_no_deadlock() {
    let env = env_with(&[("rpc.askTimeout", "120s")]);
    let (report, reported) = channel();
    let second = env.setup_endpoint("second", Second(report)).unwrap();
    let first = env.setup_endpoint("first", First(second)).unwrap();
    for _ in 0..20 {
        let outcome = first
            .ask_sync_with_timeout::<String>("go".into(), RpcTimeout::new(WAIT, "test.wait"))
            .unwrap();
        assert_eq!(outcome, "Ok(\"second answers\")");
        let back = reported.recv_timeout(WAIT).expect("second reports");
        assert_eq!(back, "Ok(\"first answers\")");
    }
    env.shutdown();
}

/// Keeps every ask unanswered and reports each arrival.
struct Sink(Vec<RpcCallContext>, Sender<()>);

impl RpcEndpoint for Sink {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        _: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        self.0.push(ctx);
        self.1.send(())?;
        Ok(())
    }
}

/// The two ways a handler blocks on an ask.
#[derive(Clone, Copy, Debug)]
enum Blocks {
    /// `ask_sync_with_timeout`.
    InAskSync,
    /// `ask_with_timeout(..).wait()`: the ask first, the wait later.
    InAskWait,
}

const BOTH: [Blocks; 2] = [Blocks::InAskSync, Blocks::InAskWait];

/// A [`Sink`] in an env of its own and a ref to it from `env`, and the sink's reports. Remote,
/// so that only the shutdown of `env` can end a wait for it (a local sink, stopped by that
/// shutdown, would drop its asks unanswered and wake their waiters itself).
fn remote_sink(env: &RpcEnv) -> (RpcEnv, RpcEndpointRef<String>, Receiver<()>) {
    let far = server("far");
    let (arrived_tx, arrived) = channel();
    far.setup_endpoint("sink", Sink(Vec::new(), arrived_tx))
        .unwrap();
    let sink = env
        .setup_endpoint_ref(far.address().unwrap(), "sink")
        .unwrap();
    (far, sink, arrived)
}

/// On any message, blocks in an ask to the sink, then reports how it ended.
struct Blocker(
    RpcEndpointRef<String>,
    RpcTimeout,
    Sender<Result<String, RpcError>>,
    Blocks,
);

impl RpcEndpoint for Blocker {
    type Message = String;
    fn receive(&mut self, _: &EndpointCtx<String>, m: String) -> HandlerResult {
        let outcome = match self.3 {
            Blocks::InAskSync => self.0.ask_sync_with_timeout::<String>(m, self.1.clone()),
            Blocks::InAskWait => self.0.ask_with_timeout::<String>(m, self.1.clone()).wait(),
        };
        let _ = self.2.send(outcome);
        Ok(())
    }
}

/// Whether they wait in `ask_sync` or in `Ask::wait`.
#[test]
fn two_handlers_blocked_in_an_ask_do_not_stop_a_third_endpoint() {
    for blocks in BOTH {
        two_blocked_handlers_and_a_third_endpoint(blocks);
    }
}

fn two_blocked_handlers_and_a_third_endpoint(blocks: Blocks) {
    let env = env_with(&[
        ("rpc.netty.dispatcher.numThreads", "2"),
        ("rpc.askTimeout", "120s"),
    ]);
    let (_far, sink, arrived) = remote_sink(&env);
    let (done_tx, done) = channel();
    let long = RpcTimeout::new(Duration::from_secs(120), "rpc.askTimeout");
    let blockers: Vec<_> = (0..2)
        .map(|i| {
            env.setup_endpoint(
                &format!("blocker-{i}"),
                Blocker(sink.clone(), long.clone(), done_tx.clone(), blocks),
            )
            .unwrap()
        })
        .collect();
    let echo = env.setup_endpoint("echo", Echo).unwrap();
    for b in &blockers {
        b.send("wait".into()).unwrap();
    }
    // Both handlers are blocked in their asks once the sink has both.
    for _ in 0..2 {
        arrived.recv_timeout(WAIT).unwrap();
    }
    let answer = echo.ask_sync_with_timeout::<String>(
        "still here".into(),
        RpcTimeout::new(Duration::from_secs(1), "test.wait"),
    );
    assert_eq!(answer.unwrap(), "still here", "{blocks:?}");
    // Shutdown fails the blocked asks.
    env.shutdown();
    for _ in 0..2 {
        let outcome = done.recv_timeout(WAIT).unwrap();
        assert!(
            matches!(outcome, Err(RpcError::EnvStopped)),
            "{blocks:?}: {outcome:?}"
        );
    }
}

/// Whether it waits in `ask_sync` or in `Ask::wait`.
#[test]
fn shutdown_returns_while_a_handler_waits_in_an_ask_without_timeout() {
    for blocks in BOTH {
        shutdown_while_a_handler_waits(blocks);
    }
}

fn shutdown_while_a_handler_waits(blocks: Blocks) {
    let env = env_with(&[]);
    let (_far, sink, arrived) = remote_sink(&env);
    let (done_tx, done) = channel();
    let blocker = env
        .setup_endpoint(
            "blocker",
            Blocker(sink, RpcTimeout::infinite(), done_tx, blocks),
        )
        .unwrap();
    blocker.send("forever".into()).unwrap();
    arrived.recv_timeout(WAIT).unwrap();
    let (shut_tx, shut) = channel();
    let start = Instant::now();
    std::thread::spawn(move || {
        env.shutdown();
        let _ = shut_tx.send(());
    });
    shut.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("{blocks:?}: shutdown returns within 5 s"));
    assert!(start.elapsed() < Duration::from_secs(5));
    let outcome = done.recv_timeout(WAIT).unwrap();
    assert!(
        matches!(outcome, Err(RpcError::EnvStopped)),
        "{blocks:?}: {outcome:?}"
    );
}
