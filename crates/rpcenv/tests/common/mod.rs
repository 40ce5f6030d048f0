//! Endpoints the behaviour tests share.
#![allow(dead_code)] // each test file uses some of them

use std::sync::mpsc::Sender;

use rpcenv::{EndpointCtx, HandlerResult, RpcCallContext, RpcConf, RpcEndpoint};

/// The configuration every env of the suites starts from: empty, or read from the file named by
/// `RPCENV_SUITE_CONF`. CI runs the suites a second time with TLS settings this way, as Spark
/// runs RpcEnvSuite again as SslNettyRpcEnvSuite.
pub fn suite_conf() -> RpcConf {
    match std::env::var("RPCENV_SUITE_CONF") {
        Ok(path) => {
            RpcConf::from_file(&path).unwrap_or_else(|e| panic!("RPCENV_SUITE_CONF={path}: {e}"))
        }
        Err(_) => RpcConf::new(),
    }
}

pub struct Echo;

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
pub struct Hoarder(pub Vec<RpcCallContext>);

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
pub struct SelfReplier;

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

pub struct Acker;

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
pub struct Oops;

pub struct FailureSender;

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
pub struct Forward(pub Sender<String>);

impl RpcEndpoint for Forward {
    type Message = String;
    fn receive(&mut self, _: &EndpointCtx<String>, m: String) -> HandlerResult {
        self.0.send(m)?;
        Ok(())
    }
}
