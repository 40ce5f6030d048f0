//! The reply path of an ask: a one-shot [`ReplySlot`] completed exactly once (by the reply, a
//! failure, the timeout, an abort or the caller's drop), and [`Ask`], the future the caller awaits.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rpcenv_transport::TransportClient;

use crate::address::RpcEndpointAddress;
use crate::codec::{decode_content, split_typed_reply};
use crate::decode_scope::DecodeScope;
use crate::error::{BoxError, RpcError};
use crate::message::RpcReply;
use crate::metrics::AskMetrics;
use crate::pace::{spin_until, Pace};
use crate::timeout::{ensure_blocking_allowed, RpcTimeout};

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

    fn into_typed<R: RpcReply>(self, endpoint: &RpcEndpointAddress) -> Result<R, RpcError> {
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

    fn poll(&self, cx: &mut Context<'_>) -> Poll<ReplyResult> {
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

    /// Blocks until complete or `deadline`; `None` when the deadline passed first. While replies
    /// have recently come within `pace`'s window it first looks for the reply awake (a local
    /// endpoint or a peer on the same host often answers within a few µs, and waking a sleeping
    /// thread costs tens of µs); how long the reply took teaches `pace`.
    ///
    /// Only a caller that asks back to back (`gaps`) stays awake: one that asks at a pace of its
    /// own (heartbeats, status asks) sleeps at once, since a spin would cost it about the reply
    /// time in CPU on every ask to save a wake-up of a few µs.
    fn wait(&self, deadline: Option<Instant>, pace: &Pace, gaps: &AskGaps) -> Option<ReplyResult> {
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

/// When the env's callers blocked on replies last had one, and how soon they ask again after
/// it: whether they ask back to back.
#[derive(Debug)]
pub(crate) struct AskGaps {
    epoch: Instant,
    /// When the last wait ended, in ns after `epoch` (0: none yet).
    last_end_ns: AtomicU64,
    /// The gaps between a wait's end and the next wait's start.
    pace: Pace,
}

impl AskGaps {
    /// Gaps within `window` count as back to back.
    pub(crate) fn new(window: Duration) -> Self {
        AskGaps {
            epoch: Instant::now(),
            last_end_ns: AtomicU64::new(0),
            pace: Pace::for_replies(window),
        }
    }

    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// A caller starts to wait at `start`: learns the gap since the last wait ended, and answers
    /// whether callers have been asking back to back.
    fn back_to_back(&self, start: Instant) -> bool {
        let last = self.last_end_ns.load(Ordering::Relaxed);
        if last != 0 {
            let gap = self.ns(start).saturating_sub(last);
            self.pace.observe(Duration::from_nanos(gap));
        }
        !self.pace.spin_budget().is_zero()
    }

    /// A wait ended at `at`.
    fn ended(&self, at: Instant) {
        self.last_end_ns
            .store(self.ns(at).max(1), Ordering::Relaxed);
    }
}

/// What the asks of one env share: the runtime their timers run on, and how fast replies have
/// been coming to callers blocked on them and how soon they ask again (whether such a caller
/// should stay awake).
#[derive(Debug)]
pub(crate) struct Waits {
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) pace: Pace,
    pub(crate) gaps: AskGaps,
    /// The env's ask metrics (pending asks, timeouts).
    pub(crate) metrics: AskMetrics,
    /// Asks awaited as futures whose reply has not come yet (a lone one may look for its
    /// reply awake; see [`Ask`]).
    pub(crate) awaited: AtomicUsize,
}

impl Waits {
    /// The waits of an env whose waiters may stay awake for at most `spin_window`.
    pub(crate) fn new(runtime: tokio::runtime::Handle, spin_window: Duration) -> Self {
        Waits {
            runtime,
            pace: Pace::for_replies(spin_window),
            gaps: AskGaps::new(spin_window),
            metrics: AskMetrics::new(),
            awaited: AtomicUsize::new(0),
        }
    }
}

/// The pending reply of an ask: a future of the reply, or of the error that ended the wait.
///
/// The message was already posted when `ask` returned. The future is bounded by its
/// [`RpcTimeout`] (the env's `rpc.askTimeout` unless one was given); it can be awaited on any
/// executor. Dropping it cancels the ask: a reply that arrives later is discarded. Use
/// [`abort_handle`](Self::abort_handle) to fail it from elsewhere, or [`wait`](Self::wait) to block
/// on it from a plain thread.
///
/// Awaited in a tokio task by a caller that asks back to back, alone (no other ask of the env
/// awaited at the time), while replies have been coming within `rpc.messageLoop.spinMicros`,
/// the future first looks for its reply between the runtime's polls of its IO driver
/// (`tokio::task::yield_now`) instead of letting the IO thread sleep: the reply is then read by
/// a thread that is awake, not one woken from an idle core (tens of µs on a virtual machine).
/// Otherwise, and after the window, it sleeps until woken.
#[must_use = "an ask does nothing useful unless its reply is awaited"]
pub struct Ask<R> {
    slot: Arc<ReplySlot>,
    endpoint: Arc<RpcEndpointAddress>,
    timeout: RpcTimeout,
    deadline: Option<Instant>,
    waits: Arc<Waits>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The future waits for its reply (counted in `waits.awaited`).
    awaiting: bool,
    /// When it started to wait, if it was the env's only awaited ask then (only a lone ask
    /// reads the clock: its reply time teaches the env's pace).
    alone_since: Option<Instant>,
    /// Until when it looks for the reply awake.
    spin_until: Option<Instant>,
    _reply: PhantomData<fn() -> R>,
}

impl<R: RpcReply> Ask<R> {
    pub(crate) fn new(
        slot: Arc<ReplySlot>,
        endpoint: Arc<RpcEndpointAddress>,
        timeout: RpcTimeout,
        waits: Arc<Waits>,
    ) -> Self {
        let deadline = timeout.deadline();
        waits.metrics.pending.increment(1.0);
        Ask {
            slot,
            endpoint,
            timeout,
            deadline,
            waits,
            sleep: None,
            awaiting: false,
            alone_since: None,
            spin_until: None,
            _reply: PhantomData,
        }
    }

    /// The future starts to wait for its reply: counts it as awaited, and decides whether it
    /// looks for the reply awake (see [`Ask`]).
    fn start_awaiting(&mut self) {
        self.awaiting = true;
        if self.waits.awaited.fetch_add(1, Ordering::Relaxed) != 0 {
            return;
        }
        let now = Instant::now();
        self.alone_since = Some(now);
        // Only inside a tokio task, where `yield_now` defers the wake-up until the runtime has
        // polled its IO driver (elsewhere, `block_on` say, it would wake at once: a busy loop).
        if self.waits.gaps.back_to_back(now) && tokio::task::try_id().is_some() {
            let budget = self.waits.pace.spin_budget();
            if !budget.is_zero() {
                let until = now + budget;
                self.spin_until = Some(self.deadline.map_or(until, |d| d.min(until)));
            }
        }
    }

    /// The future's wait ended (a reply or a failure): how long a lone ask's reply took teaches
    /// the env's pace.
    fn stop_awaiting(&mut self) {
        if std::mem::take(&mut self.awaiting) {
            self.waits.awaited.fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(since) = self.alone_since.take() {
            let now = Instant::now();
            self.waits
                .pace
                .observe(now.saturating_duration_since(since));
            self.waits.gaps.ended(now);
        }
    }

    /// A handle that can fail this ask from any thread, e.g. when the caller gives up.
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle {
            slot: self.slot.clone(),
            endpoint: self.endpoint.clone(),
        }
    }

    /// Fails the ask with `reason`; a reply arriving later is discarded.
    pub fn abort(&self, reason: impl Into<BoxError>) {
        self.abort_handle().abort(reason);
    }

    /// The timeout bounding this ask.
    pub fn timeout(&self) -> &RpcTimeout {
        &self.timeout
    }

    /// Blocks the calling thread until the reply, a failure or the timeout.
    ///
    /// Returns [`RpcError::BlockingInAsyncContext`] on a tokio runtime thread; await the `Ask`
    /// there instead.
    pub fn wait(self) -> Result<R, RpcError> {
        ensure_blocking_allowed("Ask::wait")?;
        match self
            .slot
            .wait(self.deadline, &self.waits.pace, &self.waits.gaps)
        {
            Some(r) => r.and_then(|v| v.into_typed(&self.endpoint)),
            None => Err(self.expire()),
        }
    }

    /// Fails the slot with the timeout error (unless a reply won the race) and returns the
    /// outcome to report.
    fn expire(&self) -> RpcError {
        let error = self.timeout.timeout_error(&self.endpoint);
        self.waits.metrics.timeouts.increment(1);
        // If a reply raced in, it is discarded: the caller has already been told of the timeout.
        self.slot
            .cancel_with(Err(self.timeout.timeout_error(&self.endpoint)));
        error
    }
}

impl<R: RpcReply> Future for Ask<R> {
    type Output = Result<R, RpcError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Poll::Ready(r) = self.slot.poll(cx) {
            self.stop_awaiting();
            return Poll::Ready(r.and_then(|v| v.into_typed(&self.endpoint)));
        }
        if !self.awaiting {
            self.start_awaiting();
        }
        if let Some(until) = self.spin_until {
            if Instant::now() < until {
                // Polled again once the runtime has run its other tasks and polled its IO
                // driver (the waker is deferred, not woken at once): the thread stays awake.
                let _ = std::pin::pin!(tokio::task::yield_now()).poll(cx);
                return Poll::Pending;
            }
            self.spin_until = None;
        }
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        if self.sleep.is_none() {
            let _entered = self.waits.runtime.enter();
            self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline.into())));
        }
        let sleep = self.sleep.as_mut().expect("sleep was just set");
        if sleep.as_mut().poll(cx).is_ready() {
            // A reply may have arrived between the two polls; it wins.
            if let Poll::Ready(r) = self.slot.poll(cx) {
                self.stop_awaiting();
                return Poll::Ready(r.and_then(|v| v.into_typed(&self.endpoint)));
            }
            self.stop_awaiting();
            return Poll::Ready(Err(self.expire()));
        }
        Poll::Pending
    }
}

