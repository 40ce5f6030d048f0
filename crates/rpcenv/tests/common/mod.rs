//! Endpoints the behaviour tests share.
#![allow(dead_code)] // each test file uses some of them

use std::sync::mpsc::Sender;
use std::time::Duration;

use rpcenv::{EndpointCtx, HandlerResult, RpcCallContext, RpcConf, RpcEndpoint, RpcEnv};

/// How long a test waits for something that should happen at once (generous: the machine may
/// be loaded).
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// The configuration every env of the suites starts from: empty, or read from the file named by
/// `RPCENV_SUITE_CONF`. CI runs the suites a second time with TLS settings this way, as Spark
/// runs RpcEnvSuite again as SslNettyRpcEnvSuite.
pub(crate) fn suite_conf() -> RpcConf {
    match std::env::var("RPCENV_SUITE_CONF") {
        Ok(path) => {
            RpcConf::from_file(&path).unwrap_or_else(|e| panic!("RPCENV_SUITE_CONF={path}: {e}"))
        }
        Err(_) => RpcConf::new(),
    }
}

/// A server env called "local" with the suite's configuration.
pub(crate) fn new_env() -> RpcEnv {
    RpcEnv::builder("local").conf(suite_conf()).build().unwrap()
}

/// [`new_env`] with `conf` set on top of the suite's configuration.
pub(crate) fn env_with(conf: &[(&str, &str)]) -> RpcEnv {
    let mut c = suite_conf();
    for (k, v) in conf {
        c.set(k, *v).unwrap();
    }
    RpcEnv::builder("local").conf(c).build().unwrap()
}

/// A server env (bound to 127.0.0.1, a free port).
pub(crate) fn server(name: &str) -> RpcEnv {
    RpcEnv::builder(name).conf(suite_conf()).build().unwrap()
}

/// A client-mode env (no server).
pub(crate) fn client(name: &str) -> RpcEnv {
    RpcEnv::builder(name)
        .client_mode(true)
        .conf(suite_conf())
        .build()
        .unwrap()
}

/// Answers after a delay, from another thread (Spark's test endpoint sleeps in the handler).
pub(crate) struct SlowEcho(pub Duration);

impl RpcEndpoint for SlowEcho {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        m: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        let delay = self.0;
        std::thread::spawn(move || {
            std::thread::sleep(delay);
            ctx.reply(m);
        });
        Ok(())
    }
}

pub(crate) struct Echo;

impl RpcEndpoint for Echo {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        m: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        ctx.reply(m);
        Ok(())
    }
}

/// Keeps every call context without answering (Spark's test endpoint sleeps 10 s instead).
pub(crate) struct Hoarder(pub Vec<RpcCallContext>);

impl RpcEndpoint for Hoarder {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        _: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        self.0.push(ctx);
        Ok(())
    }
}

/// Replies its own ref to "Hello", "Echo" to "Echo".
pub(crate) struct SelfReplier;

impl RpcEndpoint for SelfReplier {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        ctx: &EndpointCtx<String>,
        m: String,
        reply: RpcCallContext,
    ) -> HandlerResult {
        match m.as_str() {
            "Hello" => reply.reply(ctx.self_ref().cloned().ok_or("no self ref")?),
            _ => reply.reply(m),
        }
        Ok(())
    }
}

pub(crate) struct Acker;

impl RpcEndpoint for Acker {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        _: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        ctx.reply("ack".to_string());
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Oops")]
pub(crate) struct Oops;

pub(crate) struct FailureSender;

impl RpcEndpoint for FailureSender {
    type Message = String;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<String>,
        _: String,
        ctx: RpcCallContext,
    ) -> HandlerResult {
        ctx.send_failure(Oops);
        Ok(())
    }
}

/// Forwards every one-way message to a channel.
pub(crate) struct Forward(pub Sender<String>);

impl RpcEndpoint for Forward {
    type Message = String;
    fn receive(&mut self, _: &EndpointCtx<String>, m: String) -> HandlerResult {
        self.0.send(m)?;
        Ok(())
    }
}
