//! [`RpcEnv`]: hosts named endpoints and runs their message loops.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};

use crate::address::{RpcAddress, RpcEndpointAddress};
use crate::call_context::{ReplyTarget, RpcCallContext};
use crate::conf::RpcConf;
use crate::dispatcher::Event;
use crate::dispatcher::{on_message_loop_thread, Dispatcher, LookupError};
use crate::endpoint::{ConcurrentRpcEndpoint, EndpointCtx, RpcEndpoint};
use crate::endpoint_ref::{RefDefaults, RpcEndpointRef};
use crate::error::RpcError;
use crate::inbox::{Behaviour, Concurrent, Sequential};
use crate::message::RpcMessage;
use crate::net::{Network, RpcEnvHandler, FRAME_HEADROOM};
use crate::timeout::{block_on_until, ensure_blocking_allowed};
use crate::verifier::{Existence, Verifier, VerifierRequest, ANY_PROTOCOL, VERIFIER_NAME};
use rpcenv_transport::{
    RpcHandler, RpcResponder, TransportClient, TransportClientFactory, TransportConf,
    TransportServer,
};

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

    /// Starts the env: its message loop threads and, unless in client mode, its server (with
    /// the `endpoint-verifier` endpoint that remote lookups ask).
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
        let tconf = transport_conf(&self.conf, &self.name);
        let handler = RpcEnvHandler::new();
        let server = if self.client_mode {
            None
        } else {
            Some(bind_server(
                &runtime,
                &tconf,
                &self.bind_host,
                self.port,
                handler.clone(),
                crate::security::server_bootstraps(&self.conf)
                    .map_err(|e| startup(e.to_string()))?,
            )?)
        };
        let address = server.as_ref().map(|server| {
            let host = self.advertise_host.as_deref().unwrap_or(&self.bind_host);
            RpcAddress::new(host, server.port())
        });
        let dispatcher =
            Dispatcher::new(self.conf.dispatcher_threads(), self.conf.inbox_capacity())
                .map_err(|e| startup(format!("cannot start message loop threads: {e}")))?;
        let factory = TransportClientFactory::with_bootstraps(
            tconf,
            handler.clone(),
            crate::security::client_bootstraps(&self.conf).map_err(|e| startup(e.to_string()))?,
        );
        let max_message_size = usize::try_from(self.conf.max_message_size()).unwrap_or(usize::MAX);
        let inner = Arc::new_cyclic(|env: &Weak<EnvInner>| EnvInner {
            defaults: Arc::new(RefDefaults {
                ask_timeout: self.conf.ask_timeout(),
                num_retries: self.conf.num_retries(),
                retry_wait: self.conf.retry_wait(),
                runtime: runtime.clone(),
                sender: address.clone(),
                env: env.clone(),
            }),
            network: Arc::new(Network::new(
                runtime.clone(),
                factory,
                server,
                max_message_size,
                usize::try_from(self.conf.outbox_max_bytes()).unwrap_or(usize::MAX),
                env.clone(),
            )),
            name: self.name,
            address,
            conf: self.conf,
            dispatcher: Arc::new(dispatcher),
            runtime,
            shutdown_started: AtomicBool::new(false),
            termination: Arc::new(Termination::default()),
        });
        handler.bind(Arc::downgrade(&inner));
        let env = RpcEnv { inner };
        if !self.client_mode {
            env.setup_endpoint(VERIFIER_NAME, Verifier)?;
        }
        tracing::debug!(env = %env.inner.name, address = ?env.inner.address, "RpcEnv started");
        Ok(env)
    }
}

/// The transport settings an env derives from its configuration.
fn transport_conf(conf: &RpcConf, name: &str) -> TransportConf {
    let non_zero = |d: std::time::Duration| (!d.is_zero()).then_some(d);
    let max = usize::try_from(conf.max_message_size()).unwrap_or(usize::MAX);
    TransportConf {
        module: "rpc".into(),
        max_frame_size: max.saturating_add(FRAME_HEADROOM),
        connection_timeout: non_zero(conf.connection_timeout()),
        connect_timeout: non_zero(conf.connection_creation_timeout()),
        num_connections_per_peer: 1,
        port_max_retries: conf.port_max_retries(),
        service_name: format!("RpcEnv '{name}'"),
        retry_wait: conf.io_retry_wait(),
        ..TransportConf::default()
    }
}

