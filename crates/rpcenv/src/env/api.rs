//! [`RpcEnv`], the public API of an env: register endpoints, look them up (here and in other
//! envs), stop them, and shut the env down.

use std::any::Any;
use std::sync::{Arc, Weak};

use super::builder::RpcEnvBuilder;
use super::lifecycle::EnvInner;
use crate::address::{RpcAddress, RpcEndpointAddress};
use crate::conf::RpcConf;
use crate::dispatcher::Placement;
use crate::endpoint::{ConcurrentRpcEndpoint, EndpointCtx, RpcEndpoint};
use crate::endpoint_ref::RpcEndpointRef;
use crate::error::RpcError;
use crate::flavour::{Behaviour, Concurrent, Sequential};
use crate::message::RpcMessage;
use crate::stats::{EnvStats, StatsRequest, STATS_NAME};
use crate::stats_endpoint::snapshot;
use crate::timeout::{block_on_until, ensure_blocking_allowed};
use crate::verifier::{Existence, VerifierRequest, ANY_PROTOCOL};

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
    ///
    /// Defaults: bind host `127.0.0.1`, port 0 (a free one), a server (not client mode), an
    /// empty configuration, and the runtime the envs of a process share.
    pub fn builder(name: impl Into<String>) -> RpcEnvBuilder {
        RpcEnvBuilder::new(name.into())
    }

    pub(super) fn from_inner(inner: Arc<EnvInner>) -> Self {
        RpcEnv { inner }
    }

    pub(super) fn inner(&self) -> &EnvInner {
        &self.inner
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

    /// The tokio runtime this env runs its IO, ask timers and tasks on (its server's inbound
    /// connections excepted when `rpc.io.serverThreads` gives the servers a runtime of their own
    /// and the builder was not handed this one).
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
        let placement = Placement {
            dedicated_threads: usize::from(endpoint.isolated()),
            inline: endpoint.inline(),
        };
        self.register(name, Sequential::new(endpoint), placement)
    }

    /// Registers a concurrent endpoint (see [`ConcurrentRpcEndpoint`]).
    pub fn setup_concurrent_endpoint<E: ConcurrentRpcEndpoint>(
        &self,
        name: &str,
        endpoint: E,
    ) -> Result<RpcEndpointRef<E::Message>, RpcError> {
        let placement = Placement {
            dedicated_threads: endpoint.dedicated_threads(),
            inline: endpoint.inline(),
        };
        self.register(name, Concurrent::new(endpoint), placement)
    }

    fn register<B: Behaviour>(
        &self,
        name: &str,
        behaviour: B,
        placement: Placement,
    ) -> Result<RpcEndpointRef<B::Message>, RpcError> {
        let env: Weak<EnvInner> = Arc::downgrade(&self.inner);
        let env: Weak<dyn Any + Send + Sync> = env;
        let runtime = self.inner.runtime.clone();
        self.inner
            .dispatcher
            .register(name, behaviour, placement, |self_ref| {
                EndpointCtx::new(self_ref, env, runtime)
            })
    }

    /// The ref of an endpoint registered in this env, typed by its message type.
    ///
    /// Fails with [`RpcError::EndpointNotFound`], or [`RpcError::MessageTypeMismatch`] naming both
    /// types when `M` is not the endpoint's message type.
    pub fn endpoint_ref<M: RpcMessage>(&self, name: &str) -> Result<RpcEndpointRef<M>, RpcError> {
        self.inner.dispatcher.lookup(name)
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
        self.inner.termination.wait();
        Ok(())
    }

    /// Completes when the env has shut down.
    pub async fn terminated(&self) {
        self.inner.termination.finished().await
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
            return self.inner.dispatcher.lookup(name);
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
            Existence::Found => Ok(self.inner.remote_ref(target, address)),
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

    /// A snapshot of what this env is doing: its endpoints (inbox depth, messages processed,
    /// busy time, longest queue time), its outboxes (bytes waiting) and its connections.
    pub fn stats(&self) -> EnvStats {
        snapshot(
            &self.inner.network,
            &self.inner.name,
            self.inner.address.as_ref().map(|a| a.to_string()),
        )
    }

    /// The [`stats`](Self::stats) of the env at `address`, asked of its `rpcenv-stats`
    /// endpoint. Bounded by `rpc.lookupTimeout`.
    pub async fn remote_stats_async(&self, address: &RpcAddress) -> Result<EnvStats, RpcError> {
        let target = RpcEndpointAddress::new(Some(address.clone()), STATS_NAME);
        let stats = self.inner.remote_ref::<StatsRequest>(target, address);
        stats
            .ask_with_timeout(StatsRequest::Snapshot, self.inner.conf.lookup_timeout())
            .await
    }

    /// The blocking form of [`remote_stats_async`](Self::remote_stats_async).
    pub fn remote_stats(&self, address: &RpcAddress) -> Result<EnvStats, RpcError> {
        ensure_blocking_allowed("RpcEnv::remote_stats")?;
        block_on_until(self.remote_stats_async(address), None)
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

/// The methods of [`EndpointCtx`] that reach the env: defined here, in the layer that knows it.
impl<M> EndpointCtx<M> {
    /// The env, unless it has been dropped.
    pub fn env(&self) -> Option<RpcEnv> {
        let env = self.env_handle().upgrade()?.downcast::<EnvInner>().ok()?;
        Some(RpcEnv::from_inner(env))
    }
}

impl<M: RpcMessage> EndpointCtx<M> {
    /// Stops this endpoint: `on_stop` runs after the messages already queued.
    pub fn stop(&self) {
        if let Some(env) = self.env() {
            env.stop(self.own_ref());
        }
    }
}
