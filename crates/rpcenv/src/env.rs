//! [`RpcEnv`]: hosts named endpoints and runs their message loops.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

use crate::address::{RpcAddress, RpcEndpointAddress};
use crate::conf::RpcConf;
use crate::dispatcher::{on_message_loop_thread, Dispatcher, LookupError};
use crate::endpoint::{ConcurrentRpcEndpoint, EndpointCtx, RpcEndpoint};
use crate::endpoint_ref::{RefDefaults, RpcEndpointRef};
use crate::error::RpcError;
use crate::inbox::{Behaviour, Concurrent, Sequential};
use crate::message::RpcMessage;
use crate::timeout::ensure_blocking_allowed;

/// Builds an [`RpcEnv`].
///
/// ```
/// use rpcenv::{RpcConf, RpcEnv};
/// let env = RpcEnv::builder("driver")
///     .bind_host("127.0.0.1")
///     .port(0)
///     .conf(RpcConf::new().with("rpc.askTimeout", "10s")?)
///     .build()?;
/// assert_eq!(env.name(), "driver");
/// env.shutdown();
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
#[derive(Debug, Clone)]
pub struct RpcEnvBuilder {
    name: String,
    bind_host: String,
    advertise_host: Option<String>,
    port: u16,
    client_mode: bool,
    conf: RpcConf,
    runtime: Option<tokio::runtime::Handle>,
}

impl RpcEnvBuilder {
    /// The host to bind the server to (default `127.0.0.1`).
    pub fn bind_host(mut self, host: impl Into<String>) -> Self {
        self.bind_host = host.into();
        self
    }

    /// The host other processes reach this env at, when it differs from the bind host (e.g.
    /// binding `0.0.0.0`); default: the bind host.
    pub fn advertise_host(mut self, host: impl Into<String>) -> Self {
        self.advertise_host = Some(host.into());
        self
    }

    /// The port to listen on; 0 (the default) picks a free one. A taken port is retried upward
    /// up to `port.maxRetries` times.
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// A client-mode env does not listen: it has no address, and its endpoints are reached only
    /// through refs it hands to servers (over the connections it opened).
    pub fn client_mode(mut self, client_mode: bool) -> Self {
        self.client_mode = client_mode;
        self
    }

    /// The configuration.
    pub fn conf(mut self, conf: RpcConf) -> Self {
        self.conf = conf;
        self
    }

    /// Runs the env's IO on this runtime (which must be multi-threaded) instead of the runtime the
    /// envs of a process share.
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// Starts the env: its message loop threads (and, in server mode, its server).
    pub fn build(self) -> Result<RpcEnv, RpcError> {
        let startup = |reason: String| RpcError::Startup {
            name: self.name.clone(),
            reason,
        };
        let runtime = match self.runtime {
            Some(h) => {
                if h.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
                    return Err(startup(
                        "the runtime handed to the builder must be a multi-thread runtime".into(),
                    ));
                }
                h
            }
            None => crate::runtime::shared_runtime(self.conf.io_threads()),
        };
        let dispatcher = Dispatcher::new(self.conf.dispatcher_threads())
            .map_err(|e| startup(format!("cannot start message loop threads: {e}")))?;
        let address = if self.client_mode {
            None
        } else {
            let host = self.advertise_host.as_deref().unwrap_or(&self.bind_host);
            Some(RpcAddress::new(host, self.port))
        };
        let defaults = Arc::new(RefDefaults {
            ask_timeout: self.conf.ask_timeout(),
            num_retries: self.conf.num_retries(),
            retry_wait: self.conf.retry_wait(),
            runtime: runtime.clone(),
            sender: address.clone(),
        });
        tracing::debug!(env = %self.name, ?address, "RpcEnv started");
        Ok(RpcEnv {
            inner: Arc::new(EnvInner {
                name: self.name,
                address,
                conf: self.conf,
                dispatcher: Arc::new(dispatcher),
                runtime,
                defaults,
                shutdown_started: AtomicBool::new(false),
                termination: Arc::new(Termination::default()),
            }),
        })
    }
}

#[derive(Default)]
struct Termination {
    done: Mutex<bool>,
    cond: Condvar,
    notify: tokio::sync::Notify,
}

impl Termination {
    fn finish(&self) {
        *self.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.cond.notify_all();
        self.notify.notify_waiters();
    }

