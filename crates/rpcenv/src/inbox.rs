//! The per-endpoint [`Inbox`]: a FIFO of messages and the state machine that decides who may
//! process them.
//!
//! The rules (Spark's Inbox):
//! - `OnStart` is the first message and runs alone; `OnStop` is the last and runs alone.
//! - A one-at-a-time endpoint is processed by at most one thread at a time (`active <= 1`).
//! - A concurrent endpoint may be processed by several threads once `on_start` has run, until
//!   `stop` disables concurrency again; then every thread but the last leaves, and the last one
//!   runs what remains and `on_stop`.
//! - After `stop`, posts are refused and handed back to the poster, which reports them (an ask
//!   fails with `EndpointStopped`); nothing is dropped silently.
//!
//! The inbox knows no threads: a [`Scheduler`] is told when it needs a thread, and a thread calls
//! [`Inbox::process`]. With [`Scheduler::Manual`] the tests drive it by hand, deterministically.
//!
//! Cost per message: one short lock to post. A processor swaps the whole queue out under one lock
//! and runs the batch with the endpoint's lock held once, so a busy endpoint costs no per-message
//! lock on the processing side.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::blocking::{self, WaitNode};
use crate::call_context::{with_handler_scope, CallOutcome, RpcCallContext};
use crate::codec::decode_content;
use crate::decode_scope::DecodeScope;
use crate::endpoint::EndpointCtx;
use crate::error::{panic_message, Failure, FailureKind, HandlerResult, RpcError, SharedError};
use crate::flavour::{Behaviour, Callbacks};
use crate::mailbox::{Event, InboxControl, InboxMessage, Mailbox};
use crate::metrics::{seconds, EndpointMetrics};
use crate::pace::{spin_until, Pace};
use crate::run_queue::RunQueue;
use crate::slow_handler::SlowHandler;
use crate::stats::{EndpointCounters, EndpointStats};
use rpcenv_transport::{BudgetHold, TransportClient};

/// Something a message loop thread can run.
pub(crate) trait Runnable: Send + Sync {
    /// Runs until the runnable lets the thread go; returns whether the thread should look for
    /// its next job awake for a moment before it sleeps (see `RunQueue::pop`).
    fn run(self: Arc<Self>) -> bool;
}

/// How an inbox gets a thread.
#[derive(Clone)]
pub(crate) enum Scheduler {
    /// Queue it on a message loop.
    Loop(Arc<RunQueue<Job>>),
    /// Nobody: the owner calls [`Inbox::process_now`] (tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Manual,
}

/// Work for a message loop thread.
pub(crate) enum Job {
    Run(Arc<dyn Runnable>),
    Exit,
}

/// Which threads handle an inbox's messages.
pub(crate) struct Threads {
    /// Where the inbox gets a message loop thread.
    pub(crate) scheduler: Scheduler,
    /// How many may process at once (a concurrent endpoint, between `on_start` and `stop`).
    pub(crate) max: usize,
    /// Messages from the network are handled on the IO thread that read them while the
    /// endpoint is idle ([`RpcEndpoint::inline`](crate::RpcEndpoint::inline)).
    pub(crate) inline: bool,
}

/// What a post asks of the poster.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Claim {
    /// Nothing: a thread has the inbox already (or the endpoint has not started).
    None,
    /// Get the inbox a message loop thread.
    Loop,
    /// Run it on this IO thread: an inline endpoint, idle. That saves the hand-off to a loop
    /// thread: most of a message's cost at a light load (one ask at a time) and, at a heavy one,
    /// the wake-ups and the core a loop thread would take from the IO threads and the callers on
    /// a small machine. The IO thread handles the requests of one read one after another as it
    /// decodes them. Until 2026-12 messages closer together than 10 µs went to the loop instead,
    /// to be handled beside the IO thread; in alternated rounds on 2 cores every message inline
    /// was as fast for pipelined asks over one connection (W2, 297k asks/s) when the machine was
    /// in its fast mode and 2.2x as fast in its slow one, and 1.8x as fast for 32 peers' asks
    /// (W6, 388k against 213k), with the loop thread not waiting for more (see `process`).
    Inline,
}

impl Scheduler {
    fn schedule(&self, job: Arc<dyn Runnable>) {
        // The loop only goes away after every inbox on it has terminated.
        if let Scheduler::Loop(jobs) = self {
            jobs.push(Job::Run(job));
        }
    }

    fn is_manual(&self) -> bool {
        matches!(self, Scheduler::Manual)
    }

    /// Whether other inboxes wait for a thread of this loop.
    fn others_waiting(&self) -> bool {
        match self {
            Scheduler::Loop(jobs) => !jobs.is_empty(),
            Scheduler::Manual => false,
        }
    }
}

/// The endpoint and its context, dropped once `on_stop` has run.
struct Core<B: Behaviour> {
    behaviour: B,
    ctx: EndpointCtx<B::Message>,
}

