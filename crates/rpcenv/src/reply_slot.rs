//! The one-shot cell an ask's outcome arrives in: [`ReplySlot`], completed exactly once (by
//! the reply, a failure, the timeout, an abort or the caller's drop), and [`ReplyValue`], the
//! reply as it arrives. [`Ask`](crate::Ask), the future a caller awaits, is built on it in
//! `reply`.

use std::any::Any;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rpcenv_transport::TransportClient;

use crate::address::RpcEndpointAddress;
use crate::codec::{decode_content, split_typed_reply};
use crate::decode_scope::DecodeScope;
use crate::error::RpcError;
use crate::message::RpcReply;
use crate::pace::{spin_until, AskGaps, Pace};

/// A reply as it arrives: a moved value from a local endpoint, or the encoded content of a remote
/// reply, decoded by the asker (so refs inside it are rebound to the asker's env).
pub(crate) enum ReplyValue {
    Local {
        value: Box<dyn Any + Send>,
        type_name: &'static str,
    },
    /// `typed`: the reply's type name and its encoded value (`codec::split_typed_reply`).
    Remote { typed: Bytes, scope: DecodeScope },
}

impl ReplyValue {
    pub(crate) fn local<R: RpcReply>(value: R) -> Self {
        ReplyValue::Local {
            value: Box::new(value),
            type_name: std::any::type_name::<R>(),
        }
    }

    pub(crate) fn into_typed<R: RpcReply>(
        self,
        endpoint: &RpcEndpointAddress,
    ) -> Result<R, RpcError> {
        match self {
            ReplyValue::Local { value, type_name } => match value.downcast::<R>() {
                Ok(v) => Ok(*v),
                Err(_) => Err(RpcError::UnexpectedReplyType {
                    endpoint: endpoint.to_string(),
                    expected: std::any::type_name::<R>(),
                    actual: type_name.to_string(),
                }),
            },
            ReplyValue::Remote { typed, scope } => {
                let expected = std::any::type_name::<R>();
                let mismatch = |actual: String| RpcError::UnexpectedReplyType {
                    endpoint: endpoint.to_string(),
                    expected,
                    actual,
                };
                let (type_name, content) = split_typed_reply(&typed)
                    .map_err(|e| mismatch(format!("reply that cannot be read ({e})")))?;
                if type_name != expected {
                    return Err(mismatch(type_name.to_string()));
                }
                scope
                    .with_source(typed.clone())
                    .run(|| decode_content::<R>(content))
                    .0
                    .map_err(|e| {
                        mismatch(format!(
                            "{type_name} that does not decode as one ({})",
                            e.reason
                        ))
                    })
            }
        }
    }
}

pub(crate) type ReplyResult = Result<ReplyValue, RpcError>;

/// Undoes the sending of an ask that ended without its reply. Kept inline in the slot (not a
/// boxed closure): every remote ask registers one.
pub(crate) enum CancelHook {
    /// Withdraws request `id` from the connection it was sent on.
    Request(TransportClient, i64),
    /// Runs a function (tests watch when the hook runs).
    #[cfg(test)]
    Call(Box<dyn FnOnce() + Send>),
}

impl CancelHook {
    fn run(self) {
        match self {
            CancelHook::Request(client, id) => client.remove_rpc_request(id),
            #[cfg(test)]
            CancelHook::Call(f) => f(),
        }
    }
}

enum SlotState {
    Pending {
        waker: Option<Waker>,
        blocking_waiter: bool,
        cancel: Option<CancelHook>,
    },
    Done(ReplyResult),
    Taken,
}

/// A one-shot cell for the outcome of one ask. The first completion wins; later ones are
/// dropped (a late reply after a timeout, a reply after an abort).
pub(crate) struct ReplySlot {
    state: Mutex<SlotState>,
    cond: Condvar,
    /// When the outcome came to a caller asleep on it: how long the reply took, without the
    /// caller's wake-up (what the callers' pace learns from).
    woken_at: OnceLock<Instant>,
}