impl<R> Drop for Ask<R> {
    fn drop(&mut self) {
        self.waits.metrics.pending.decrement(1.0);
        if self.awaiting {
            self.waits.awaited.fetch_sub(1, Ordering::Relaxed);
        }
        // Cancel: the endpoint's reply, if it ever comes, finds the slot complete and is dropped.
        if !self.slot.is_complete() {
            self.slot.cancel_with(Err(RpcError::Aborted {
                endpoint: self.endpoint.to_string(),
                reason: Arc::new(Cancelled),
            }));
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the ask was dropped by its caller")]
struct Cancelled;

/// Fails an [`Ask`] from any thread (Spark's `askAbortable(...).abort`).
#[derive(Clone)]
pub struct AbortHandle {
    slot: Arc<ReplySlot>,
    endpoint: Arc<RpcEndpointAddress>,
}

impl AbortHandle {
    /// Fails the ask with [`RpcError::Aborted`] carrying `reason`. Does nothing if the ask has
    /// already completed.
    pub fn abort(&self, reason: impl Into<BoxError>) {
        let reason: BoxError = reason.into();
        self.slot.cancel_with(Err(RpcError::Aborted {
            endpoint: self.endpoint.to_string(),
            reason: Arc::from(reason),
        }));
    }
}

impl std::fmt::Debug for AbortHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AbortHandle({})", self.endpoint)
    }
}

impl<R> std::fmt::Debug for Ask<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ask({}, {:?})", self.endpoint, self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Callers asking again within the window count as back to back (they may spin for their
    /// replies); callers at a pace of their own (an ask a millisecond) do not.
    #[test]
    fn only_back_to_back_callers_count_as_such() {
        let window = Duration::from_micros(50);
        let gaps = AskGaps::new(window);
        let mut t = Instant::now();
        for _ in 0..8 {
            gaps.ended(t);
            t += Duration::from_millis(1);
            gaps.back_to_back(t);
        }
        assert!(!gaps.back_to_back(t), "an ask a millisecond");
        for _ in 0..16 {
            gaps.ended(t);
            t += Duration::from_micros(5);
            gaps.back_to_back(t);
        }
        assert!(gaps.back_to_back(t), "asks 5 µs after each reply");
    }
    use std::sync::atomic::AtomicUsize;
    use std::sync::Barrier;