struct State<M, C> {
    queue: VecDeque<InboxMessage<M>>,
    /// An emptied buffer kept for the next swap, so steady traffic allocates nothing.
    spare: VecDeque<InboxMessage<M>>,
    /// `OnStop` is queued: no more posts.
    stopped: bool,
    /// Several threads may process (a concurrent endpoint between `on_start` and `stop`).
    concurrent: bool,
    /// Threads processing or scheduled to.
    active: usize,
    /// `on_stop` has run.
    terminated: bool,
    core: Option<Arc<C>>,
    /// Messages posted so far (wrapping), mirrored in `Inbox::posted`.
    posted: usize,
    /// Messages taken from the queue so far (wrapping): the `posted` count of the last one taken.
    taken: usize,
    /// The budget holds of one-way messages posted past `capacity`, with their `posted` count:
    /// released once a batch after the one that took them starts, or the queue has run empty
    /// (the message was handled). Kept beside the queue, not in it, so that a message costs no
    /// more to queue than before there were holds.
    holds: VecDeque<(usize, BudgetHold)>,
    /// When the last batch was taken (what the inbox's pace learns from).
    last_batch: Option<Instant>,
    /// When the oldest queued message was posted (stamped when the queue was empty): the queue
    /// time of a batch, measured once per batch.
    oldest: Option<Instant>,
}

impl<M, C> State<M, C> {
    /// The holds of messages taken from the queue so far (to be dropped outside the lock: a
    /// release may wake a connection). Empty, without allocating, when there are none.
    fn handled_holds(&mut self) -> Vec<BudgetHold> {
        let mut done = Vec::new();
        while let Some((posted, _)) = self.holds.front() {
            // Wrapping counts: the message is taken when `taken` has reached its `posted`.
            if (self.taken.wrapping_sub(*posted) as isize) < 0 {
                break;
            }
            done.extend(self.holds.pop_front().map(|(_, h)| h));
        }
        done
    }
}

/// Told when an inbox has terminated (`on_stop` ran), so shutdown can wait for all of them.
pub(crate) trait TerminationListener: Send + Sync {
    fn terminated(&self, name: &str);
}

/// The inbox of one endpoint.
pub(crate) struct Inbox<B: Behaviour> {
    name: Arc<str>,
    me: Weak<Self>,
    state: Mutex<State<B::Message, Core<B>>>,
    /// Messages posted so far (wrapping): read without the lock by a processor that waits for a
    /// batch to fill.
    posted: AtomicUsize,
    /// How closely messages follow each other: whether a processor stays awake for the next.
    pace: Pace,
    scheduler: Scheduler,
    max_threads: usize,
    /// See [`Threads::inline`].
    inline: bool,
    /// Messages from the network beyond this pause the connections they come from.
    capacity: usize,
    env_stopped: Arc<AtomicBool>,
    listener: Option<Arc<dyn TerminationListener>>,
    /// The endpoint in the graph of handlers blocked in `ask_sync`.
    node: Arc<WaitNode>,
    /// The endpoint's metric handles (registered once, here).
    metrics: EndpointMetrics,
    /// What `RpcEnv::stats` reads.
    counters: EndpointCounters,
    slow: SlowHandler,
}

/// Handler calls timed together (processing time, busy time, the slow handler warning): the
/// clock is read once per run of this many calls of one batch.
const TIMED_RUN: u32 = 32;

/// Batches a processor runs before it yields its thread to other inboxes waiting for one.
const ROUNDS_BEFORE_YIELD: usize = 8;

/// When a small batch (fewer messages than this) is followed by another small one, the processor
/// waits while the sender keeps posting (within the spin window), so that a fast sender fills a
/// larger batch instead of contending for the queue's lock with every message.
const SMALL_BATCH: usize = 16;

/// Spins between two looks of a gathering processor (see `Linger::gather`).
const GATHER_SPIN: u32 = 32;

/// The processor's waiting policy between batches. Whether it may stay awake at all is the
/// inbox's [`Pace`]: only while batches have been following each other within the spin window
/// (`rpc.messageLoop.spinMicros`). Then:
///
/// - after a batch of one message, a processor whose queue ran empty keeps looking at it for up
///   to the window before giving its thread back, so that the next request of a caller that
///   waits for each reply meets a running thread instead of waking one (tens of µs on an idle
///   core). A lone message is the mark of such a caller: its next message comes because of our
///   answer, within the window.
/// - after a batch of several, it gives the thread back at once. Those messages come from
///   callers that do not wait for each answer (many peers, or windows of asks): the next ones
///   come as they will, and a thread spinning for them only takes the CPU from the threads that
///   read them off the network. On a busy two-core server (32 peers, 8 asks each) this spin cost
///   about a tenth of the throughput. Asleep, the loop lets them gather into a larger batch.
/// - after a small batch it lets a fast sender fill the next one.
///
/// At a light load (heartbeats, status asks) it gives the thread back at once and costs no CPU
/// while it waits.
struct Linger {
    enabled: bool,
    last_small: bool,
    /// The last batch was a lone message.
    last_lone: bool,
}

impl Linger {
    /// A processor that may wait between batches (`enabled`), or one that never does.
    fn new(enabled: bool) -> Self {
        Linger {
            enabled,
            last_small: false,
            last_lone: false,
        }
    }

    /// A batch of `n` messages was handled.
    fn handled(&mut self, n: usize) {
        self.last_small = n < SMALL_BATCH;
        self.last_lone = n == 1;
    }

    /// Whether the thread should look for more work awake once this inbox lets it go: only after
    /// a lone message (see [`Linger`]).
    fn stay_awake(&self) -> bool {
        self.enabled && self.last_lone
    }