/// Binds the server on the env's runtime. The bind runs on a helper thread, so that building an
/// env works the same from plain threads and from async code.
fn bind_server(
    runtime: &tokio::runtime::Handle,
    conf: &TransportConf,
    host: &str,
    port: u16,
    handler: Arc<RpcEnvHandler>,
    bootstraps: Vec<Arc<dyn rpcenv_transport::ServerBootstrap>>,
) -> Result<TransportServer, RpcError> {
    let startup = |reason: String| RpcError::Startup {
        name: format!("{host}:{port}"),
        reason,
    };
    let (rt, conf, bind_host) = (runtime.clone(), conf.clone(), host.to_string());
    std::thread::Builder::new()
        .name("rpcenv-bind".into())
        .spawn(move || {
            let handler: Arc<dyn RpcHandler> = handler;
            rt.block_on(TransportServer::bind_with_bootstraps(
                conf, &bind_host, port, handler, bootstraps,
            ))
        })
        .map_err(|e| startup(format!("cannot start a thread: {e}")))?
        .join()
        .map_err(|_| startup("the bind thread panicked".into()))?
        .map_err(|e| startup(e.to_string()))
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
    network: Arc<Network>,
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
        let network = self.network.clone();
        let termination = self.termination.clone();
        let name = self.name.clone();
        let run = move || {
            tracing::debug!(env = %name, "RpcEnv shutting down");
            // Endpoints stop first, so that they hear of no disconnection their own shutdown
            // causes (SPARK-14699); then queued messages fail and connections close.
            dispatcher.shutdown();
            network.shutdown();
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
    ///
    /// Only endpoints of this env can be stopped; a ref to a remote endpoint is ignored (with a
    /// log line).
    pub fn stop<M: RpcMessage>(&self, endpoint: &RpcEndpointRef<M>) {
        match endpoint.control() {
            Some(control) => self
                .inner
                .dispatcher
                .stop_endpoint(endpoint.name(), control),
            None => {
                tracing::warn!(env = %self.inner.name, endpoint = %endpoint, "cannot stop a remote endpoint")
            }
        }
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

    /// The protocol name of a registered endpoint's message type.
    pub(crate) fn protocol_of(&self, name: &str) -> Option<std::borrow::Cow<'static, str>> {
        self.inner.dispatcher.protocol_of(name)
    }

    /// Whether [`shutdown`](Self::shutdown) has been called.
    pub fn is_stopped(&self) -> bool {
        self.inner.dispatcher.is_stopped()
    }

    /// A ref to the endpoint `name` of the env at `address`, checked with that env's
    /// `endpoint-verifier` (it must exist and take messages of type `M`). Blocks for at most
    /// `rpc.lookupTimeout`.
    ///
    /// Fails with [`RpcError::EndpointNotFound`] naming the full URI, or
    /// [`RpcError::MessageTypeMismatch`] naming both types.
    pub fn setup_endpoint_ref<M: RpcMessage>(
        &self,
        address: &RpcAddress,
        name: &str,
    ) -> Result<RpcEndpointRef<M>, RpcError> {
        ensure_blocking_allowed("RpcEnv::setup_endpoint_ref")?;
        block_on_until(self.setup_endpoint_ref_async(address, name), None)
            .expect("a wait without deadline completes")
    }

    /// [`setup_endpoint_ref`](Self::setup_endpoint_ref) from a URI `rpc://name@host:port`.
    pub fn setup_endpoint_ref_by_uri<M: RpcMessage>(
        &self,
        uri: &str,
    ) -> Result<RpcEndpointRef<M>, RpcError> {
        let (host, name) = server_endpoint(uri)?;
        self.setup_endpoint_ref(&host, &name)
    }

    /// The async form of [`setup_endpoint_ref`](Self::setup_endpoint_ref).
    pub async fn setup_endpoint_ref_async<M: RpcMessage>(
        &self,
        address: &RpcAddress,
        name: &str,
    ) -> Result<RpcEndpointRef<M>, RpcError> {
        if self.inner.address.as_ref() == Some(address) {
            return self.inner.lookup_local(name);
        }
        let target = RpcEndpointAddress::new(Some(address.clone()), name);
        let verifier = self.inner.verifier_at(address);
        let check = VerifierRequest::CheckExistence {
            name: name.to_string(),
            protocol: M::protocol_name().into_owned(),
        };
        let answer: Existence = verifier
            .ask_with_timeout(check, self.inner.conf.lookup_timeout())
            .await?;
        match answer {
            Existence::Found => Ok(self.inner.remote_ref(target, None)),
            Existence::NotFound => Err(RpcError::EndpointNotFound {
                uri: target.to_string(),
            }),
            Existence::WrongType { actual } => Err(RpcError::MessageTypeMismatch {
                uri: target.to_string(),
                expected: M::protocol_name().into_owned(),
                actual,
            }),
        }
    }

    /// Checks, with one round trip to the `endpoint-verifier` of the env at `address`, that an
    /// endpoint called `name` exists there, whatever its message type (a liveness probe, as
    /// `rpcenv ping` uses). Bounded by `rpc.lookupTimeout`.
    pub async fn check_endpoint_async(
        &self,
        address: &RpcAddress,
        name: &str,
    ) -> Result<(), RpcError> {
        let verifier = self.inner.verifier_at(address);
        let check = VerifierRequest::CheckExistence {
            name: name.to_string(),
            protocol: ANY_PROTOCOL.to_string(),
        };
        match verifier
            .ask_with_timeout::<Existence>(check, self.inner.conf.lookup_timeout())
            .await?
        {
            Existence::NotFound => Err(RpcError::EndpointNotFound {
                uri: RpcEndpointAddress::new(Some(address.clone()), name).to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// The blocking form of [`check_endpoint_async`](Self::check_endpoint_async).
    pub fn check_endpoint(&self, address: &RpcAddress, name: &str) -> Result<(), RpcError> {
        ensure_blocking_allowed("RpcEnv::check_endpoint")?;
        block_on_until(self.check_endpoint_async(address, name), None)
            .expect("a wait without deadline completes")
    }

    /// The async form of [`setup_endpoint_ref_by_uri`](Self::setup_endpoint_ref_by_uri).
    pub async fn setup_endpoint_ref_by_uri_async<M: RpcMessage>(
        &self,
        uri: &str,
    ) -> Result<RpcEndpointRef<M>, RpcError> {
        let (host, name) = server_endpoint(uri)?;
        self.setup_endpoint_ref_async(&host, &name).await
    }
}

impl EnvInner {
    pub(crate) fn network(&self) -> &Arc<Network> {
        &self.network
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.dispatcher.is_stopped()
    }

    pub(crate) fn post_to_all(&self, event: Event) {
        self.dispatcher.post_to_all(event);
    }

    /// Posts a message that came over the network to the endpoint called `name`.
    pub(crate) fn post_remote(
        &self,
        name: &str,
        content: &[u8],
        sender: RpcAddress,
        responder: Option<RpcResponder>,
        scope: DecodeScope,
    ) {
        let reply = |r: RpcResponder, endpoint: Arc<str>| {
            let ctx = RpcCallContext::new(ReplyTarget::Remote(Box::new(r)), Some(sender), endpoint);
            match scope.client() {
                Some(client) => ctx.with_connection(client.remote_addr()),
                None => ctx,
            }
        };
        match self.dispatcher.control(name) {
            Some(inbox) => {
                let ctx = responder.map(|r| reply(r, inbox.endpoint_name()));
                inbox.post_remote(content, ctx, &scope)
            }
            None => {
                let error = if self.is_stopped() {
                    RpcError::EnvStopped
                } else {
                    RpcError::EndpointNotFound {
                        uri: RpcEndpointAddress::new(self.address.clone(), name).to_string(),
                    }
                };
                match responder {
                    Some(r) => reply(r, name.into()).fail(error),
                    None => {
                        tracing::warn!(env = %self.name, peer = %scope.peer(), error = %error, "one-way message not delivered")
                    }
                }
            }
        }
    }

    /// The `endpoint-verifier` of the env at `address`.
    fn verifier_at(&self, address: &RpcAddress) -> RpcEndpointRef<VerifierRequest> {
        self.remote_ref(
            RpcEndpointAddress::new(Some(address.clone()), VERIFIER_NAME),
            None,
        )
    }

    /// A ref to `name` at `address` (another env), or to a client-mode endpoint reached over
    /// `client`.
    pub(crate) fn remote_ref<M: RpcMessage>(
        &self,
        address: RpcEndpointAddress,
        client: Option<TransportClient>,
    ) -> RpcEndpointRef<M> {
        RpcEndpointRef::remote(address, client, self.defaults.clone())
    }

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

/// The server address and endpoint name of `uri` (`rpc://name@host:port`); a client-mode
/// endpoint's URI has no address to reach it at.
fn server_endpoint(uri: &str) -> Result<(RpcAddress, String), RpcError> {
    let address = RpcEndpointAddress::parse(uri)?;
    let host = address
        .address()
        .ok_or_else(|| RpcError::ClientEndpointUnreachable {
            uri: uri.to_string(),
        })?;
    Ok((host.clone(), address.name().to_string()))
}

/// The env (and connection) refs inside a message are rebound to while it is decoded.
pub(crate) struct DecodeScope {
    env: Weak<EnvInner>,
    client: Option<TransportClient>,
}

impl DecodeScope {
    pub(crate) fn new(env: Weak<EnvInner>, client: Option<TransportClient>) -> Self {
        DecodeScope { env, client }
    }

    /// Runs `f` (a decode) with this scope in force for the refs it deserializes.
    pub(crate) fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let scope = (self.env.clone(), self.client.clone());
        let previous = DECODE_SCOPE.with(|s| s.replace(Some(scope)));
        let result = f();
        DECODE_SCOPE.with(|s| *s.borrow_mut() = previous);
        result
    }

    /// The connection the message came over.
    pub(crate) fn client(&self) -> Option<&TransportClient> {
        self.client.as_ref()
    }

    /// The peer a message came from, for error messages.
    pub(crate) fn peer(&self) -> String {
        self.client.as_ref().map_or_else(
            || "this process".to_string(),
            |c| c.remote_addr().to_string(),
        )
    }
}

/// The env and connection a decode binds refs to.
type Scope = (Weak<EnvInner>, Option<TransportClient>);

thread_local! {
    static DECODE_SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Rebinds a deserialized ref to the env decoding the message it arrived in: a ref to one of that
/// env's endpoints becomes local; a ref to another env's endpoint goes through the outbox of its
/// address; a ref to a client-mode endpoint goes over the connection the message came on.
pub(crate) fn rebind_ref<M: RpcMessage>(
    address: RpcEndpointAddress,
) -> Result<RpcEndpointRef<M>, String> {
    let (env, client) = DECODE_SCOPE
        .with(|s| s.borrow().as_ref().map(|(e, c)| (e.upgrade(), c.clone())))
        .and_then(|(env, client)| env.map(|env| (env, client)))
        .ok_or_else(|| {
            format!("cannot deserialize a ref to {address}: refs are rebound by the RpcEnv that receives them, and none is decoding")
        })?;
    if address.address() == env.address.as_ref() {
        match env.lookup_local::<M>(address.name()) {
            Ok(local) => return Ok(local),
            Err(e) if address.address().is_some() => return Err(e.to_string()),
            // A client-mode endpoint of another env (both have no address).
            Err(_) => {}
        }
    }
    match address.address() {
        Some(_) => Ok(env.remote_ref(address, None)),
        None => Ok(env.remote_ref(address, client)),
    }
}
