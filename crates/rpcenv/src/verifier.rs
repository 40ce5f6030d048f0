//! The `endpoint-verifier`: the endpoint every server env runs so that other envs can check,
//! before they build a ref, that an endpoint exists and takes the message type they expect.

use std::borrow::Cow;
use std::sync::Weak;

use serde::{Deserialize, Serialize};

use crate::call_context::RpcCallContext;
use crate::dispatcher::Dispatcher;
use crate::endpoint::{EndpointCtx, RpcEndpoint};
use crate::error::HandlerResult;
use crate::message::RpcMessage;

/// The verifier's name, as in Spark.
pub const VERIFIER_NAME: &str = "endpoint-verifier";

/// The protocol name that matches any endpoint (an existence check only).
pub(crate) const ANY_PROTOCOL: &str = "*";

/// A question to the verifier.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum VerifierRequest {
    /// Does `name` exist, and does it speak `protocol`?
    CheckExistence { name: String, protocol: String },
}

impl RpcMessage for VerifierRequest {
    fn protocol_name() -> Cow<'static, str> {
        Cow::Borrowed("rpcenv/endpoint-verifier/1")
    }
}

/// The verifier's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Existence {
    Found,
    NotFound,
    WrongType { actual: String },
}

/// The verifier endpoint; it answers from the registry of its env's dispatcher.
pub(crate) struct Verifier {
    dispatcher: Weak<Dispatcher>,
}

impl Verifier {
    pub(crate) fn new(dispatcher: Weak<Dispatcher>) -> Self {
        Verifier { dispatcher }
    }
}

impl RpcEndpoint for Verifier {
    type Message = VerifierRequest;

    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<VerifierRequest>,
        message: VerifierRequest,
        reply: RpcCallContext,
    ) -> HandlerResult {
        let VerifierRequest::CheckExistence { name, protocol } = message;
        let dispatcher = self
            .dispatcher
            .upgrade()
            .ok_or("the env is shutting down")?;
        let answer = match dispatcher.protocol_of(&name) {
            None => Existence::NotFound,
            Some(actual) if actual == protocol || protocol == ANY_PROTOCOL => Existence::Found,
            Some(actual) => Existence::WrongType {
                actual: actual.into_owned(),
            },
        };
        reply.reply(answer);
        Ok(())
    }
}
