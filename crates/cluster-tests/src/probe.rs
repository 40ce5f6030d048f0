//! The endpoint the fault scenarios ask, and the ask loop that measures them.
//!
//! [`Echo`] answers a [`Probe`] with its arrival index (so a caller can check that asks on one
//! connection arrive in the order they were made) and as many bytes as the probe asks for.

use std::time::{Duration, Instant};

use rpcenv::{EndpointCtx, HandlerResult, RpcCallContext, RpcEndpoint, RpcEndpointRef, RpcMessage};
use serde::{Deserialize, Serialize};

/// The name the echo endpoint is registered under.
pub const ECHO: &str = "echo";

/// An ask (or, sent one-way, a message that is only counted).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probe {
    /// The caller's sequence number, returned in the reply.
    pub seq: u64,
    /// Bytes carried to the endpoint.
    pub payload: Vec<u8>,
    /// How many bytes the reply carries back.
    pub reply_bytes: u32,
}

impl RpcMessage for Probe {
    fn protocol_name() -> std::borrow::Cow<'static, str> {
        "rpcenv-cluster-tests/probe/1".into()
    }
}

/// The answer to a [`Probe`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProbeReply {
    /// The probe's sequence number.
    pub seq: u64,
    /// How many asks the endpoint had answered before this one.
    pub arrival: u64,
    /// The length of the payload that arrived.
    pub received: u64,
    /// `reply_bytes` bytes.
    pub payload: Vec<u8>,
}

/// Answers probes; counts one-way probes.
#[derive(Debug, Default)]
pub struct Echo {
    asks: u64,
    sends: u64,
}

impl RpcEndpoint for Echo {
    type Message = Probe;

    fn receive(&mut self, _: &EndpointCtx<Probe>, _: Probe) -> HandlerResult {
        self.sends += 1;
        Ok(())
    }

    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<Probe>,
        probe: Probe,
        reply: RpcCallContext,
    ) -> HandlerResult {
        let arrival = self.asks;
        self.asks += 1;
        reply.reply(ProbeReply {
            seq: probe.seq,
            arrival,
            received: probe.payload.len() as u64,
            payload: vec![0x5a; probe.reply_bytes as usize],
        });
        Ok(())
    }
}

/// The outcome of one ask.
pub type AskOutcome = Result<Duration, String>;

/// What an ask loop saw.
#[derive(Debug, Default)]
pub struct LoopReport {
    /// Each ask's round-trip time or error.
    pub outcomes: Vec<AskOutcome>,
    /// Replies whose arrival index was not above the previous reply's: asks on one connection
    /// that reached the endpoint out of the order they were made.
    pub out_of_order: u64,
}

/// Makes `asks` asks (each carrying `payload` bytes and asking for as many back): one after
/// another, or with `pipelined` all at once and then awaited in order.
pub async fn ask_loop(
    target: &RpcEndpointRef<Probe>,
    asks: u32,
    payload: usize,
    pipelined: bool,
) -> LoopReport {
    let mut report = LoopReport::default();
    let mut last_arrival = None;
    let mut pending = std::collections::VecDeque::new();
    for seq in 0..asks as u64 {
        let probe = Probe {
            seq,
            payload: vec![0xa5; payload],
            reply_bytes: payload as u32,
        };
        pending.push_back((seq, Instant::now(), target.ask::<ProbeReply>(probe)));
        if pipelined && seq + 1 < asks as u64 {
            continue;
        }
        while let Some((seq, start, ask)) = pending.pop_front() {
            let outcome = match ask.await {
                Ok(r) if r.seq == seq && r.received == payload as u64 => {
                    if last_arrival.is_some_and(|last| r.arrival <= last) {
                        report.out_of_order += 1;
                    }
                    last_arrival = Some(r.arrival);
                    Ok(start.elapsed())
                }
                Ok(r) => Err(format!(
                    "reply to ask {seq} was for ask {} with {} bytes",
                    r.seq, r.received
                )),
                Err(e) => Err(e.to_string()),
            };
            report.outcomes.push(outcome);
        }
    }
    report
}
