//! The [`Dispatcher`]: the registry of an env's endpoints (name -> inbox) and the message loops
//! whose threads run the inboxes.
//!
//! Normal endpoints share one loop of `rpc.netty.dispatcher.numThreads` threads
//! (`dispatcher-event-loop-N`); an isolated endpoint gets a loop of its own (`dispatcher-<name>`),
//! so a busy shared pool cannot starve it and it cannot starve the others.
//!
//! The dispatcher also makes the refs of its endpoints (sharing the env's `RefDefaults`) and
//! answers typed lookups by name: what `RpcEnv::endpoint_ref` and the rebinding of a received
//! ref (`ref_codec`) both use.

use std::any::Any;
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt};

use crate::address::RpcEndpointAddress;
use crate::blocking::LoopThreads;
use crate::endpoint::EndpointCtx;
use crate::endpoint_ref::{RefDefaults, Route, RpcEndpointRef};
use crate::error::RpcError;
use crate::flavour::Behaviour;
use crate::inbox::{Inbox, Job, Scheduler, TerminationListener, Threads};
use crate::mailbox::{Event, InboxControl};
use crate::message::RpcMessage;
use crate::pace::Pace;
use crate::run_queue::RunQueue;
use crate::stats::EndpointStats;

/// Whether the current thread is a message loop thread (a handler is running on it).
pub(crate) use crate::blocking::on_message_loop_thread;

/// How long a compensating thread stays without work before it leaves (when no handler of its
/// loop blocks any more).
const EXTRA_IDLE: Duration = Duration::from_millis(500);

/// A pool of threads running inboxes that need a thread.
pub(crate) struct MessageLoop {
    me: Weak<MessageLoop>,
    name: String,
    /// The inboxes waiting for a thread (and the requests to exit).
    jobs: Arc<RunQueue<Job>>,
    /// How closely jobs follow each other: whether a thread that ran out of them looks for the
    /// next one awake for a moment before it sleeps.
    pace: Pace,
    /// When the loop was started, and when a thread last took a job (ns after that).
    started: Instant,
    last_job_ns: AtomicU64,
    /// The threads running (taken off when they end), and the signal that one did.
    threads: Mutex<Vec<ThreadId>>,
    ended: Condvar,
    size: usize,
    /// At most this many compensating threads run while handlers block.
    max_extra: usize,
    /// Compensating threads running.
    extra: AtomicUsize,
    /// Threads of this loop blocked in an `ask_sync`.
    blocked: AtomicUsize,
}

impl MessageLoop {
    /// Starts `size` threads named `name-N` (`numbered`) or `name`; while handlers block in
    /// `ask_sync`, up to `max_extra` more (`name-extra`).
    /// A thread out of jobs stays awake for the next while they come within `spin`
    /// (`rpc.messageLoop.spinMicros`).
    pub(crate) fn start(
        name: &str,
        numbered: bool,
        size: usize,
        max_extra: usize,
        spin: Duration,
    ) -> std::io::Result<Arc<Self>> {
        let message_loop = Arc::new_cyclic(|me| MessageLoop {
            me: me.clone(),
            name: name.to_string(),
            jobs: Arc::new(RunQueue::default()),
            pace: Pace::new(spin),
            started: Instant::now(),
            last_job_ns: AtomicU64::new(0),
            threads: Mutex::new(Vec::with_capacity(size)),
            ended: Condvar::new(),
            size,
            max_extra,
            extra: AtomicUsize::new(0),
            blocked: AtomicUsize::new(0),
        });
        for i in 0..size {
            let thread_name = if numbered {
                format!("{name}-{i}")
            } else {
                name.to_string()
            };
            if let Err(e) = message_loop.spawn(thread_name, false) {
                message_loop.signal_exit();
                message_loop.join();
                return Err(e);
            }
        }
        Ok(message_loop)
    }