    /// Whether to let the queue fill before taking it: the last batch was small, and so is
    /// what waits now (a sender is posting about as fast as the batches are handled).
    fn should_gather(&self, queued: usize) -> bool {
        self.enabled && self.last_small && queued > 0 && queued < SMALL_BATCH
    }

    /// Waits while `posted` keeps rising, at most the pace's budget: it looks every
    /// [`GATHER_SPIN`] spins, long enough for a sender on another core to post a few more, and
    /// stops at the first look that finds none.
    fn gather(&mut self, pace: &Pace, posted: &AtomicUsize) {
        self.last_small = false;
        let budget = pace.spin_budget();
        if budget.is_zero() {
            return;
        }
        let start = Instant::now();
        let mut seen = posted.load(Ordering::Relaxed);
        loop {
            for _ in 0..GATHER_SPIN {
                std::hint::spin_loop();
            }
            let now = posted.load(Ordering::Relaxed);
            if now == seen || start.elapsed() >= budget {
                return;
            }
            seen = now;
        }
    }

    /// The queue was empty when `posted` read `seen`: waits until a message is posted (true: look
    /// again), or the pace's budget has passed or other inboxes wait for the thread (false:
    /// leave). It watches `posted` without the queue's lock.
    fn idle(
        &mut self,
        pace: &Pace,
        scheduler: &Scheduler,
        posted: &AtomicUsize,
        seen: usize,
    ) -> bool {
        if !self.stay_awake() {
            return false;
        }
        let mut others = false;
        let posted_again = spin_until(pace.spin_budget(), || {
            others = scheduler.others_waiting();
            others || posted.load(Ordering::Relaxed) != seen
        });
        posted_again && !others
    }
}

impl<B: Behaviour> Inbox<B> {
    /// A new inbox whose first message is `OnStart`. Nothing runs until [`install`](Self::install).
    pub(crate) fn new(
        name: Arc<str>,
        threads: Threads,
        capacity: usize,
        spin: Duration,
        slow_handler: Duration,
        env_stopped: Arc<AtomicBool>,
        listener: Option<Arc<dyn TerminationListener>>,
    ) -> Arc<Self> {
        let metrics = EndpointMetrics::new(&name);
        let mut queue = VecDeque::new();
        queue.push_back(InboxMessage::Event(Event::OnStart));
        let node = WaitNode::new(name.clone(), !B::CONCURRENT);
        Arc::new_cyclic(|me| Inbox {
            node,
            name,
            me: me.clone(),
            state: Mutex::new(State {
                queue,
                spare: VecDeque::new(),
                stopped: false,
                concurrent: false,
                active: 0,
                terminated: false,
                core: None,
                posted: 0,
                taken: 0,
                holds: VecDeque::new(),
                last_batch: None,
                oldest: None,
            }),
            posted: AtomicUsize::new(0),
            pace: Pace::new(spin),
            scheduler: threads.scheduler,
            max_threads: threads.max.max(1),
            inline: threads.inline,
            capacity: capacity.max(1),
            env_stopped,
            listener,
            metrics,
            counters: EndpointCounters::default(),
            slow: SlowHandler::new(slow_handler),
        })
    }