    fn awaited_ask(waits: &Arc<Waits>) -> (Arc<ReplySlot>, Ask<u8>) {
        let slot = ReplySlot::new();
        let ask = Ask::new(
            slot.clone(),
            Arc::new(RpcEndpointAddress::new(None, "test")),
            RpcTimeout::new(Duration::from_secs(60), "rpc.askTimeout"),
            waits.clone(),
        );
        (slot, ask)
    }

    /// An awaited ask counts as awaited (what tells a lone one that it may look for its reply
    /// awake) from its first wait until it ends: answered, or dropped unanswered.
    #[test]
    fn an_awaited_ask_counts_until_it_ends() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let waits = Arc::new(Waits::new(rt.handle().clone(), Duration::from_micros(50)));
        let awaited = || waits.awaited.load(Ordering::Relaxed);
        rt.block_on(async {
            let (slot, mut answered) = awaited_ask(&waits);
            let (_unanswered_slot, mut dropped) = awaited_ask(&waits);
            let (_never_polled_slot, never_polled) = awaited_ask(&waits);
            let noop = &mut Context::from_waker(Waker::noop());
            assert!(Pin::new(&mut answered).poll(noop).is_pending());
            assert!(Pin::new(&mut dropped).poll(noop).is_pending());
            assert_eq!(awaited(), 2);
            slot.complete(Ok(ReplyValue::local(7u8)));
            assert_eq!(answered.await.unwrap(), 7);
            assert_eq!(awaited(), 1);
            drop(dropped);
            drop(never_polled);
            assert_eq!(awaited(), 0);
        });
    }

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