    fn is_done(&self) -> bool {
        *self.done.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) struct EnvInner {
    name: String,
    address: Option<RpcAddress>,
    conf: RpcConf,
    dispatcher: Arc<Dispatcher>,
    runtime: tokio::runtime::Handle,
    defaults: Arc<RefDefaults>,
    shutdown_started: AtomicBool,
    termination: Arc<Termination>,
}

impl EnvInner {
    /// Starts the shutdown once; runs it here when this thread may block, else on a thread of
    /// its own (a handler or an async task must never wait for the message loops).
    fn begin_shutdown(&self) {
        if self.shutdown_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let dispatcher = self.dispatcher.clone();
        let termination = self.termination.clone();
        let name = self.name.clone();
        let run = move || {
            tracing::debug!(env = %name, "RpcEnv shutting down");
            dispatcher.shutdown();
            termination.finish();
            tracing::debug!(env = %name, "RpcEnv terminated");
        };
        if on_message_loop_thread() || tokio::runtime::Handle::try_current().is_ok() {
            let spawned = std::thread::Builder::new()
                .name("rpcenv-shutdown".into())
                .spawn(run);
            if let Err(e) = spawned {
                tracing::error!(env = %self.name, error = %e, "cannot start the shutdown thread");
            }
        } else {
            run();
        }
    }
}

impl Drop for EnvInner {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// The environment that hosts endpoints: Spark's `RpcEnv`.
///
/// An env registers named endpoints ([`setup_endpoint`](Self::setup_endpoint)) and runs their
/// callbacks on its message loop threads. Cloning is cheap (a shared handle). It works from plain
/// threads and from async code; blocking calls return an error on runtime threads instead of
/// deadlocking.
///
/// Shut it down with [`shutdown`](Self::shutdown) (dropping the last handle does the same):
/// new messages are refused, every endpoint processes what it had queued and runs `on_stop`
/// once, and the loop threads end.
///
/// ```
/// use rpcenv::{EndpointCtx, HandlerResult, RpcCallContext, RpcEndpoint, RpcEnv};
///
/// struct Counter(u64);
/// impl RpcEndpoint for Counter {
///     type Message = u64;
///     fn receive(&mut self, _: &EndpointCtx<u64>, n: u64) -> HandlerResult {
///         self.0 += n;
///         Ok(())
///     }
///     fn receive_and_reply(&mut self, _: &EndpointCtx<u64>, _: u64, ctx: RpcCallContext) -> HandlerResult {
///         ctx.reply(self.0);
///         Ok(())
///     }
/// }
///
/// let env = RpcEnv::builder("doc").client_mode(true).build()?;
/// let counter = env.setup_endpoint("counter", Counter(0))?;
/// for i in 1..=10 {
///     counter.send(i)?;
/// }
/// // Messages from one sender are processed in order, so the ask sees all ten sends.
/// assert_eq!(counter.ask_sync::<u64>(0)?, 55);
/// env.shutdown();
/// env.await_termination()?;
/// # Ok::<(), rpcenv::RpcError>(())
/// ```
#[derive(Clone)]
pub struct RpcEnv {
    inner: Arc<EnvInner>,
}

impl RpcEnv {
    /// A builder for an env called `name`.
    pub fn builder(name: impl Into<String>) -> RpcEnvBuilder {
        RpcEnvBuilder {
            name: name.into(),
            bind_host: "127.0.0.1".into(),
            advertise_host: None,
            port: 0,
            client_mode: false,
            conf: RpcConf::new(),
            runtime: None,
        }
    }

    pub(crate) fn from_inner(inner: Arc<EnvInner>) -> Self {
        RpcEnv { inner }
    }

    /// The env's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Where other processes reach this env: the advertised host and the bound port. `None` in
    /// client mode.
    pub fn address(&self) -> Option<&RpcAddress> {
        self.inner.address.as_ref()
    }

    /// The configuration.
    pub fn conf(&self) -> &RpcConf {
        &self.inner.conf
    }

    /// The tokio runtime this env runs its IO and timers on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.inner.runtime
    }

    /// Registers a one-at-a-time endpoint under `name` and returns its ref; `on_start` runs
    /// before any message.
    ///
    /// Fails with [`RpcError::AlreadyRegistered`] if the name is taken, [`RpcError::EnvStopped`]
    /// after shutdown.
    pub fn setup_endpoint<E: RpcEndpoint>(
        &self,
        name: &str,
        endpoint: E,
    ) -> Result<RpcEndpointRef<E::Message>, RpcError> {
        let threads = usize::from(endpoint.isolated());
        self.register(name, Sequential::new(endpoint), threads)
    }

    /// Registers a concurrent endpoint (see [`ConcurrentRpcEndpoint`]).
    pub fn setup_concurrent_endpoint<E: ConcurrentRpcEndpoint>(
        &self,
        name: &str,
        endpoint: E,
    ) -> Result<RpcEndpointRef<E::Message>, RpcError> {
        let threads = endpoint.dedicated_threads();
        self.register(name, Concurrent::new(endpoint), threads)
    }