    /// Hands the inbox its endpoint and schedules `on_start`.
    pub(crate) fn install(&self, behaviour: B, ctx: EndpointCtx<B::Message>) {
        let schedule = {
            let mut st = self.lock();
            st.core = Some(Arc::new(Core { behaviour, ctx }));
            self.claim_thread(&mut st)
        };
        if schedule {
            self.schedule();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<B::Message, Core<B>>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a new thread should be scheduled; if so, counts it as active.
    fn claim_thread(&self, st: &mut State<B::Message, Core<B>>) -> bool {
        let limit = if st.concurrent { self.max_threads } else { 1 };
        if self.scheduler.is_manual() || st.core.is_none() || st.active >= limit {
            return false;
        }
        st.active += 1;
        true
    }

    fn schedule(&self) {
        if let Some(me) = self.me.upgrade() {
            self.scheduler.schedule(me);
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Queues a message; a refused message (the endpoint is stopped) is handed back.
    pub(crate) fn post(
        &self,
        message: InboxMessage<B::Message>,
    ) -> Result<(), InboxMessage<B::Message>> {
        self.post_from(message, None)
    }

    /// Queues a message; one that came over a connection names it and its size in bytes
    /// (`feeder`). A message for a full inbox (`capacity` queued) waits within that
    /// connection's byte budget (`rpc.io.maxQueuedBytesPerConnection`): a request's responder
    /// holds its bytes until it is answered, a one-way message past `capacity` holds its bytes
    /// until handled. So a full inbox does not stop its connection by itself: replies arriving
    /// on it keep being delivered, and a handler that asks back over it completes; the
    /// connection stops being read only once its budget is exhausted (TCP then slows the
    /// sender).
    pub(crate) fn post_from(
        &self,
        message: InboxMessage<B::Message>,
        feeder: Option<(&TransportClient, usize)>,
    ) -> Result<(), InboxMessage<B::Message>> {
        if self.enqueue(message, feeder, false)? != Claim::None {
            self.schedule();
        }
        Ok(())
    }

    /// Queues a message (see [`post_from`](Self::post_from)); says whether the caller has
    /// claimed a thread for the inbox and must provide one. A message `from_network` to an
    /// inline endpoint may be claimed for the calling IO thread.
    fn enqueue(
        &self,
        message: InboxMessage<B::Message>,
        feeder: Option<(&TransportClient, usize)>,
        from_network: bool,
    ) -> Result<Claim, InboxMessage<B::Message>> {
        let claimed = {
            let mut st = self.lock();
            if st.stopped {
                return Err(message);
            }
            if st.queue.is_empty() {
                st.oldest = Some(Instant::now());
            }
            let one_way = matches!(message, InboxMessage::OneWay(_));
            st.queue.push_back(message);
            st.posted = st.posted.wrapping_add(1);
            self.posted.store(st.posted, Ordering::Relaxed);
            if let Some((c, len)) = feeder {
                if one_way && st.queue.len() > self.capacity {
                    self.hold(&mut st, c, len);
                }
            }
            self.metrics.received.increment(1);
            self.metrics.depth.set(st.queue.len() as f64);
            match self.claim_thread(&mut st) {
                false => Claim::None,
                true if from_network && self.inline => Claim::Inline,
                true => Claim::Loop,
            }
        };
        Ok(claimed)
    }

    /// The one-way message just queued past `capacity` came over `c`: its `len` bytes count in
    /// `c`'s budget until it is handled (a request's responder already holds its own).
    #[cold]
    fn hold(&self, st: &mut State<B::Message, Core<B>>, c: &TransportClient, len: usize) {
        if st.holds.is_empty() {
            tracing::debug!(endpoint = %self.name, peer = %c.remote_addr(), "inbox full: one-way messages wait within their connection's byte budget");
        }
        let posted = st.posted;
        st.holds.push_back((posted, c.hold(len)));
    }

    /// The error a refused post is reported with.
    pub(crate) fn refusal(&self) -> RpcError {
        if self.env_stopped.load(Ordering::Acquire) {
            RpcError::EnvStopped
        } else {
            RpcError::EndpointStopped {
                name: self.name.to_string(),
            }
        }
    }

    /// Reports a message from the network that the stopped endpoint refused.
    fn refused(&self, refused: InboxMessage<B::Message>) {
        let error = self.refusal();
        if matches!(refused, InboxMessage::OneWay(_)) {
            tracing::warn!(endpoint = %self.name(), error = %error, "remote one-way message refused");
        }
        refused.reject(error);
    }

    /// Queues `OnStop` after the messages already queued; later posts are refused. Returns false
    /// if the inbox was already stopped.
    pub(crate) fn stop(&self) -> bool {
        let schedule = {
            let mut st = self.lock();
            if st.stopped {
                return false;
            }
            st.stopped = true;
            st.concurrent = false;
            st.queue.push_back(InboxMessage::Event(Event::OnStop));
            st.posted = st.posted.wrapping_add(1);
            self.posted.store(st.posted, Ordering::Relaxed);
            self.claim_thread(&mut st)
        };
        if schedule {
            self.schedule();
        }
        true
    }

    #[cfg(test)]
    pub(crate) fn is_terminated(&self) -> bool {
        self.lock().terminated
    }

    #[cfg(test)]
    fn active_threads(&self) -> usize {
        self.lock().active
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.lock().queue.is_empty()
    }

    /// Processes messages on the calling thread as a thread the scheduler did not count (tests).
    #[cfg(test)]
    pub(crate) fn process_now(&self) {
        self.lock().active += 1;
        self.process();
    }

    /// Runs queued messages until the queue is empty (or yields the thread after a while). The
    /// caller must hold one of the `active` counts. Returns whether the thread should stay awake
    /// for a moment for its next job ([`Linger::stay_awake`]).
    pub(crate) fn process(&self) -> bool {
        // An inline endpoint's loop thread never waits for more: the next message from the
        // network runs on its IO thread as soon as the endpoint is idle, with no thread to wake,
        // and a loop thread spinning for it only takes a core from the IO threads that read it
        // (32 peers' asks, W6: 1.4x as fast without, every message inline either way). Local
        // messages to it are handled on the loop as usual, without that wait.
        let waits = !self.scheduler.is_manual() && !self.inline;
        self.process_on(Linger::new(waits), false)
    }

    /// Runs one batch on the IO thread that read its first message (an inline endpoint that
    /// was idle); whatever is queued after it goes to the message loop. The caller must hold
    /// one of the `active` counts.
    fn process_inline(&self) {
        self.process_on(Linger::new(false), true);
    }

    /// [`process`](Self::process), waiting between batches as `linger` says; an `io_thread`
    /// runs one batch only.
    fn process_on(&self, mut linger: Linger, io_thread: bool) -> bool {
        let mut batch: VecDeque<InboxMessage<B::Message>> = VecDeque::new();
        let mut rounds = 0;
        loop {
            let (core, queued, taken, released) = {
                let mut st = self.lock();
                if st.spare.capacity() < batch.capacity() {
                    st.spare = std::mem::take(&mut batch);
                }
                let alone = st.concurrent || st.active <= 1;
                if alone && linger.should_gather(st.queue.len()) {
                    drop(st);
                    linger.gather(&self.pace, &self.posted);
                    st = self.lock();
                }
                if alone && st.queue.is_empty() && st.core.is_some() && !st.stopped {
                    // Nothing to do: wait a little for the next message before giving the thread
                    // back, unless other inboxes wait for it.
                    let seen = st.posted;
                    drop(st);
                    if linger.idle(&self.pace, &self.scheduler, &self.posted, seen) {
                        continue;
                    }
                    st = self.lock();
                }
                if !alone || st.queue.is_empty() || st.core.is_none() {
                    // Not alone while concurrency is off, or nothing to do: leave (what this
                    // thread took has been handled).
                    st.active -= 1;
                    let handled = st.handled_holds();
                    drop(st);
                    drop(handled);
                    return linger.stay_awake();
                }
                if io_thread && rounds > 0 {
                    // An IO thread serves every connection it reads: what came after its batch
                    // goes to the message loop, keeping our active count for that thread.
                    drop(st);
                    self.schedule();
                    return false;
                }
                if rounds >= ROUNDS_BEFORE_YIELD && self.scheduler.others_waiting() {
                    // Fairness: requeue behind other inboxes, keeping our active count (the
                    // thread's next job is already waiting).
                    drop(st);
                    self.schedule();
                    return false;
                }
                // The interval between batches is what the pace learns from.
                let now = Instant::now();
                if let Some(last) = st.last_batch.replace(now) {
                    self.pace.observe(now - last);
                }
                // The batches taken before this one have been handled: their holds go.
                let released = st.handled_holds();
                if B::CONCURRENT {
                    // One at a time, so that other threads can take the rest once on_start ran.
                    batch.extend(st.queue.pop_front());
                } else {
                    batch = std::mem::take(&mut st.spare);
                    std::mem::swap(&mut st.queue, &mut batch);
                }
                st.taken = st.taken.wrapping_add(batch.len());
                let queued = st
                    .oldest
                    .map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
                st.oldest = (!st.queue.is_empty()).then_some(now);
                self.metrics.depth.set(st.queue.len() as f64);
                self.metrics.queue_time.record(seconds(queued));
                (
                    st.core.clone().expect("checked above"),
                    queued,
                    now,
                    released,
                )
            };
            drop(released);
            rounds += 1;
            let handled = batch.len();
            let _span = tracing::trace_span!("endpoint", name = %self.name).entered();
            let mut busy = Duration::ZERO;
            // The batch's clock read (taken under the lock) starts the first run.
            let mut start = taken;
            let mut calls = 0u32;
            let _running = blocking::running(&self.node);
            core.behaviour.with(|callbacks| {
                while let Some(mut message) = batch.pop_front() {
                    let kind = message.kind();
                    if batch.is_empty() {
                        // The batch's last answer is written by this thread (see
                        // `RpcCallContext::write_answer_now`).
                        if let InboxMessage::Rpc(_, ctx) = &mut message {
                            ctx.write_answer_now();
                        }
                    }
                    self.deliver(callbacks, &core.ctx, message);
                    // The clock is read once per run of up to TIMED_RUN calls (the end of one run
                    // is the start of the next): at a light load every call is timed alone, and
                    // a busy endpoint pays one clock read per TIMED_RUN messages.
                    calls += 1;
                    if calls == TIMED_RUN || batch.is_empty() {
                        let end = Instant::now();
                        let took = end - start;
                        start = end;
                        busy += took;
                        self.metrics
                            .processing_time
                            .record_many(seconds(took / calls), calls as usize);
                        self.slow.check(
                            &self.name,
                            std::any::type_name::<B::Message>(),
                            kind,
                            calls,
                            took,
                            end,
                        );
                        calls = 0;
                    }
                }
            });
            self.counters.batch(handled, busy, queued);
            linger.handled(handled);
        }
    }

    fn deliver(
        &self,
        cb: &mut dyn Callbacks<B::Message>,
        ctx: &EndpointCtx<B::Message>,
        message: InboxMessage<B::Message>,
    ) {
        match message {
            InboxMessage::OneWay(m) => {
                let r = guarded(|| cb.receive(ctx, m));
                self.report(cb, ctx, r);
            }
            InboxMessage::Rpc(m, reply) => {
                let reply = *reply;
                let current = reply.target().map(|t| t.id());
                let r = with_handler_scope(
                    current,
                    || guarded(|| cb.receive_and_reply(ctx, m, reply)),
                    |r| match r {
                        Ok(()) => CallOutcome::Returned,
                        Err(Problem::Error(e)) => CallOutcome::Failed(Failure::from_error(
                            FailureKind::Handler,
                            e.clone(),
                        )),
                        Err(Problem::Panic(msg)) => CallOutcome::Failed(Failure::new(
                            FailureKind::Panic,
                            format!("handler panicked: {msg}"),
                        )),
                    },
                );
                if r.is_ok() {
                    self.metrics.answered.increment(1);
                } else {
                    self.metrics.failed.increment(1);
                }
                self.report(cb, ctx, r);
            }
            InboxMessage::Event(event) => self.deliver_event(cb, ctx, event),
        }
    }

    fn deliver_event(
        &self,
        cb: &mut dyn Callbacks<B::Message>,
        ctx: &EndpointCtx<B::Message>,
        event: Event,
    ) {
        match event {
            Event::OnStart => {
                let r = guarded(|| cb.on_start(ctx));
                self.report(cb, ctx, r);
                self.started();
            }
            Event::OnStop => {
                ctx.mark_stopping();
                let r = guarded(|| cb.on_stop(ctx));
                self.report(cb, ctx, r);
                self.terminate();
            }
            Event::Connected(a) => {
                let r = guarded(|| cb.on_connected(ctx, &a));
                self.report(cb, ctx, r);
            }
            Event::Disconnected(a) => {
                let r = guarded(|| cb.on_disconnected(ctx, &a));
                self.report(cb, ctx, r);
            }
            Event::NetworkError(e, a) => {
                let r = guarded(|| cb.on_network_error(ctx, &e, &a));
                self.report(cb, ctx, r);
            }
        }
    }

    /// Hands a failed callback's error to `on_error`; an error of `on_error` itself is logged.
    fn report(
        &self,
        cb: &mut dyn Callbacks<B::Message>,
        ctx: &EndpointCtx<B::Message>,
        result: Result<(), Problem>,
    ) {
        let error = match result {
            Ok(()) => return,
            Err(Problem::Error(e)) => match e.downcast_ref::<RpcError>() {
                Some(RpcError::NotImplemented { endpoint, method }) => RpcError::NotImplemented {
                    endpoint: endpoint.clone(),
                    method,
                },
                _ => RpcError::Handler {
                    endpoint: self.name.to_string(),
                    source: e,
                },
            },
            Err(Problem::Panic(message)) => {
                self.metrics.panics.increment(1);
                RpcError::Panicked {
                    endpoint: self.name.to_string(),
                    message,
                }
            }
        };
        match guarded(|| cb.on_error(ctx, error)) {
            Ok(()) => {}
            Err(Problem::Error(e)) => {
                tracing::error!(endpoint = %self.name, error = %e, "on_error failed")
            }
            Err(Problem::Panic(m)) => {
                tracing::error!(endpoint = %self.name, panic = %m, "on_error panicked")
            }
        }
    }

    /// `on_start` has run: a concurrent endpoint may now use more threads.
    fn started(&self) {
        let extra = {
            let mut st = self.lock();
            if !B::CONCURRENT || st.stopped {
                return;
            }
            st.concurrent = true;
            let mut n = 0;
            while n < st.queue.len() && self.claim_thread(&mut st) {
                n += 1;
            }
            n
        };
        for _ in 0..extra {
            self.schedule();
        }
    }

    /// `on_stop` has run: drop the endpoint (and the cycle through its own ref) and tell the
    /// dispatcher.
    fn terminate(&self) {
        let (core, leftover, holds) = {
            let mut st = self.lock();
            st.terminated = true;
            // Nothing can follow OnStop (posts are refused once it is queued), but be thorough.
            (
                st.core.take(),
                std::mem::take(&mut st.queue),
                std::mem::take(&mut st.holds),
            )
        };
        drop(holds);
        for m in leftover {
            m.reject(self.refusal());
        }
        // The endpoint itself is dropped when the running batch lets go of its clone.
        drop(core);
        if let Some(listener) = &self.listener {
            listener.terminated(&self.name);
        }
    }
}

impl<B: Behaviour> Runnable for Inbox<B> {
    fn run(self: Arc<Self>) -> bool {
        self.process()
    }
}

impl<B: Behaviour> Mailbox<B::Message> for Inbox<B> {
    fn post(&self, message: InboxMessage<B::Message>) -> Result<(), InboxMessage<B::Message>> {
        Inbox::post(self, message)
    }

    fn refusal(&self) -> RpcError {
        Inbox::refusal(self)
    }

    fn control(&self) -> &dyn InboxControl {
        self
    }
}

impl<B: Behaviour> InboxControl for Inbox<B> {
    fn stop(&self) -> bool {
        Inbox::stop(self)
    }

    fn post_event(&self, event: &Event) {
        // A stopped endpoint no longer hears network events.
        let _ = self.post(InboxMessage::Event(event.clone()));
    }

    fn endpoint_name(&self) -> Arc<str> {
        self.name.clone()
    }

    fn wait_node(&self) -> &Arc<WaitNode> {
        &self.node
    }

    fn stats(&self) -> EndpointStats {
        let depth = self.lock().queue.len();
        self.counters.snapshot(&self.name, depth)
    }

    fn post_remote(&self, content: &[u8], reply: Option<RpcCallContext>, scope: DecodeScope) {
        let (decoded, scope) = scope.run(|| decode_content::<B::Message>(content));
        let message = match decoded {
            Ok(m) => m,
            Err(e) => {
                let error = RpcError::BadRequest {
                    peer: scope.peer(),
                    message: format!(
                        "endpoint {} cannot decode the message: {}",
                        self.name(),
                        e.reason
                    ),
                };
                tracing::warn!(endpoint = %self.name(), error = %error, "undecodable message");
                if let Some(ctx) = reply {
                    ctx.fail(error);
                }
                return;
            }
        };
        let message = match reply {
            Some(ctx) => InboxMessage::Rpc(message, Box::new(ctx)),
            None => InboxMessage::OneWay(message),
        };
        // This is an IO thread: the connection's task.
        match self.enqueue(message, scope.client().map(|c| (c, content.len())), true) {
            Ok(Claim::Inline) => self.process_inline(),
            Ok(Claim::Loop) => self.schedule(),
            Ok(Claim::None) => {}
            Err(refused) => self.refused(refused),
        }
    }
}

/// A failed callback: an error it returned, or a panic.
enum Problem {
    Error(SharedError),
    Panic(String),
}

fn guarded(f: impl FnOnce() -> HandlerResult) -> Result<(), Problem> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Problem::Error(Arc::from(e))),
        Err(payload) => Err(Problem::Panic(panic_message(&*payload))),
    }
}

#[cfg(test)]
mod tests {
    //! Spark's InboxSuite, driven by hand with a manual scheduler.
    use super::*;
    use crate::address::RpcAddress;
    use crate::endpoint::RpcEndpoint;
    use crate::endpoint_ref::RpcEndpointRef;
    use crate::flavour::Sequential;
    use crate::reply_slot::ReplySlot;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Weak;

