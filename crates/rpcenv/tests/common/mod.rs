//! Endpoints the behaviour tests share.
#![allow(dead_code)] // each test file uses some of them

use rpcenv::{EndpointCtx, HandlerResult, RpcCallContext, RpcEndpoint};

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
