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
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::address::RpcEndpointAddress;
use crate::endpoint::EndpointCtx;
use crate::endpoint_ref::{RefDefaults, Route, RpcEndpointRef};
use crate::error::RpcError;
use crate::flavour::Behaviour;
use crate::inbox::{Inbox, Job, Scheduler, TerminationListener};
use crate::mailbox::{Event, InboxControl};
use crate::message::RpcMessage;
use crate::stats::EndpointStats;

thread_local! {
    /// A thread-identity flag, not a parameter: set once on each message loop thread, so that
    /// blocking operations (shutdown) can tell they must not wait for the loops from one of them.
    static ON_MESSAGE_LOOP: Cell<bool> = const { Cell::new(false) };
}

/// Whether the current thread is a message loop thread (a handler is running on it).
pub(crate) fn on_message_loop_thread() -> bool {
    ON_MESSAGE_LOOP.with(Cell::get)
}

/// A pool of threads running inboxes that need a thread.
pub(crate) struct MessageLoop {
    tx: crossbeam_channel::Sender<Job>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    size: usize,
}

impl MessageLoop {
    pub(crate) fn start(name: impl Fn(usize) -> String, size: usize) -> std::io::Result<Arc<Self>> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut threads = Vec::with_capacity(size);
        for i in 0..size {
            let rx = rx.clone();
            let handle = std::thread::Builder::new().name(name(i)).spawn(move || {
                ON_MESSAGE_LOOP.with(|f| f.set(true));
                while let Ok(job) = rx.recv() {
                    match job {
                        Job::Run(inbox) => inbox.run(),
                        Job::Exit => break,
                    }
                }
            });
            match handle {
                Ok(h) => threads.push(h),
                Err(e) => {
                    for _ in 0..threads.len() {
                        let _ = tx.send(Job::Exit);
                    }
                    return Err(e);
                }
            }
        }
        Ok(Arc::new(MessageLoop {
            tx,
            threads: Mutex::new(threads),
            size,
        }))
    }

    pub(crate) fn scheduler(&self) -> Scheduler {
        Scheduler::Loop(self.tx.clone())
    }

    /// Asks every thread to exit once the jobs queued before are done.
    fn signal_exit(&self) {
        for _ in 0..self.size {
            let _ = self.tx.send(Job::Exit);
        }
    }

    /// Waits for the threads to exit (never for the calling thread itself).
    fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        let me = std::thread::current().id();
        for t in threads {
            if t.thread().id() != me {
                let _ = t.join();
            }
        }
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
    pub(crate) fn start_shared_loop(threads: usize) -> std::io::Result<Arc<MessageLoop>> {
        MessageLoop::start(|i| format!("dispatcher-event-loop-{i}"), threads.max(1))
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
        dedicated_threads: usize,
        make_ctx: impl FnOnce(RpcEndpointRef<B::Message>) -> EndpointCtx<B::Message>,
    ) -> Result<RpcEndpointRef<B::Message>, RpcError> {
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
            if dedicated_threads > 0 {
                let threads = if B::CONCURRENT { dedicated_threads } else { 1 };
                let message_loop = MessageLoop::start(|_| format!("dispatcher-{name}"), threads)
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
            scheduler,
            max_threads,
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
