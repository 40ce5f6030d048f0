//! A fault-injecting TCP proxy for the faults network namespaces cannot make on this kernel (no
//! `netem`): a delay in each direction, a blackhole, a reset after N bytes, a throttle.
//!
//! Each accepted connection gets a connection to the target and, per direction, a reader and a
//! writer task joined by a small bounded queue (so the proxy holds at most a few hundred KiB per
//! direction and back-pressure reaches the sender through TCP). A chunk is stamped when read and
//! written `delay` later, so a delay adds latency without cutting throughput. A blackhole holds
//! every byte (nothing is read or written, as when a link silently drops packets and TCP keeps
//! retransmitting); lifting it lets held bytes flow again. A reset forwards exactly N more bytes
//! from the client, then aborts both sockets with RST (`SO_LINGER` 0), cutting a frame in the
//! middle.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Bytes read at once; also the throttle's granularity.
const CHUNK: usize = 16 * 1024;
/// Chunks queued per direction between reader and writer.
const QUEUE: usize = 16;

/// The faults applied to every connection (current and future) of a [`FaultProxy`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Added to every byte going from the client to the target.
    pub delay_up: Duration,
    /// Added to every byte going from the target to the client.
    pub delay_down: Duration,
    /// Hold every byte in both directions until lifted.
    pub blackhole: bool,
    /// Reset a connection once this many more bytes came from its client (counted from when
    /// the fault was set).
    pub reset_after: Option<u64>,
    /// Bytes per second in each direction.
    pub throttle: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct Shared {
    faults: Faults,
    /// Bumped when `reset_after` is set, so that connections count from that moment.
    reset_epoch: u64,
    closed: bool,
}

/// Counters of what the proxy did.
#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    resets: AtomicU64,
}

/// A running proxy on 127.0.0.1; stops (dropping every connection) when dropped.
pub struct FaultProxy {
    address: SocketAddr,
    shared: watch::Sender<Shared>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// What a reader hands its writer.
enum Chunk {
    Data(Instant, Vec<u8>),
    /// The reader saw end of file: pass it on.
    Eof,
    /// Write what came before, then reset the connection.
    Reset,
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `target`, on the runtime `rt`.
    pub fn start(target: SocketAddr, rt: &tokio::runtime::Handle) -> io::Result<FaultProxy> {
        let listener = {
            let _entered = rt.enter();
            let std = std::net::TcpListener::bind("127.0.0.1:0")?;
            std.set_nonblocking(true)?;
            TcpListener::from_std(std)?
        };
        let address = listener.local_addr()?;
        let (shared, rx) = watch::channel(Shared::default());
        let counters = Arc::new(Counters::default());
        rt.spawn(accept_loop(listener, target, rx, counters.clone()));
        Ok(FaultProxy {
            address,
            shared,
            counters,
        })
    }

    /// Where clients connect.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Replaces the faults.
    pub fn set(&self, faults: Faults) {
        self.shared.send_modify(|s| {
            if faults.reset_after.is_some() {
                s.reset_epoch += 1;
            }
            s.faults = faults;
        });
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Connections reset by a `reset_after` fault so far.
    pub fn resets(&self) -> u64 {
        self.counters.resets.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.send_modify(|s| s.closed = true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mut shared: watch::Receiver<Shared>,
    counters: Arc<Counters>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shared.wait_for(|s| s.closed) => return,
        };
        let Ok((client, _)) = accepted else { continue };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            if let Err(e) = relay(client, target, shared, counters).await {
                tracing::debug!(error = %e, "proxy connection ended");
            }
        });
    }
}

/// How a relay task ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Its direction finished (end of file passed on).
    Done,
    /// A `reset_after` fault is due.
    ResetDue,
    /// A socket failed; the other side is reset too.
    Failed,
}

