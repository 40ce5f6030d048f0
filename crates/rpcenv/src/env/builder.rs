//! [`RpcEnvBuilder`]: starts an env. Binds the server (on a helper thread, so that building works
//! the same from plain threads and from async code), starts the message loops, and connects the
//! dispatcher, the network and the transport handler to each other.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};

use rpcenv_transport::{
    NoOpRpcHandler, RpcHandler, TransportClientFactory, TransportConf, TransportServer,
};

use super::api::RpcEnv;
use super::lifecycle::{EnvInner, Termination};
use crate::address::RpcAddress;
use crate::conf::RpcConf;
use crate::dispatcher::Dispatcher;
use crate::endpoint_ref::{RefDefaults, RefNetwork};
use crate::error::RpcError;
use crate::file_channel::FilesPool;
use crate::file_server::FileRegistry;
use crate::net::{Network, NetworkParts, RpcEnvHandler, FRAME_HEADROOM};
use crate::reply::Waits;
use crate::stats::STATS_NAME;
use crate::stats_endpoint::StatsEndpoint;
use crate::stream_service::StreamService;
use crate::verifier::{Verifier, VERIFIER_NAME};

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
    /// A builder for an env called `name`, with the defaults [`RpcEnv::builder`] documents.
    pub(super) fn new(name: String) -> Self {
        RpcEnvBuilder {
            name,
            bind_host: "127.0.0.1".into(),
            advertise_host: None,
            port: 0,
            client_mode: false,
            conf: RpcConf::new(),
            runtime: None,
        }
    }
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

    /// Runs all the env's IO, its server's inbound connections included, on this runtime (which
    /// must be multi-threaded) instead of the runtimes the envs of a process share.
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
        let own_runtime = self.runtime.is_some();
        let runtime = match self.runtime {
            Some(h) => {
                if h.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
                    return Err(startup(
                        "the runtime handed to the builder must be a multi-thread runtime".into(),
                    ));
                }
                h
            }
            None => crate::runtime::shared_runtime(self.conf.client_io_threads()),
        };
        let tconf = transport_conf(&self.conf, &self.name);
        // The parent of the env's server and connection spans, so that every log line about a
        // connection names the env as well as the peer.
        let span = tracing::info_span!("rpcenv", env = %self.name);
        let files = Arc::new(FileRegistry::default());
        let handler = RpcEnvHandler::new(files.clone());
        let server = if self.client_mode {
            None
        } else {
            // Inbound connections on the servers' runtime, unless the env was handed one of its
            // own or the servers have no threads of their own (see `runtime`).
            let server_runtime = match self.conf.server_io_threads() {
                n if n > 0 && !own_runtime => crate::runtime::shared_server_runtime(n),
                _ => runtime.clone(),
            };
            Some(bind_server(
                &server_runtime,
                &span,
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
        let shared_loop = Dispatcher::start_shared_loop(
            self.conf.dispatcher_threads(),
            self.conf.max_extra_loop_threads(),
            self.conf.spin_window(),
        )
        .map_err(|e| startup(format!("cannot start message loop threads: {e}")))?;
        let client_bootstraps =
            crate::security::client_bootstraps(&self.conf).map_err(|e| startup(e.to_string()))?;
        // Spark's `files` client factory: its own pool, idle connections closed, no requests
        // accepted from the server, the same authentication and TLS.
        let files_pool = Arc::new(FilesPool::new(
            TransportClientFactory::with_bootstraps(
                files_transport_conf(&self.conf, &self.name),
                Arc::new(NoOpRpcHandler),
                client_bootstraps.clone(),
            ),
            runtime.clone(),
        ));
        let factory =
            TransportClientFactory::with_bootstraps(tconf, handler.clone(), client_bootstraps);
        // The refs' defaults name the network weakly, and the network holds the dispatcher that
        // holds the defaults: built in one go around the network's `Arc`.
        let network = Arc::new_cyclic(|net: &Weak<Network>| {
            let ref_network: Weak<dyn RefNetwork> = net.clone();
            let defaults = Arc::new(RefDefaults {
                ask_timeout: self.conf.ask_timeout(),
                num_retries: self.conf.num_retries(),
                retry_wait: self.conf.retry_wait(),
                waits: Arc::new(Waits::new(runtime.clone(), self.conf.spin_window())),
                sender: address.clone(),
                env_id: random_env_id(),
                network: ref_network,
                env_stopped: Arc::new(AtomicBool::new(false)),
            });
            let parts = NetworkParts {
                name: self.name.clone(),
                span: span.clone(),
                runtime: runtime.clone(),
                factory,
                server,
                dispatcher: Arc::new(Dispatcher::new(
                    shared_loop,
                    self.conf.inbox_capacity(),
                    self.conf.slow_handler_threshold(),
                    defaults,
                )),
                max_message_size: usize::try_from(self.conf.max_message_size())
                    .unwrap_or(usize::MAX),
                outbox_max_bytes: usize::try_from(self.conf.outbox_max_bytes())
                    .unwrap_or(usize::MAX),
                streams: StreamService::new(
                    crate::security::authenticated_app_id(&self.conf),
                    self.conf.max_chunks_being_transferred(),
                ),
            };
            Network::new(parts, net.clone())
        });
        handler.bind(Arc::downgrade(&network));
        let dispatcher = network.dispatcher().clone();
        let env = RpcEnv::from_inner(Arc::new(EnvInner {
            name: self.name,
            address,
            conf: self.conf,
            dispatcher,
            runtime,
            network,
            files,
            files_pool,
            shutdown_started: AtomicBool::new(false),
            termination: Arc::new(Termination::default()),
        }));
        if !self.client_mode {
            let verifier = Verifier::new(Arc::downgrade(&env.inner().dispatcher));
            env.setup_endpoint(VERIFIER_NAME, verifier)?;
            let stats = StatsEndpoint::new(
                Arc::downgrade(&env.inner().network),
                env.name().to_string(),
                env.address().map(|a| a.to_string()),
            );
            env.setup_endpoint(STATS_NAME, stats)?;
        }
        tracing::debug!(env = %env.name(), address = ?env.address(), "RpcEnv started");
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
        max_queued_bytes_per_connection: usize::try_from(conf.max_queued_bytes_per_connection())
            .unwrap_or(usize::MAX),
        handshake_timeout: non_zero(conf.handshake_timeout()),
        max_inbound_connections: conf.max_inbound_connections(),
        ..TransportConf::default()
    }
}

/// The transport settings of the env's `files` client pool: `files.io.X`, else `rpc.io.X`; idle
/// connections close.
fn files_transport_conf(conf: &RpcConf, name: &str) -> TransportConf {
    TransportConf {
        module: "files".into(),
        close_idle_connections: true,
        ..transport_conf(&conf.files_io_view(), name)
    }
}

/// Binds the server on `runtime`, which then runs its accept loop and inbound connections. The
/// bind runs on a helper thread, so that building an env works the same from plain threads and
/// from async code.
fn bind_server(
    runtime: &tokio::runtime::Handle,
    span: &tracing::Span,
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
    let (rt, conf, bind_host, span) = (
        runtime.clone(),
        conf.clone(),
        host.to_string(),
        span.clone(),
    );
    std::thread::Builder::new()
        .name("rpcenv-bind".into())
        .spawn(move || {
            let handler: Arc<dyn RpcHandler> = handler;
            let _env = span.enter();
            rt.block_on(TransportServer::bind_with_bootstraps(
                conf, &bind_host, port, handler, bootstraps,
            ))
        })
        .map_err(|e| startup(format!("cannot start a thread: {e}")))?
        .join()
        .map_err(|_| startup("the bind thread panicked".into()))?
        .map_err(|e| startup(e.to_string()))
}

/// A random identity for an env (refs to its client-mode endpoints carry it): std's randomly
/// keyed hasher, so no random-number crate is needed for one number per env.
fn random_env_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.finish()
}
