//! `TransportServer`: binds (with Spark's port retries), accepts, runs one connection task per
//! accepted socket.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{watch, Notify};

use crate::bootstrap::{BoxedIo, ServerBootstrap};
use crate::client::TransportClient;
use crate::conf::TransportConf;
use crate::connection::{spawn_connection, Side};
use crate::error::TransportError;
use crate::handler::RpcHandler;

/// A listening server. Dropping it closes it (as [`TransportServer::close`]).
pub struct TransportServer {
    inner: Arc<ServerInner>,
}

struct ServerInner {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    /// Number of live tasks (accept loop + connections); 0 once fully closed.
    alive: watch::Sender<usize>,
    connections: Mutex<HashMap<u64, TransportClient>>,
    /// Accepted connections still in their handshake (authentication, TLS): not connections
    /// yet, but they hold a place under the cap and a descriptor, so they can be shed too.
    handshakes: Mutex<HashMap<u64, Handshake>>,
    next_handshake: AtomicU64,
}

/// A connection in its handshake, as the shedding sees it.
struct Handshake {
    peer: SocketAddr,
    opened: Instant,
    /// Ends the handshake (the socket is then dropped).
    shed: Arc<Notify>,
}

/// Takes a handshake off the server's list when it ends, however it ends.
struct HandshakeEntry<'a> {
    inner: &'a ServerInner,
    id: u64,
}

impl Drop for HandshakeEntry<'_> {
    fn drop(&mut self) {
        lock(&self.inner.handshakes).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for TransportServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportServer")
            .field("local_addr", &self.inner.local_addr)
            .finish()
    }
}

/// The port tried at attempt `offset` when starting from `port` (Spark wraps within
/// 1024..=65535).
pub fn port_for_attempt(port: u16, offset: u32) -> u16 {
    if port == 0 {
        return 0;
    }
    ((u32::from(port) + offset - 1024) % (65536 - 1024) + 1024) as u16
}