async fn relay(
    client: TcpStream,
    target: SocketAddr,
    mut shared: watch::Receiver<Shared>,
    counters: Arc<Counters>,
) -> io::Result<()> {
    // A blackholed link lets nothing through, a connection attempt included.
    let _ = shared.wait_for(|s| !s.faults.blackhole || s.closed).await;
    if shared.borrow().closed {
        return Ok(());
    }
    let server = TcpStream::connect(target).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client, server) = (Arc::new(client), Arc::new(server));
    let (events_tx, mut events) = mpsc::channel(4);
    let (up_tx, up_rx) = mpsc::channel(QUEUE);
    let (down_tx, down_rx) = mpsc::channel(QUEUE);
    let tasks = [
        report(
            read_side(client.clone(), up_tx, shared.clone(), true),
            events_tx.clone(),
        ),
        report(
            write_side(server.clone(), up_rx, shared.clone(), true),
            events_tx.clone(),
        ),
        report(
            read_side(server.clone(), down_tx, shared.clone(), false),
            events_tx.clone(),
        ),
        report(
            write_side(client.clone(), down_rx, shared.clone(), false),
            events_tx,
        ),
    ];
    // The connection ends when both directions are done, when a reset is due, when a socket
    // fails (the other side is then reset too), or when the proxy stops.
    let mut done = 0;
    let mut outcome = Outcome::Done;
    while done < tasks.len() {
        tokio::select! {
            e = events.recv() => match e {
                Some(Outcome::Done) => done += 1,
                Some(other) => { outcome = other; break; }
                None => break,
            },
            _ = shared.wait_for(|s| s.closed) => { outcome = Outcome::Failed; break; }
        }
    }
    for t in &tasks {
        t.abort();
    }
    if outcome != Outcome::Done {
        if outcome == Outcome::ResetDue {
            counters.resets.fetch_add(1, Ordering::Relaxed);
        }
        // Closing with SO_LINGER 0 sends RST instead of FIN.
        for s in [&client, &server] {
            socket2::SockRef::from(s.as_ref()).set_linger(Some(Duration::ZERO))?;
        }
    }
    Ok(())
}

fn report(
    task: impl std::future::Future<Output = Outcome> + Send + 'static,
    events: mpsc::Sender<Outcome>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let outcome = task.await;
        let _ = events.send(outcome).await;
    })
}

fn held(shared: &Shared) -> bool {
    shared.faults.blackhole && !shared.closed
}

/// Reads one direction into the queue; counts the client's bytes for a reset fault.
async fn read_side(
    from: Arc<TcpStream>,
    to_writer: mpsc::Sender<Chunk>,
    mut shared: watch::Receiver<Shared>,
    up: bool,
) -> Outcome {
    let mut epoch = shared.borrow().reset_epoch;
    let mut since_fault = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        if shared.wait_for(|s| !held(s)).await.is_err() {
            return Outcome::Done;
        }
        let n = match read_some(&from, &mut buf).await {
            Ok(0) => {
                let _ = to_writer.send(Chunk::Eof).await;
                return Outcome::Done;
            }
            Ok(n) => n,
            Err(_) => return Outcome::Failed,
        };
        let (limit, current_epoch) = {
            let s = shared.borrow();
            (s.faults.reset_after, s.reset_epoch)
        };
        if current_epoch != epoch {
            epoch = current_epoch;
            since_fault = 0;
        }
        let mut take = n;
        let mut reset = false;
        if let (true, Some(limit)) = (up, limit) {
            if since_fault + n as u64 >= limit {
                take = limit.saturating_sub(since_fault) as usize;
                reset = true;
            }
        }
        since_fault += take as u64;
        if take > 0
            && to_writer
                .send(Chunk::Data(Instant::now(), buf[..take].to_vec()))
                .await
                .is_err()
        {
            return Outcome::Failed;
        }
        if reset {
            // The writer resets the connection once the bytes before it are written.
            let _ = to_writer.send(Chunk::Reset).await;
            return Outcome::Done;
        }
    }
}

/// Writes one direction from the queue, applying delay, blackhole and throttle.
async fn write_side(
    to: Arc<TcpStream>,
    mut from_reader: mpsc::Receiver<Chunk>,
    mut shared: watch::Receiver<Shared>,
    up: bool,
) -> Outcome {
    while let Some(chunk) = from_reader.recv().await {
        let (read_at, data) = match chunk {
            Chunk::Data(read_at, data) => (read_at, data),
            Chunk::Eof => {
                let _ = socket2::SockRef::from(to.as_ref()).shutdown(Shutdown::Write);
                return Outcome::Done;
            }
            Chunk::Reset => return Outcome::ResetDue,
        };
        let delay = {
            let f = &shared.borrow().faults;
            if up {
                f.delay_up
            } else {
                f.delay_down
            }
        };
        tokio::time::sleep_until(read_at + delay).await;
        if shared.wait_for(|s| !held(s)).await.is_err() {
            return Outcome::Done;
        }
        let throttle = shared.borrow().faults.throttle;
        if write_all(&to, &data).await.is_err() {
            return Outcome::Failed;
        }
        if let Some(rate) = throttle.filter(|r| *r > 0) {
            tokio::time::sleep(Duration::from_secs_f64(data.len() as f64 / rate as f64)).await;
        }
    }
    Outcome::Done
}

async fn read_some(s: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        s.readable().await?;
        match s.try_read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

async fn write_all(s: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        s.writable().await?;
        match s.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
