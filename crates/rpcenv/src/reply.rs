//! [`Ask`], the future of an ask's reply that a caller awaits or blocks on, and [`Waits`], what
//! the asks of one env share. The outcome arrives in a [`ReplySlot`].

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::address::RpcEndpointAddress;
use crate::ask_deadlines::AskDeadlines;
use crate::blocking::{self, BlockedAsks};
use crate::error::{BoxError, RpcError};
use crate::message::RpcReply;
use crate::metrics::AskMetrics;
use crate::pace::{AskGaps, AwakeOrAsleep, Pace};
use crate::reply_slot::ReplySlot;
use crate::timeout::{ensure_blocking_allowed, RpcTimeout};

/// What the asks of one env share: the runtime their timers run on, and how fast replies have
/// been coming to callers blocked on them and how soon they ask again (whether such a caller
/// should stay awake).
#[derive(Debug)]
pub(crate) struct Waits {
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) pace: Pace,
    pub(crate) gaps: AskGaps,
    /// Whether a lone awaited ask looks for its reply awake, when its pace allows it.
    pub(crate) awake_or_asleep: AwakeOrAsleep,
    /// The env's ask metrics (pending asks, timeouts).
    pub(crate) metrics: AskMetrics,
    /// Asks awaited as futures whose reply has not come yet (a lone one may look for its
    /// reply awake; see [`Ask`]).
    pub(crate) awaited: AtomicUsize,
    /// The asks that block message loop threads, failed first when the env shuts down.
    pub(crate) blocked: BlockedAsks,
    /// The deadlines of the asks awaited as futures (no runtime timer per ask).
    pub(crate) deadlines: Arc<AskDeadlines>,
}

impl Waits {
    /// The waits of an env whose waiters may stay awake for at most `spin_window`.
    pub(crate) fn new(runtime: tokio::runtime::Handle, spin_window: Duration) -> Self {
        Waits {
            runtime,
            pace: Pace::for_replies(spin_window),
            gaps: AskGaps::new(spin_window),
            awake_or_asleep: AwakeOrAsleep::new(spin_window),
            metrics: AskMetrics::new(),
            awaited: AtomicUsize::new(0),
            blocked: BlockedAsks::default(),
            deadlines: Arc::default(),
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
/// It does so only while the env's asks have been answered faster that way (the env measures
/// both ways; a caller that sleeps lets one IO thread read, answer and resume everything when
/// the answering endpoint runs inline in the same process). Otherwise, and after the window,
/// it sleeps until woken.
#[must_use = "an ask does nothing useful unless its reply is awaited"]
pub struct Ask<R> {
    slot: Arc<ReplySlot>,
    endpoint: Arc<RpcEndpointAddress>,
    timeout: RpcTimeout,
    deadline: Option<Instant>,
    waits: Arc<Waits>,
    /// Its deadline is registered with the env's [`AskDeadlines`].
    registered: bool,
    /// The future waits for its reply (counted in `waits.awaited`).
    awaiting: bool,
    /// When it started to wait, if it was the env's only awaited ask then (only a lone ask
    /// reads the clock: its reply time teaches the env's pace).
    alone_since: Option<Instant>,
    /// Until when it looks for the reply awake.
    spin_until: Option<Instant>,
    /// Whether it chose to look for its reply awake, when its pace left it the choice (see
    /// [`AwakeOrAsleep`]).
    chose_awake: Option<bool>,
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
            registered: false,
            awaiting: false,
            alone_since: None,
            spin_until: None,
            chose_awake: None,
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
                let awake = self.waits.awake_or_asleep.awake();
                self.chose_awake = Some(awake);
                if awake {
                    let until = now + budget;
                    self.spin_until = Some(self.deadline.map_or(until, |d| d.min(until)));
                }
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
            let took = now.saturating_duration_since(since);
            self.waits.pace.observe(took);
            if let Some(awake) = self.chose_awake.take() {
                self.waits.awake_or_asleep.observe(awake, took);
            }
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
    /// there instead. From a handler it is as a blocking ask
    /// ([`ask_sync`](crate::RpcEndpointRef::ask_sync)): the shared message loop may run a
    /// compensating thread while it waits, and the env's shutdown fails it.
    pub fn wait(self) -> Result<R, RpcError> {
        ensure_blocking_allowed("Ask::wait")?;
        if self.slot.is_complete() {
            return self.block();
        }
        let blocking = blocking::enter(None, &self.endpoint, &self.waits.blocked, &self.slot)?;
        let outcome = self.block();
        drop(blocking);
        outcome
    }

    /// Blocks until the outcome, with no precaution of its own: the caller has taken those of a
    /// blocking ask ([`blocking::enter`]).
    pub(crate) fn block(&self) -> Result<R, RpcError> {
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
        if !self.registered {
            self.registered = true;
            self.waits.deadlines.register(
                &self.waits.runtime,
                self.timeout.duration(),
                deadline,
                &self.slot,
            );
            return Poll::Pending;
        }
        // Woken with no outcome: by the deadlines' sweeper once the deadline has passed (or
        // spuriously, before it).
        if Instant::now() >= deadline {
            self.stop_awaiting();
            // A reply that raced in since the poll above wins.
            if let Poll::Ready(r) = self.slot.poll(cx) {
                return Poll::Ready(r.and_then(|v| v.into_typed(&self.endpoint)));
            }
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

    use crate::reply_slot::ReplyValue;
    use std::task::Waker;

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
}