    /// Starts a thread of the loop. It is detached (its resources go back when it ends, even if
    /// nobody is there to join it: a stopped isolated endpoint's loop ends on its own thread)
    /// and listed in `threads` while it runs, which is what [`join`](Self::join) waits on.
    fn spawn(&self, thread_name: String, extra: bool) -> std::io::Result<()> {
        let me = self
            .me
            .upgrade()
            .expect("a loop spawns threads while it exists");
        // Listed before it starts, so that a join never misses it.
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let spawned = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || {
                let _ = rx.recv();
                let _listed = Listed(me.clone());
                crate::blocking::set_loop_thread(me.clone());
                if extra {
                    me.run_extra();
                } else {
                    let mut look = false;
                    while let Job::Run(inbox) = me.next_job(look) {
                        look = inbox.run();
                    }
                }
            })?;
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(spawned.thread().id());
        let _ = tx.send(());
        Ok(())
    }

    /// The next job for a thread of the loop. While jobs have been following each other within
    /// the spin window (a busy loop), a thread whose last job asked for it (`look`: an inbox
    /// that handled a lone message, see `inbox::Linger`) and finds none looks again awake for a
    /// moment before it sleeps ([`RunQueue::pop`]); at a light load it sleeps at once, and the
    /// poster's wake-up is the only cost.
    fn next_job(&self, look: bool) -> Job {
        let job = self.jobs.pop(look && !self.pace.spin_budget().is_zero());
        let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let last = self.last_job_ns.swap(now, Ordering::Relaxed);
        self.pace
            .observe(Duration::from_nanos(now.saturating_sub(last)));
        job
    }

    /// A compensating thread: runs jobs until it has been idle for a while and no more threads
    /// of the loop block than compensating threads remain, or the loop ends.
    fn run_extra(&self) {
        loop {
            match self.jobs.pop_timeout(EXTRA_IDLE) {
                Some(Job::Run(inbox)) => {
                    inbox.run();
                }
                Some(Job::Exit) => break,
                None => {
                    let extra = self.extra.load(Ordering::Acquire);
                    if self.blocked.load(Ordering::Acquire) < extra
                        && self
                            .extra
                            .compare_exchange(extra, extra - 1, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                    {
                        return;
                    }
                }
            }
        }
        self.extra.fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn scheduler(&self) -> Scheduler {
        Scheduler::Loop(self.jobs.clone())
    }

    /// Asks every thread (compensating ones included) to exit once the jobs queued before are
    /// done.
    fn signal_exit(&self) {
        for _ in 0..self.size + self.max_extra {
            self.jobs.push(Job::Exit);
        }
    }

    /// Whether every thread of the loop has ended.
    fn is_finished(&self) -> bool {
        self.threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Waits for the threads to end (never for the calling thread itself).
    fn join(&self) {
        let me = std::thread::current().id();
        let mut threads = self.threads.lock().unwrap_or_else(|p| p.into_inner());
        while threads.iter().any(|t| *t != me) {
            threads = self.ended.wait(threads).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Takes its thread off its loop's list when the thread ends (returns or unwinds).
struct Listed(Arc<MessageLoop>);

impl Drop for Listed {
    fn drop(&mut self) {
        let me = std::thread::current().id();
        let mut threads = self.0.threads.lock().unwrap_or_else(|p| p.into_inner());
        threads.retain(|t| *t != me);
        drop(threads);
        self.0.ended.notify_all();
    }
}

impl LoopThreads for MessageLoop {
    fn blocking_started(&self) {
        let blocked = self.blocked.fetch_add(1, Ordering::AcqRel) + 1;
        loop {
            let extra = self.extra.load(Ordering::Acquire);
            if extra >= blocked || extra >= self.max_extra {
                return;
            }
            if self
                .extra
                .compare_exchange(extra, extra + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let name = format!("{}-extra", self.name);
                if let Err(e) = self.spawn(name, true) {
                    self.extra.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!(error = %e, "cannot start a compensating message loop thread");
                }
                return;
            }
        }
    }

    fn blocking_ended(&self) {
        self.blocked.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Registration {
    control: Arc<dyn InboxControl>,
    /// The endpoint's `RpcEndpointRef<M>`, for typed lookups.
    endpoint_ref: Box<dyn Any + Send + Sync>,
    protocol: Cow<'static, str>,
}

/// Counts endpoints that have not yet run `on_stop`.
struct Live {
    count: Mutex<usize>,
    cond: Condvar,
}

impl TerminationListener for Live {
    fn terminated(&self, name: &str) {
        tracing::debug!(endpoint = name, "endpoint stopped");
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *n -= 1;
        if *n == 0 {
            self.cond.notify_all();
        }
    }
}

/// Ends a dedicated loop when its endpoint has stopped.
struct DedicatedTermination {
    live: Arc<Live>,
    message_loop: Arc<MessageLoop>,
}

impl TerminationListener for DedicatedTermination {
    fn terminated(&self, name: &str) {
        self.message_loop.signal_exit();
        self.live.terminated(name);
    }
}

/// Where an endpoint's messages run, as its trait says at registration.
pub(crate) struct Placement {
    /// Threads of a message loop of its own; 0 shares the env's.
    pub(crate) dedicated_threads: usize,
    /// Network messages run on the IO thread that read them while it is idle (`inline`).
    pub(crate) inline: bool,
}

/// The registry of endpoints and the loops that run them.
pub(crate) struct Dispatcher {
    endpoints: RwLock<HashMap<Arc<str>, Registration>>,
    /// What the refs of this env share; its `env_stopped` flag is the dispatcher's own.
    defaults: Arc<RefDefaults>,
    shared_loop: Arc<MessageLoop>,
    dedicated: Mutex<Vec<Arc<MessageLoop>>>,
    live: Arc<Live>,
    inbox_capacity: usize,
    /// `rpc.slowHandler.threshold`.
    slow_handler: Duration,
}

impl Dispatcher {
    /// Starts the shared message loop of `threads` threads (`dispatcher-event-loop-N`).
    /// While its handlers block in `ask_sync`, it may run up to `max_extra` more threads.
    pub(crate) fn start_shared_loop(
        threads: usize,
        max_extra: usize,
        spin: Duration,
    ) -> std::io::Result<Arc<MessageLoop>> {
        MessageLoop::start(
            "dispatcher-event-loop",
            true,
            threads.max(1),
            max_extra,
            spin,
        )
    }

    /// A dispatcher whose endpoints run on `shared_loop` unless isolated, and whose refs share
    /// `defaults`.
    pub(crate) fn new(
        shared_loop: Arc<MessageLoop>,
        inbox_capacity: usize,
        slow_handler: Duration,
        defaults: Arc<RefDefaults>,
    ) -> Self {
        Dispatcher {
            endpoints: RwLock::new(HashMap::new()),
            defaults,
            shared_loop,
            dedicated: Mutex::new(Vec::new()),
            live: Arc::new(Live {
                count: Mutex::new(0),
                cond: Condvar::new(),
            }),
            inbox_capacity,
            slow_handler,
        }
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.defaults.env_stopped.load(Ordering::Acquire)
    }

    /// What the refs of this env share.
    pub(crate) fn defaults(&self) -> &Arc<RefDefaults> {
        &self.defaults
    }

    /// The full address of the endpoint `name` of this env, for error messages.
    pub(crate) fn endpoint_address(&self, name: &str) -> RpcEndpointAddress {
        RpcEndpointAddress::new(self.defaults.sender.clone(), name)
    }

    /// Registers an endpoint under `name` and schedules its `on_start`.
    pub(crate) fn register<B: Behaviour>(
        &self,
        name: &str,
        behaviour: B,
        placement: Placement,
        make_ctx: impl FnOnce(RpcEndpointRef<B::Message>) -> EndpointCtx<B::Message>,
    ) -> Result<RpcEndpointRef<B::Message>, RpcError> {
        self.reap_dedicated();
        let mut endpoints = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        if self.is_stopped() {
            return Err(RpcError::EnvStopped);
        }
        if endpoints.contains_key(name) {
            return Err(RpcError::AlreadyRegistered {
                name: name.to_string(),
            });
        }
        let (scheduler, max_threads, listener): (_, _, Arc<dyn TerminationListener>) =
            if placement.dedicated_threads > 0 {
                let threads = if B::CONCURRENT {
                    placement.dedicated_threads
                } else {
                    1
                };
                let message_loop = MessageLoop::start(
                    &format!("dispatcher-{name}"),
                    false,
                    threads,
                    0,
                    self.defaults.waits.pace.window(),
                )
                .map_err(|e| RpcError::Startup {
                    name: name.to_string(),
                    reason: format!("cannot start the endpoint's message loop: {e}"),
                })?;
                self.dedicated
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(message_loop.clone());
                let listener = Arc::new(DedicatedTermination {
                    live: self.live.clone(),
                    message_loop: message_loop.clone(),
                });
                (message_loop.scheduler(), threads, listener)
            } else {
                (
                    self.shared_loop.scheduler(),
                    self.shared_loop.size,
                    self.live.clone(),
                )
            };
        let name: Arc<str> = name.into();
        let inbox = Inbox::<B>::new(
            name.clone(),
            Threads {
                scheduler,
                max: max_threads,
                inline: placement.inline,
            },
            self.inbox_capacity,
            self.defaults.waits.pace.window(),
            self.slow_handler,
            self.defaults.env_stopped.clone(),
            Some(listener),
        );
        let endpoint_ref = RpcEndpointRef::new(
            self.endpoint_address(&name),
            Route::Local(inbox.clone()),
            self.defaults.clone(),
        );
        let ctx = make_ctx(endpoint_ref.clone());
        *self.live.count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        endpoints.insert(
            name,
            Registration {
                control: inbox.clone(),
                endpoint_ref: Box::new(endpoint_ref.clone()),
                protocol: B::Message::protocol_name(),
            },
        );
        drop(endpoints);
        inbox.install(behaviour, ctx);
        Ok(endpoint_ref)
    }

    /// Forgets the loops of isolated endpoints that have stopped and whose threads have ended.
    fn reap_dedicated(&self) {
        self.dedicated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|l| !l.is_finished());
    }

    /// The ref of a registered endpoint. Fails with [`RpcError::EndpointNotFound`], or
    /// [`RpcError::MessageTypeMismatch`] naming both types when `M` is not its message type.
    pub(crate) fn lookup<M: RpcMessage>(&self, name: &str) -> Result<RpcEndpointRef<M>, RpcError> {
        let endpoints = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        let reg = endpoints
            .get(name)
            .ok_or_else(|| RpcError::EndpointNotFound {
                uri: self.endpoint_address(name).to_string(),
            })?;
        reg.endpoint_ref
            .downcast_ref::<RpcEndpointRef<M>>()
            .cloned()
            .ok_or_else(|| RpcError::MessageTypeMismatch {
                uri: self.endpoint_address(name).to_string(),
                expected: M::protocol_name().into_owned(),
                actual: reg.protocol.clone().into_owned(),
            })
    }

    /// The protocol name of a registered endpoint's message type.
    pub(crate) fn protocol_of(&self, name: &str) -> Option<Cow<'static, str>> {
        let endpoints = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        endpoints.get(name).map(|r| r.protocol.clone())
    }

    /// Unregisters the endpoint called `name` (if it is the one behind `control`) and queues its
    /// `on_stop`. Idempotent.
    pub(crate) fn stop_endpoint(&self, name: &str, control: &dyn InboxControl) {
        {
            let mut endpoints = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
            let same = endpoints.get(name).is_some_and(|r| {
                std::ptr::addr_eq(Arc::as_ptr(&r.control), control as *const dyn InboxControl)
            });
            if same {
                endpoints.remove(name);
            }
        }
        control.stop();
        self.reap_dedicated();
    }

    /// Snapshots of the registered endpoints, by name.
    pub(crate) fn endpoint_stats(&self) -> Vec<EndpointStats> {
        let controls: Vec<Arc<dyn InboxControl>> = {
            let endpoints = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
            endpoints.values().map(|r| r.control.clone()).collect()
        };
        let mut stats: Vec<EndpointStats> = controls.iter().map(|c| c.stats()).collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    /// The inbox of the endpoint called `name`.
    pub(crate) fn control(&self, name: &str) -> Option<Arc<dyn InboxControl>> {
        let endpoints = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        endpoints.get(name).map(|r| r.control.clone())
    }

    /// Tells every endpoint of a network event.
    pub(crate) fn post_to_all(&self, event: Event) {
        let endpoints = self.endpoints.read().unwrap_or_else(|p| p.into_inner());
        for reg in endpoints.values() {
            reg.control.post_event(&event);
        }
    }

    /// Refuses new endpoints and messages, stops every endpoint (each runs `on_stop` after its
    /// queued messages), waits until all have, and ends the loops. Must not run on a loop thread.
    pub(crate) fn shutdown(&self) {
        let registrations: Vec<Registration> = {
            let mut endpoints = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
            self.defaults.env_stopped.store(true, Ordering::Release);
            endpoints.drain().map(|(_, r)| r).collect()
        };
        // Handlers blocked in an ask (even one without a timeout) return before they are
        // waited for.
        self.defaults.waits.blocked.fail_all();
        for reg in &registrations {
            reg.control.stop();
        }
        drop(registrations);
        {
            let mut n = self.live.count.lock().unwrap_or_else(|p| p.into_inner());
            while *n > 0 {
                n = self.live.cond.wait(n).unwrap_or_else(|p| p.into_inner());
            }
        }
        self.shared_loop.signal_exit();
        self.shared_loop.join();
        let dedicated =
            std::mem::take(&mut *self.dedicated.lock().unwrap_or_else(|p| p.into_inner()));
        for l in dedicated {
            l.signal_exit();
            l.join();
        }
    }
}