    #[derive(Default)]
    struct Record {
        started: bool,
        stopped: bool,
        received: Vec<String>,
        asked: Vec<String>,
        connected: Vec<RpcAddress>,
        disconnected: Vec<RpcAddress>,
        network_errors: Vec<(String, RpcAddress)>,
        errors: Vec<String>,
    }

    /// Spark's TestRpcEndpoint: records every callback.
    #[derive(Clone, Default)]
    struct TestEndpoint(Arc<Mutex<Record>>);

    impl TestEndpoint {
        fn record(&self) -> std::sync::MutexGuard<'_, Record> {
            self.0.lock().unwrap()
        }
    }

    impl RpcEndpoint for TestEndpoint {
        type Message = String;
        fn on_start(&mut self, _: &EndpointCtx<String>) -> HandlerResult {
            self.record().started = true;
            Ok(())
        }
        fn receive(&mut self, _: &EndpointCtx<String>, m: String) -> HandlerResult {
            if m == "oom" {
                panic!("out of memory (simulated)");
            }
            self.record().received.push(m);
            Ok(())
        }
        fn receive_and_reply(
            &mut self,
            _: &EndpointCtx<String>,
            m: String,
            reply: RpcCallContext,
        ) -> HandlerResult {
            self.record().asked.push(m.clone());
            reply.reply(m);
            Ok(())
        }
        fn on_error(&mut self, _: &EndpointCtx<String>, e: RpcError) -> HandlerResult {
            self.record().errors.push(e.to_string());
            Ok(())
        }
        fn on_connected(&mut self, _: &EndpointCtx<String>, a: &RpcAddress) -> HandlerResult {
            self.record().connected.push(a.clone());
            Ok(())
        }
        fn on_disconnected(&mut self, _: &EndpointCtx<String>, a: &RpcAddress) -> HandlerResult {
            self.record().disconnected.push(a.clone());
            Ok(())
        }
        fn on_network_error(
            &mut self,
            _: &EndpointCtx<String>,
            e: &RpcError,
            a: &RpcAddress,
        ) -> HandlerResult {
            self.record()
                .network_errors
                .push((e.to_string(), a.clone()));
            Ok(())
        }
        fn on_stop(&mut self, _: &EndpointCtx<String>) -> HandlerResult {
            self.record().stopped = true;
            Ok(())
        }
    }

