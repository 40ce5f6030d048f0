//! `TransportClientFactory`: a pool of client connections keyed by peer (Spark's
//! `TransportClientFactory`), with connect timeout, fast fail after a failed connect, and
//! bootstraps.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::bootstrap::{BoxedIo, ClientBootstrap};
use crate::client::TransportClient;
use crate::conf::TransportConf;
use crate::connection::{spawn_connection, Side};
use crate::error::TransportError;
use crate::handler::RpcHandler;

/// Creates and pools client connections. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct TransportClientFactory {
    inner: Arc<FactoryInner>,
}

struct FactoryInner {
    conf: TransportConf,
    handler: Arc<dyn RpcHandler>,
    bootstraps: Vec<Arc<dyn ClientBootstrap>>,
    pools: Mutex<HashMap<(String, u16), Arc<PeerPool>>>,
    closed: AtomicBool,
}

struct Slot {
    client: Mutex<Option<TransportClient>>,
    /// Held while connecting, so concurrent callers for one slot make one connection.
    connecting: tokio::sync::Mutex<()>,
}

struct PeerPool {
    slots: Vec<Slot>,
    failures: Mutex<FailState>,
}

#[derive(Default)]
struct FailState {
    consecutive: u32,
    last: Option<Instant>,
}

impl std::fmt::Debug for TransportClientFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportClientFactory")
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl TransportClientFactory {
    /// A factory whose connections send incoming requests (connections are bidirectional) to
    /// `handler`.
    pub fn new(conf: TransportConf, handler: Arc<dyn RpcHandler>) -> Self {
        Self::with_bootstraps(conf, handler, Vec::new())
    }

    /// As [`TransportClientFactory::new`], running `bootstraps` in order on every new
    /// connection before it is handed out.
    pub fn with_bootstraps(
        conf: TransportConf,
        handler: Arc<dyn RpcHandler>,
        bootstraps: Vec<Arc<dyn ClientBootstrap>>,
    ) -> Self {
        TransportClientFactory {
            inner: Arc::new(FactoryInner {
                conf,
                handler,
                bootstraps,
                pools: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The configuration in use.
    pub fn conf(&self) -> &TransportConf {
        &self.inner.conf
    }

    /// `host:port` as connections name it, unless the factory is closed.
    fn open_addr(&self, host: &str, port: u16) -> Result<String, TransportError> {
        let addr = Self::addr(host, port);
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(TransportError::FactoryClosed { addr });
        }
        Ok(addr)
    }

    fn addr(host: &str, port: u16) -> String {
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }

    /// A pooled client to `host:port`: an active pooled connection if there is one in the
    /// chosen slot (one of `num_connections_per_peer`, picked at random), otherwise a new one
    /// that replaces it. After a failed connect, further connects to the peer fail at once for
    /// the fast-fail window (growing with consecutive failures).
    pub async fn create_client(
        &self,
        host: &str,
        port: u16,
    ) -> Result<TransportClient, TransportError> {
        let addr = self.open_addr(host, port)?;
        let pool = {
            let mut pools = self.inner.pools.lock().expect("pool lock");
            let key = (host.to_string(), port);
            if !pools.contains_key(&key) {
                // A new peer: forget the ones whose connections are all gone first, so that the
                // map does not keep an entry for every peer ever seen.
                pools.retain(|_, p| !p.is_unused(&self.inner.conf));
            }
            pools
                .entry(key)
                .or_insert_with(|| {
                    Arc::new(PeerPool {
                        slots: (0..self.inner.conf.num_connections_per_peer.max(1))
                            .map(|_| Slot {
                                client: Mutex::new(None),
                                connecting: tokio::sync::Mutex::new(()),
                            })
                            .collect(),
                        failures: Mutex::new(FailState::default()),
                    })
                })
                .clone()
        };
        let index = if pool.slots.len() == 1 {
            0
        } else {
            rand::random_range(0..pool.slots.len())
        };
        let slot = &pool.slots[index];
        if let Some(c) = active(slot) {
            return Ok(c);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = active(slot) {
            return Ok(c);
        }
        if self.inner.conf.fast_fail {
            let f = pool.failures.lock().expect("failure lock");
            if let Some(last) = f.last {
                let window = self.inner.conf.fast_fail_window(f.consecutive);
                if last.elapsed() < window {
                    return Err(TransportError::FastFail { addr, window });
                }
            }
        }
        match self.connect(host, port, &addr).await {
            Ok(client) => {
                *pool.failures.lock().expect("failure lock") = FailState::default();
                *slot.client.lock().expect("slot lock") = Some(client.clone());
                if self.inner.closed.load(Ordering::Acquire) {
                    client.close();
                    return Err(TransportError::FactoryClosed { addr });
                }
                Ok(client)
            }
            Err(e) => {
                let mut f = pool.failures.lock().expect("failure lock");
                f.consecutive = f.consecutive.saturating_add(1);
                f.last = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// A new connection to `host:port` that is not pooled (the caller closes it).
    pub async fn create_unmanaged_client(
        &self,
        host: &str,
        port: u16,
    ) -> Result<TransportClient, TransportError> {
        let addr = self.open_addr(host, port)?;
        self.connect(host, port, &addr).await
    }

    async fn connect(
        &self,
        host: &str,
        port: u16,
        addr: &str,
    ) -> Result<TransportClient, TransportError> {
        let conf = &self.inner.conf;
        let started = Instant::now();
        let connect = async {
            let mut last_err = None;
            for sa in tokio::net::lookup_host((host, port)).await? {
                match TcpStream::connect(sa).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last_err = Some(e),
                }
            }
            Err(last_err.unwrap_or_else(|| std::io::Error::other(format!("no address for {host}"))))
        };
        let result = match conf.connect_timeout.filter(|t| !t.is_zero()) {
            Some(t) => match tokio::time::timeout(t, connect).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(TransportError::ConnectTimeout {
                        addr: addr.to_string(),
                        timeout: t,
                    })
                }
            },
            None => connect.await,
        };
        let stream = result.map_err(|e| TransportError::ConnectFailed {
            addr: addr.to_string(),
            source: Arc::new(e),
        })?;
        let io_err = |e| TransportError::ConnectFailed {
            addr: addr.to_string(),
            source: Arc::new(e),
        };
        crate::socket::configure(&stream, conf).map_err(io_err)?;
        let remote = stream.peer_addr().map_err(io_err)?;
        let local = stream.local_addr().map_err(io_err)?;
        let handler = self.inner.handler.clone();
        let client = if self.inner.bootstraps.is_empty() {
            spawn_connection(stream, local, remote, conf, handler, Side::Client, None)
        } else {
            let mut io: BoxedIo = Box::new(stream);
            for b in &self.inner.bootstraps {
                io = b.bootstrap_to(host, remote, io).await.inspect_err(|e| {
                    if matches!(e, TransportError::AuthFailed { .. }) {
                        crate::metrics::auth_failed();
                    }
                })?;
            }
            spawn_connection(io, local, remote, conf, handler, Side::Client, None)
        };
        crate::metrics::connection_opened(false);
        tracing::debug!(peer = %remote, elapsed_ms = started.elapsed().as_millis() as u64, "Successfully created connection to {addr}");
        Ok(client)
    }

    /// Peers with an entry in the pool. Entries whose connections are all gone (and whose
    /// fast-fail window has passed) are dropped when an entry for a new peer is made.
    pub fn pooled_peers(&self) -> usize {
        self.inner.pools.lock().expect("pool lock").len()
    }

    /// Close every pooled connection; later `create_client` calls fail.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let pools: Vec<_> = self
            .inner
            .pools
            .lock()
            .expect("pool lock")
            .drain()
            .map(|(_, p)| p)
            .collect();
        for pool in pools {
            for slot in &pool.slots {
                if let Some(c) = slot.client.lock().expect("slot lock").take() {
                    c.close();
                }
            }
        }
    }
}

impl PeerPool {
    /// No active or connecting connection, and no failure whose fast-fail window is still open:
    /// the entry can be dropped (a later `create_client` makes a new one).
    fn is_unused(&self, conf: &TransportConf) -> bool {
        let idle = self
            .slots
            .iter()
            .all(|s| active(s).is_none() && s.connecting.try_lock().is_ok());
        let f = self.failures.lock().expect("failure lock");
        let failing = f
            .last
            .is_some_and(|last| last.elapsed() < conf.fast_fail_window(f.consecutive));
        idle && !failing
    }
}

fn active(slot: &Slot) -> Option<TransportClient> {
    slot.client
        .lock()
        .expect("slot lock")
        .as_ref()
        .filter(|c| c.is_active())
        .cloned()
}
