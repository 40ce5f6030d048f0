//! Fuzz the master's message handling: a sequence of events decoded from the input with the
//! codec the wire uses (postcard), each a message asked over one of a few connections or sent
//! one-way, a connection closing, a task launch failing, or time passing, fed to the socket-free
//! `MasterState`. It must never panic, must answer every ask, and must keep its books: every
//! task submitted is exactly one of queued, running or done, and no task completes twice.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rpcenv::RpcAddress;
use rpcenv_cli::cluster::{Answer, LaunchFailure, Limits, MasterMsg, MasterState, Via};
use serde::Deserialize;

/// One thing that happens to the master. Workers are `u8` handles.
#[derive(Debug, Deserialize)]
enum Event {
    /// An ask over connection `connection` (`None`: from the master's own process).
    Ask {
        connection: Option<u8>,
        msg: MasterMsg<u8>,
    },
    /// A one-way message.
    Send { msg: MasterMsg<u8> },
    /// A connection closes.
    Disconnected { connection: u8 },
    /// The launch of `task` under `registration` failed: unanswered, or not accepted.
    LaunchFailed {
        registration: u64,
        task: u64,
        unanswered: bool,
    },
    /// Time passes.
    Tick { millis: u16 },
}

fn connection(n: u8) -> RpcAddress {
    RpcAddress::new("127.0.0.1", 40_000 + u16::from(n % 8))
}

/// Registration numbers are random; let small numbers in the input stand for the ones handed
/// out, so that the fuzzer reaches registered, heartbeating workers.
fn known(registration: u64, handed_out: &[u64]) -> u64 {
    match usize::try_from(registration) {
        Ok(i) if i < 16 && !handed_out.is_empty() => handed_out[i % handed_out.len()],
        _ => registration,
    }
}

fn resolve(msg: MasterMsg<u8>, handed_out: &[u64]) -> MasterMsg<u8> {
    match msg {
        MasterMsg::Heartbeat {
            id,
            registration,
            worker,
        } => MasterMsg::Heartbeat {
            id,
            registration: known(registration, handed_out),
            worker,
        },
        MasterMsg::TaskFinished {
            worker,
            registration,
            task,
            result,
        } => MasterMsg::TaskFinished {
            worker,
            registration: known(registration, handed_out),
            task,
            result,
        },
        other => other,
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        worker_timeout: Duration::from_secs(2),
        max_tasks_per_submit: 1000,
    };
    let mut state: MasterState<u8> = MasterState::new(limits, [7; 32]);
    let mut now = Instant::now();
    let mut handed_out: Vec<u64> = Vec::new();
    let mut rest = data;
    while let Ok((event, tail)) = postcard::take_from_bytes::<Event>(rest) {
        rest = tail;
        let out = match event {
            Event::Ask { connection: c, msg } => {
                let out = state.handle(
                    resolve(msg, &handed_out),
                    Via::Ask(c.map(connection)),
                    now,
                );
                if let Ok(Answer::Registered { registration }) = out.answer {
                    handed_out.push(registration);
                }
                out
            }
            Event::Send { msg } => state.handle(resolve(msg, &handed_out), Via::Send, now),
            Event::Disconnected { connection: c } => state.disconnected(&connection(c)),
            Event::LaunchFailed {
                registration,
                task,
                unanswered,
            } => state.launch_failed(
                known(registration, &handed_out),
                task,
                if unanswered {
                    LaunchFailure::Unanswered
                } else {
                    LaunchFailure::NotAccepted
                },
            ),
            Event::Tick { millis } => {
                now += Duration::from_millis(u64::from(millis));
                continue;
            }
        };
        drop(out);
        let s = state.status();
        assert_eq!(
            s.queued + s.running as u64 + s.done as u64,
            s.total,
            "every task is queued, running or done: {s:?}"
        );
        assert_eq!(s.duplicates, 0, "{s:?}");
        assert!(s.lost.len() <= 1000 && s.requeued.len() <= 1000);
    }
});