    /// Only a batch of one message keeps the thread looking for the next one awake: the mark of
    /// a caller that waits for each answer. After a batch of several it leaves at once.
    #[test]
    fn only_a_lone_message_keeps_the_thread_awake() {
        // A pace that grants a spin, and a message already posted since the queue was seen
        // empty: a processor that looks at all finds it at its first look.
        let pace = Pace::new(Duration::from_secs(60));
        assert!(!pace.spin_budget().is_zero());
        let posted = AtomicUsize::new(1);
        let mut linger = Linger::new(true);

        linger.handled(1);
        assert!(linger.stay_awake());
        assert!(linger.idle(&pace, &Scheduler::Manual, &posted, 0));

        for several in [2, 16, 500] {
            linger.handled(several);
            assert!(!linger.stay_awake(), "after a batch of {several}");
            assert!(
                !linger.idle(&pace, &Scheduler::Manual, &posted, 0),
                "after a batch of {several} the processor does not look"
            );
        }

        // A processor that may not wait (a manual scheduler, an inline endpoint) never keeps a
        // thread.
        let mut off = Linger::new(false);
        off.handled(1);
        assert!(!off.stay_awake());
    }

    /// A loop thread that has handled a lone message stays awake for the next one, but not an
    /// inline endpoint's: its next message from the network runs on the IO thread that reads
    /// it, with no thread to wake.
    #[test]
    fn an_inline_endpoints_loop_thread_does_not_wait_for_more() {
        for inline in [false, true] {
            let ep = TestEndpoint::default();
            let jobs = Arc::new(RunQueue::default());
            // What a loop thread does: take the job the post queued, run it.
            let run_next = || match jobs.pop(false) {
                Job::Run(inbox) => inbox.run(),
                Job::Exit => panic!("no inbox was scheduled"),
            };
            let inbox = test_inbox(
                ep.clone(),
                Threads {
                    scheduler: Scheduler::Loop(jobs.clone()),
                    max: 1,
                    inline,
                },
            );
            run_next(); // on_start
            inbox.post(InboxMessage::OneWay("hi".into())).ok().unwrap();
            let stays_awake = run_next();
            assert_eq!(ep.record().received, vec!["hi"]);
            assert_eq!(stays_awake, !inline, "inline: {inline}");
        }
    }