async fn bind_once(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Bind `host:port` with Spark's `startServiceOnPort` retries: a taken port is retried upward,
/// up to `port_max_retries` times.
pub async fn bind_with_retries(
    conf: &TransportConf,
    host: &str,
    port: u16,
) -> Result<TcpListener, TransportError> {
    if port != 0 && port < 1024 {
        return Err(TransportError::InvalidPort { port });
    }
    let service = &conf.service_name;
    let ip = tokio::net::lookup_host((host, 0))
        .await
        .map_err(|e| bind_error(service, port, 0, e))?
        .next()
        .map(|a| a.ip())
        .ok_or_else(|| {
            bind_error(
                service,
                port,
                0,
                std::io::Error::other(format!("cannot resolve {host}")),
            )
        })?;
    let max_retries = if port == 0 { 0 } else { conf.port_max_retries };
    let mut offset = 0;
    loop {
        let try_port = port_for_attempt(port, offset);
        match bind_once(SocketAddr::new(ip, try_port), conf.backlog).await {
            Ok(l) => {
                tracing::info!(service = %service, addr = %l.local_addr().map_err(|e| bind_error(service, port, offset, e))?, "Successfully started service");
                return Ok(l);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && offset < max_retries => {
                tracing::warn!(
                    "Service '{service}' could not bind on port {try_port}. Attempting port {}.",
                    port_for_attempt(port, offset + 1)
                );
                offset += 1;
            }
            Err(e) => return Err(bind_error(service, port, offset, e)),
        }
    }
}

fn bind_error(service: &str, port: u16, retries: u32, e: std::io::Error) -> TransportError {
    let message = if port == 0 {
        format!(
            "{e}: Service '{service}' failed after {retries} retries on a random free port! \
             Consider explicitly setting the appropriate binding address for the service \
             '{service}' (for example spark.driver.bindAddress for SparkDriver) to the correct \
             binding address."
        )
    } else {
        format!(
            "{e}: Service '{service}' failed after {retries} retries (starting from {port})! \
             Consider explicitly setting the appropriate port for the service '{service}' (for \
             example spark.ui.port for SparkUI) to an available port or increasing \
             spark.port.maxRetries."
        )
    };
    TransportError::BindFailed {
        service: service.to_string(),
        port,
        message,
        source: Arc::new(e),
    }
}

impl TransportServer {
    /// Bind `host:port` (port 0 = ephemeral; otherwise port, port+1, ... up to
    /// `conf.port_max_retries`) and start accepting. Requests go to `handler`.
    pub async fn bind(
        conf: TransportConf,
        host: &str,
        port: u16,
        handler: Arc<dyn RpcHandler>,
    ) -> Result<TransportServer, TransportError> {
        Self::bind_with_bootstraps(conf, host, port, handler, Vec::new()).await
    }

    /// As [`TransportServer::bind`], running `bootstraps` in order on every accepted connection.
    pub async fn bind_with_bootstraps(
        conf: TransportConf,
        host: &str,
        port: u16,
        handler: Arc<dyn RpcHandler>,
        bootstraps: Vec<Arc<dyn ServerBootstrap>>,
    ) -> Result<TransportServer, TransportError> {
        let listener = bind_with_retries(&conf, host, port).await?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| bind_error(&conf.service_name, port, 0, e))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (alive, _) = watch::channel(1usize);
        let inner = Arc::new(ServerInner {
            local_addr,
            shutdown,
            alive,
            connections: Mutex::new(HashMap::new()),
            handshakes: Mutex::new(HashMap::new()),
            next_handshake: AtomicU64::new(0),
        });
        let span = tracing::info_span!("transport_server", addr = %local_addr, service = %conf.service_name);
        tokio::spawn(tracing::Instrument::instrument(
            accept_loop(
                listener,
                inner.clone(),
                shutdown_rx,
                Arc::new(conf),
                handler,
                Arc::new(bootstraps),
            ),
            span,
        ));
        Ok(TransportServer { inner })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.inner.local_addr.port()
    }

    /// Handles of the currently open connections.
    pub fn connections(&self) -> Vec<TransportClient> {
        self.inner
            .connections
            .lock()
            .expect("connections lock")
            .values()
            .cloned()
            .collect()
    }

    /// Stop accepting and close every connection (their outstanding requests fail). Returns at
    /// once; [`TransportServer::closed`] waits for the end.
    pub fn close(&self) {
        self.inner.shutdown.send_replace(true);
        for c in self.connections() {
            c.close();
        }
    }

    /// Wait until the listener is released and every connection task has finished.
    pub async fn closed(&self) {
        let mut rx = self.inner.alive.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

impl Drop for TransportServer {
    fn drop(&mut self) {
        self.close();
    }
}

fn task_started(inner: &ServerInner) {
    inner.alive.send_modify(|n| *n += 1);
}

fn task_finished(inner: &ServerInner) {
    inner.alive.send_modify(|n| *n -= 1);
}

/// Pause of the accept loop after a failed accept, or at the connection cap.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Whether an accept error means the process is out of descriptors (EMFILE, ENFILE) or memory.
fn out_of_resources(e: &std::io::Error) -> bool {
    const ENFILE: i32 = 23;
    const EMFILE: i32 = 24;
    matches!(e.raw_os_error(), Some(ENFILE | EMFILE)) || e.kind() == std::io::ErrorKind::OutOfMemory
}

/// Closes the connection that has waited longest without completing a frame (or its handshake),
/// if any: a peer that connects and stalls must not keep a well-behaved one out. Returns whether
/// one was shed.
fn shed_stalled(inner: &ServerInner, why: &str) -> bool {
    let connection = lock(&inner.connections)
        .values()
        .filter(|c| c.is_active() && !c.shared.frame_seen.load(Ordering::Acquire))
        .min_by_key(|c| c.shared.opened)
        .cloned();
    let handshake = lock(&inner.handshakes)
        .values()
        .min_by_key(|h| h.opened)
        .map(|h| (h.peer, h.opened, h.shed.clone()));
    let older = |c: &TransportClient| handshake.as_ref().is_none_or(|h| c.shared.opened <= h.1);
    if let Some(c) = connection.filter(older) {
        tracing::warn!(peer = %c.remote_addr(), stalled_ms = c.shared.opened.elapsed().as_millis() as u64, "{why}: closing the connection stalled longest without a complete frame");
        c.close();
        return true;
    }
    if let Some((peer, opened, shed)) = handshake {
        tracing::warn!(%peer, stalled_ms = opened.elapsed().as_millis() as u64, "{why}: closing the connection stalled longest in its handshake");
        shed.notify_one();
        return true;
    }
    false
}

/// Open connections (tasks besides the accept loop).
fn open_connections(inner: &ServerInner) -> usize {
    inner.alive.borrow().saturating_sub(1)
}

/// Waits until a connection ends, or the backoff passes, or the server shuts down; false on
/// shutdown.
async fn back_off(inner: &ServerInner, shutdown: &mut watch::Receiver<bool>) -> bool {
    let mut alive = inner.alive.subscribe();
    alive.borrow_and_update();
    tokio::select! {
        _ = shutdown.wait_for(|s| *s) => false,
        _ = tokio::time::sleep(ACCEPT_BACKOFF) => true,
        _ = alive.changed() => true,
    }
}

async fn accept_loop(
    listener: TcpListener,
    inner: Arc<ServerInner>,
    mut shutdown: watch::Receiver<bool>,
    conf: Arc<TransportConf>,
    handler: Arc<dyn RpcHandler>,
    bootstraps: Arc<Vec<Arc<dyn ServerBootstrap>>>,
) {
    let cap = conf.max_inbound_connections;
    loop {
        if cap > 0 && open_connections(&inner) >= cap {
            shed_stalled(
                &inner,
                "at the connection cap (rpc.io.maxInboundConnections)",
            );
            if !back_off(&inner, &mut shutdown).await {
                break;
            }
            continue;
        }
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                task_started(&inner);
                let (inner, conf, handler, bootstraps) = (
                    inner.clone(),
                    conf.clone(),
                    handler.clone(),
                    bootstraps.clone(),
                );
                // In the server's span: the connection's span (and its log lines) hang under it.
                tokio::spawn(tracing::Instrument::in_current_span(async move {
                    if !setup_connection(stream, peer, &inner, &conf, handler, &bootstraps).await {
                        task_finished(&inner);
                    }
                }));
            }
            Err(e) => {
                // Out of file descriptors and the like: make room, back off (no hot loop),
                // keep serving.
                tracing::error!(error = %e, open = open_connections(&inner), "accept failed");
                if out_of_resources(&e) {
                    shed_stalled(&inner, "out of file descriptors");
                }
                if !back_off(&inner, &mut shutdown).await {
                    break;
                }
            }
        }
    }
    drop(listener);
    tracing::debug!("server stopped accepting");
    task_finished(&inner);
}

/// Returns true when a connection task was started (it reports its own end).
async fn setup_connection(
    stream: TcpStream,
    peer: SocketAddr,
    inner: &Arc<ServerInner>,
    conf: &TransportConf,
    handler: Arc<dyn RpcHandler>,
    bootstraps: &[Arc<dyn ServerBootstrap>],
) -> bool {
    if let Err(e) = crate::socket::configure(&stream, conf) {
        tracing::warn!(%peer, error = %e, "could not set socket options");
    }
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "accepted socket has no local address");
            return false;
        }
    };
    let on_exit_inner = inner.clone();
    let on_exit: crate::connection::OnExit = Box::new(move |c| {
        on_exit_inner
            .connections
            .lock()
            .expect("connections lock")
            .remove(&c.id());
        task_finished(&on_exit_inner);
    });
    let client = if bootstraps.is_empty() {
        spawn_connection(
            stream,
            local,
            peer,
            conf,
            handler,
            Side::Server,
            Some(on_exit),
        )
    } else {
        let shed = Arc::new(Notify::new());
        let id = inner.next_handshake.fetch_add(1, Ordering::Relaxed);
        lock(&inner.handshakes).insert(
            id,
            Handshake {
                peer,
                opened: Instant::now(),
                shed: shed.clone(),
            },
        );
        let _entry = HandshakeEntry { inner, id };
        let handshake = async {
            let mut io: BoxedIo = Box::new(stream);
            for b in bootstraps {
                io = b.bootstrap(peer, io).await?;
            }
            Ok::<_, TransportError>(io)
        };
        let handshake = async {
            tokio::select! {
                r = handshake => r,
                _ = shed.notified() => Err(TransportError::Shed { peer }),
            }
        };
        let limit = conf.handshake_timeout.filter(|t| !t.is_zero());
        let done = match limit {
            Some(t) => tokio::time::timeout(t, handshake)
                .await
                .unwrap_or_else(|_| {
                    Err(TransportError::HandshakeTimeout {
                        peer,
                        after: t,
                        setting: format!("spark.{}.io.handshakeTimeout", conf.module),
                    })
                }),
            None => handshake.await,
        };
        let io = match done {
            Ok(io) => io,
            Err(e) => {
                match e {
                    // Logged where it was decided.
                    TransportError::Shed { .. } => {}
                    TransportError::AuthFailed { .. } => {
                        crate::metrics::auth_failed();
                        tracing::warn!(%peer, error = %e, "server bootstrap failed; connection closed");
                    }
                    _ => {
                        tracing::warn!(%peer, error = %e, "server bootstrap failed; connection closed")
                    }
                }
                return false;
            }
        };
        spawn_connection(io, local, peer, conf, handler, Side::Server, Some(on_exit))
    };
    crate::metrics::connection_opened(true);
    inner
        .connections
        .lock()
        .expect("connections lock")
        .insert(client.id(), client.clone());
    if !client.is_active() {
        // It ended before it was registered: its exit hook may have run already.
        inner
            .connections
            .lock()
            .expect("connections lock")
            .remove(&client.id());
    }
    if *inner.shutdown.borrow() {
        client.close();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_wrap_within_the_unprivileged_range() {
        assert_eq!(port_for_attempt(0, 5), 0);
        assert_eq!(port_for_attempt(5000, 0), 5000);
        assert_eq!(port_for_attempt(5000, 3), 5003);
        assert_eq!(port_for_attempt(65535, 1), 1024);
        assert_eq!(port_for_attempt(65534, 3), 1025);
    }
}