impl ReplySlot {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(ReplySlot {
            state: Mutex::new(SlotState::Pending {
                waker: None,
                blocking_waiter: false,
                cancel: None,
            }),
            cond: Condvar::new(),
            woken_at: OnceLock::new(),
        })
    }

    /// Completes the slot; returns false (and drops `result`) if it was already complete.
    pub(crate) fn complete(&self, result: ReplyResult) -> bool {
        self.finish(result, false)
    }

    /// Completes the slot from the asker's side (timeout, abort, drop): the request is withdrawn
    /// from its connection, so a late reply is discarded there.
    pub(crate) fn cancel_with(&self, result: ReplyResult) -> bool {
        self.finish(result, true)
    }

    /// Registers how to withdraw the request; runs it at once if the ask already ended.
    ///
    /// An ask can end before its hook is registered (a timeout, an abort or the caller's drop
    /// racing the send): the request is then still pending on its connection, and keeping it
    /// there would hold an entry in the connection's response map that no reply removes (and
    /// that keeps a quiet connection from being idle). Running the hook when the reply itself
    /// won is harmless: the connection already removed the request.
    pub(crate) fn set_cancel(&self, hook: CancelHook) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let SlotState::Pending { cancel, .. } = &mut *state {
            *cancel = Some(hook);
            return;
        }
        drop(state);
        hook.run();
    }

    fn finish(&self, result: ReplyResult, run_cancel: bool) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let SlotState::Pending {
            waker,
            blocking_waiter,
            cancel,
        } = &mut *state
        else {
            return false;
        };
        let waker = waker.take();
        let cancel = cancel.take();
        let notify = *blocking_waiter;
        *state = SlotState::Done(result);
        drop(state);
        if notify {
            let _ = self.woken_at.set(Instant::now());
            self.cond.notify_all();
        }
        if let Some(w) = waker {
            w.wake();
        }
        if let (true, Some(cancel)) = (run_cancel, cancel) {
            cancel.run();
        }
        true
    }

    pub(crate) fn is_complete(&self) -> bool {
        !matches!(
            *self.state.lock().unwrap_or_else(|p| p.into_inner()),
            SlotState::Pending { .. }
        )
    }

    pub(crate) fn poll(&self, cx: &mut Context<'_>) -> Poll<ReplyResult> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match &mut *state {
            SlotState::Pending { waker, .. } => {
                match waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            SlotState::Done(_) => match std::mem::replace(&mut *state, SlotState::Taken) {
                SlotState::Done(r) => Poll::Ready(r),
                _ => unreachable!(),
            },
            SlotState::Taken => Poll::Ready(Err(RpcError::Startup {
                name: String::new(),
                reason: "ask polled after completion".into(),
            })),
        }
    }

    /// Wakes the future waiting on the slot, if any, without completing it: its deadline has
    /// passed (see `ask_deadlines`), and it fails itself with its timeout error.
    pub(crate) fn wake_waiter(&self) {
        let waker = match &*self.state.lock().unwrap_or_else(|p| p.into_inner()) {
            SlotState::Pending { waker, .. } => waker.clone(),
            _ => None,
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Blocks until complete or `deadline`; `None` when the deadline passed first. While replies
    /// have recently come within `pace`'s window it first looks for the reply awake (a local
    /// endpoint or a peer on the same host often answers within a few µs, and waking a sleeping
    /// thread costs tens of µs); how long the reply took teaches `pace`.
    ///
    /// Only a caller that asks back to back (`gaps`) stays awake: one that asks at a pace of its
    /// own (heartbeats, status asks) sleeps at once, since a spin would cost it about the reply
    /// time in CPU on every ask to save a wake-up of a few µs.
    pub(crate) fn wait(
        &self,
        deadline: Option<Instant>,
        pace: &Pace,
        gaps: &AskGaps,
    ) -> Option<ReplyResult> {
        let start = Instant::now();
        let spin = if gaps.back_to_back(start) {
            pace.spin_budget()
        } else {
            Duration::ZERO
        };
        let budget = match deadline {
            Some(d) => spin.min(d.saturating_duration_since(start)),
            None => spin,
        };
        let awake = spin_until(budget, || self.is_complete());
        let outcome = self.wait_asleep(deadline);
        let took = match self.woken_at.get() {
            Some(at) if !awake => at.saturating_duration_since(start),
            _ => start.elapsed(),
        };
        pace.observe(took);
        gaps.ended(Instant::now());
        outcome
    }

    /// Sleeps on the condition variable until complete or `deadline`.
    fn wait_asleep(&self, deadline: Option<Instant>) -> Option<ReplyResult> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match &mut *state {
                SlotState::Pending {
                    blocking_waiter, ..
                } => {
                    *blocking_waiter = true;
                    match deadline {
                        None => state = self.cond.wait(state).unwrap_or_else(|p| p.into_inner()),
                        Some(d) => {
                            let now = Instant::now();
                            if now >= d {
                                return None;
                            }
                            state = self
                                .cond
                                .wait_timeout(state, d - now)
                                .unwrap_or_else(|p| p.into_inner())
                                .0;
                        }
                    }
                }
                SlotState::Done(_) => {
                    return match std::mem::replace(&mut *state, SlotState::Taken) {
                        SlotState::Done(r) => Some(r),
                        _ => unreachable!(),
                    }
                }
                SlotState::Taken => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    /// A hook registered after the ask ended runs at once.
    #[test]
    fn a_late_cancel_hook_runs_at_once() {
        for end in [true, false] {
            let slot = ReplySlot::new();
            if end {
                slot.cancel_with(Err(RpcError::EnvStopped));
            } else {
                slot.complete(Ok(ReplyValue::local(1u8)));
            }
            let ran = Arc::new(AtomicUsize::new(0));
            let r = ran.clone();
            slot.set_cancel(CancelHook::Call(Box::new(move || {
                r.fetch_add(1, Ordering::SeqCst);
            })));
            assert_eq!(ran.load(Ordering::SeqCst), 1);
        }
    }

    /// A reply, a timeout, an abort and a drop racing for one slot: exactly one wins, the
    /// cancel hook runs only when the asker's side won, and a blocked waiter always wakes.
    #[test]
    fn completions_race_and_exactly_one_wins() {
        for round in 0..2000 {
            let slot = ReplySlot::new();
            let cancelled = Arc::new(AtomicUsize::new(0));
            let c = cancelled.clone();
            slot.set_cancel(CancelHook::Call(Box::new(move || {
                c.fetch_add(1, Ordering::SeqCst);
            })));
            let start = Arc::new(Barrier::new(4));
            let wins = Arc::new(AtomicUsize::new(0));
            let reply_won = Arc::new(AtomicUsize::new(0));
            let racers: Vec<_> = (0..3)
                .map(|i| {
                    let (slot, start, wins, reply_won) =
                        (slot.clone(), start.clone(), wins.clone(), reply_won.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        let won = if i == 0 {
                            let won = slot.complete(Ok(ReplyValue::local(round)));
                            if won {
                                reply_won.fetch_add(1, Ordering::SeqCst);
                            }
                            won
                        } else {
                            slot.cancel_with(Err(RpcError::EnvStopped))
                        };
                        if won {
                            wins.fetch_add(1, Ordering::SeqCst);
                        }
                    })
                })
                .collect();
            start.wait();
            let outcome = slot
                .wait(
                    Some(Instant::now() + std::time::Duration::from_secs(10)),
                    &Pace::new(std::time::Duration::from_micros(50)),
                    &AskGaps::new(std::time::Duration::from_micros(50)),
                )
                .expect("the waiter wakes");
            for r in racers {
                r.join().unwrap();
            }
            assert_eq!(wins.load(Ordering::SeqCst), 1, "round {round}");
            let by_reply = reply_won.load(Ordering::SeqCst) == 1;
            assert_eq!(outcome.is_ok(), by_reply, "round {round}");
            assert_eq!(
                cancelled.load(Ordering::SeqCst),
                usize::from(!by_reply),
                "round {round}"
            );
        }
    }
}