    fn test_runtime() -> tokio::runtime::Handle {
        crate::runtime::shared_runtime(1)
    }

    fn manual_inbox(ep: TestEndpoint) -> Arc<Inbox<Sequential<TestEndpoint>>> {
        test_inbox(
            ep,
            Threads {
                scheduler: Scheduler::Manual,
                max: 1,
                inline: false,
            },
        )
    }

    /// An inbox for `ep` on `threads`, with `on_start` queued.
    fn test_inbox(ep: TestEndpoint, threads: Threads) -> Arc<Inbox<Sequential<TestEndpoint>>> {
        let inbox = Inbox::new(
            "test".into(),
            threads,
            1024,
            Duration::from_micros(50),
            Duration::from_secs(1),
            Arc::new(AtomicBool::new(false)),
            None,
        );
        let self_ref = RpcEndpointRef::local_for_tests(inbox.clone());
        let ctx = EndpointCtx::new(self_ref, Weak::<()>::new(), test_runtime());
        inbox.install(Sequential::new(ep), ctx);
        inbox
    }

    #[test]
    fn post() {
        let ep = TestEndpoint::default();
        let inbox = manual_inbox(ep.clone());
        inbox.post(InboxMessage::OneWay("hi".into())).ok().unwrap();
        inbox.process_now();
        assert!(inbox.is_empty());
        assert_eq!(ep.record().received, vec!["hi"]);
        inbox.stop();
        inbox.process_now();
        assert!(inbox.is_terminated());
        assert!(ep.record().started && ep.record().stopped);
        // Once stopped, posts are handed back for the poster to report.
        assert!(inbox.post(InboxMessage::OneWay("late".into())).is_err());
        assert!(matches!(inbox.refusal(), RpcError::EndpointStopped { .. }));
    }