    fn register<B: Behaviour>(
        &self,
        name: &str,
        behaviour: B,
        dedicated_threads: usize,
    ) -> Result<RpcEndpointRef<B::Message>, RpcError> {
        let address = RpcEndpointAddress::new(self.inner.address.clone(), name);
        let defaults = self.inner.defaults.clone();
        let env = Arc::downgrade(&self.inner);
        let runtime = self.inner.runtime.clone();
        self.inner.dispatcher.register(
            name,
            behaviour,
            dedicated_threads,
            |mailbox| RpcEndpointRef::local(address, mailbox, defaults),
            |self_ref| EndpointCtx::new(self_ref, env, runtime),
        )
    }

    /// The ref of an endpoint registered in this env, typed by its message type.
    ///
    /// Fails with [`RpcError::EndpointNotFound`], or [`RpcError::MessageTypeMismatch`] naming both
    /// types when `M` is not the endpoint's message type.
    pub fn endpoint_ref<M: RpcMessage>(&self, name: &str) -> Result<RpcEndpointRef<M>, RpcError> {
        self.inner.lookup_local(name)
    }

    /// Stops an endpoint: it is unregistered at once, processes the messages already queued, then
    /// runs `on_stop`; later messages are refused. Idempotent.
    pub fn stop<M: RpcMessage>(&self, endpoint: &RpcEndpointRef<M>) {
        self.inner
            .dispatcher
            .stop_endpoint(endpoint.name(), endpoint.control());
    }

    /// Shuts the env down (idempotent): new messages and endpoints are refused, handler calls in
    /// progress and queued messages finish, every endpoint runs `on_stop` once, and the message
    /// loops end.
    ///
    /// On a plain thread this returns when all of that is done. Called from a handler or from
    /// async code it returns at once and completes on a thread of its own; use
    /// [`await_termination`](Self::await_termination) or [`terminated`](Self::terminated) to wait.
    pub fn shutdown(&self) {
        self.inner.begin_shutdown();
    }

    /// Blocks until the env has shut down (after [`shutdown`](Self::shutdown) was called).
    ///
    /// Returns [`RpcError::BlockingInAsyncContext`] on a runtime thread (await
    /// [`terminated`](Self::terminated) there).
    pub fn await_termination(&self) -> Result<(), RpcError> {
        ensure_blocking_allowed("RpcEnv::await_termination")?;
        let t = &self.inner.termination;
        let mut done = t.done.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            done = t.cond.wait(done).unwrap_or_else(|p| p.into_inner());
        }
        Ok(())
    }

    /// Completes when the env has shut down.
    pub async fn terminated(&self) {
        let t = &self.inner.termination;
        loop {
            let notified = t.notify.notified();
            if t.is_done() {
                return;
            }
            notified.await;
        }
    }

    /// Whether [`shutdown`](Self::shutdown) has been called.
    pub fn is_stopped(&self) -> bool {
        self.inner.dispatcher.is_stopped()
    }

    /// Runs `f` with this env as the one refs deserialize into.
    #[allow(dead_code)] // used by the network layer
    pub(crate) fn deserialize_scope<T>(&self, f: impl FnOnce() -> T) -> T {
        let previous = DESERIALIZING_ENV.with(|e| e.replace(Some(Arc::downgrade(&self.inner))));
        let result = f();
        DESERIALIZING_ENV.with(|e| *e.borrow_mut() = previous);
        result
    }
}

impl EnvInner {
    fn lookup_local<M: RpcMessage>(&self, name: &str) -> Result<RpcEndpointRef<M>, RpcError> {
        self.dispatcher.lookup::<M>(name).map_err(|e| match e {
            LookupError::NotFound => RpcError::EndpointNotFound {
                uri: RpcEndpointAddress::new(self.address.clone(), name).to_string(),
            },
            LookupError::WrongType { actual } => RpcError::MessageTypeMismatch {
                uri: RpcEndpointAddress::new(self.address.clone(), name).to_string(),
                expected: M::protocol_name().into_owned(),
                actual: actual.into_owned(),
            },
        })
    }
}

impl std::fmt::Debug for RpcEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcEnv")
            .field("name", &self.inner.name)
            .field("address", &self.inner.address)
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

thread_local! {
    static DESERIALIZING_ENV: RefCell<Option<Weak<EnvInner>>> = const { RefCell::new(None) };
}

/// Rebinds a deserialized ref to the env that is decoding the message it arrived in.
pub(crate) fn rebind_ref<M: RpcMessage>(
    address: RpcEndpointAddress,
) -> Result<RpcEndpointRef<M>, String> {
    let env = DESERIALIZING_ENV
        .with(|e| e.borrow().as_ref().and_then(Weak::upgrade))
        .ok_or_else(|| {
            format!("cannot deserialize a ref to {address}: refs are rebound by the RpcEnv that receives them, and none is decoding")
        })?;
    if address.address() == env.address.as_ref() {
        return env.lookup_local(address.name()).map_err(|e| e.to_string());
    }
    Err(format!(
        "cannot reach {address} from RpcEnv {}: it is not served by this env",
        env.name
    ))
}