    #[test]
    fn post_with_reply() {
        let ep = TestEndpoint::default();
        let inbox = manual_inbox(ep.clone());
        let slot = ReplySlot::new();
        let ctx = RpcCallContext::new(
            crate::call_context::ReplyTarget::Local(slot.clone()),
            None,
            "test".into(),
        );
        inbox
            .post(InboxMessage::Rpc("hi".into(), Box::new(ctx)))
            .ok()
            .unwrap();
        inbox.process_now();
        assert_eq!(ep.record().asked, vec!["hi"]);
        assert!(slot.is_complete());
    }

    #[test]
    fn post_multiple_threads() {
        let ep = TestEndpoint::default();
        let inbox = manual_inbox(ep.clone());
        let dropped = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..10)
            .map(|_| {
                let inbox = inbox.clone();
                let dropped = dropped.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        if inbox.post(InboxMessage::OneWay("hi".into())).is_err() {
                            dropped.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        inbox.process_now();
        inbox.stop();
        inbox.process_now();
        for t in threads {
            t.join().unwrap();
        }
        inbox.process_now();
        let received = ep.record().received.len();
        assert_eq!(received + dropped.load(Ordering::SeqCst), 1000);
        assert!(ep.record().started && ep.record().stopped);
    }

    #[test]
    fn post_associated() {
        let ep = TestEndpoint::default();
        let inbox = manual_inbox(ep.clone());
        let addr = RpcAddress::new("localhost", 11111);
        inbox
            .post(InboxMessage::Event(Event::Connected(addr.clone())))
            .ok()
            .unwrap();
        inbox.process_now();
        assert_eq!(ep.record().connected, vec![addr]);
    }

    #[test]
    fn post_disassociated() {
        let ep = TestEndpoint::default();
        let inbox = manual_inbox(ep.clone());
        let addr = RpcAddress::new("localhost", 11111);
        inbox
            .post(InboxMessage::Event(Event::Disconnected(addr.clone())))
            .ok()
            .unwrap();
        inbox.process_now();
        assert_eq!(ep.record().disconnected, vec![addr]);
    }

    #[test]
    fn post_association_error() {
        let ep = TestEndpoint::default();
        let inbox = manual_inbox(ep.clone());
        let addr = RpcAddress::new("localhost", 11111);
        let cause = Arc::new(RpcError::Startup {
            name: "peer".into(),
            reason: "Oops".into(),
        });
        inbox
            .post(InboxMessage::Event(Event::NetworkError(
                cause,
                addr.clone(),
            )))
            .ok()
            .unwrap();
        inbox.process_now();
        let errors = &ep.record().network_errors;
        assert_eq!(errors.len(), 1);
        assert!(errors[0].0.contains("Oops"));
        assert_eq!(errors[0].1, addr);
    }

    /// SPARK-32738: a fatal error in a handler must not leave the inbox "active" forever. In Rust
    /// the analog is a panic: it is caught, reported to on_error, and the count returns to zero.
    #[test]
    fn spark_32738_should_reduce_the_number_of_active_threads_when_fatal_error_happens() {
        let ep = TestEndpoint::default();
        let inbox = manual_inbox(ep.clone());
        inbox.post(InboxMessage::OneWay("oom".into())).ok().unwrap();
        inbox.process_now();
        assert_eq!(inbox.active_threads(), 0);
        let errors = ep.record().errors.clone();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].contains("out of memory (simulated)"),
            "{errors:?}"
        );
        // The inbox keeps working.
        inbox
            .post(InboxMessage::OneWay("after".into()))
            .ok()
            .unwrap();
        inbox.process_now();
        assert_eq!(ep.record().received, vec!["after"]);
        assert_eq!(inbox.active_threads(), 0);
    }
}
