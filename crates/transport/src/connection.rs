//! One connection's driver: a single task that owns the socket, reads bytes into the
//! [`ConnectionState`] and carries out the steps it returns (requests to the handler, responses
//! to the [`ResponseRouter`]), and writes queued frames in batches. Callers never touch the
//! socket: they push [`Command`]s on a channel.
//!
//! The protocol decisions (frames, upload reassembly, the first-frame gate, the byte budget, the
//! deadlines) are taken by the socket- and clock-free [`ConnectionState`]; this task only does
//! the IO, reads the clock and keeps the timer.

use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Sleep;
use tracing::Instrument;

use crate::budget::Inbound;
use crate::client::{ClientShared, Flush, TransportClient, WriteNow};
use crate::codec::{WriteQueue, MAX_IO_SLICES};
use crate::command::{queue_cost, Command, PendingKind, QUEUE_ENTRY_OVERHEAD};
use crate::conf::TransportConf;
use crate::connection_state::{ConnectionState, Step};
use crate::error::TransportError;
use crate::handler::{guarded, RpcHandler, RpcResponder};
use crate::liveness::{Deadlines, Verdict};
use crate::message::Message;
use crate::response::ResponseRouter;

/// Stop taking commands while this many bytes wait to be written.
const WRITE_HIGH_WATER: usize = 4 << 20;
/// Commands taken off the channel at once.
const COMMAND_BATCH: usize = 256;
/// Minimum free space before a read.
const READ_MIN_SPARE: usize = 8 * 1024;
/// Usual read buffer growth.
const READ_CHUNK: usize = 64 * 1024;
/// Below this many queued bytes, a write is put off once (the task yields to the others on its
/// worker first): tasks woken by the same batch of replies, or a message loop still answering a
/// batch of requests, then add their messages, and many leave in one write instead of one each.
const COALESCE_BELOW: usize = 64 * 1024;
/// Bytes one turn of the task writes before it yields to the other tasks of its IO thread: a
/// large body (a served file, encrypted on the way out) must not keep the other connections of
/// that thread waiting for its whole length.
const TURN_WRITE_MAX: usize = 1 << 20;
/// How long a closing connection keeps writing what is queued, and waits for its shutdown.
const LINGER: Duration = Duration::from_secs(1);

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// Called once when a connection's task ends.
pub(crate) type OnExit = Box<dyn FnOnce(&TransportClient) + Send>;

/// Which side opened the connection (for logs).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    Client,
    Server,
}

/// Start the task of an established connection and return its client handle.
pub(crate) fn spawn_connection<S>(
    io: S,
    local: SocketAddr,
    remote: SocketAddr,
    conf: &TransportConf,
    handler: Arc<dyn RpcHandler>,
    side: Side,
    on_exit: Option<OnExit>,
) -> TransportClient
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let id = NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed);
    let now = Instant::now();
    let inbound = Arc::new(Inbound::default());
    let shared = Arc::new(ClientShared {
        id,
        local,
        remote,
        tx,
        next_request_id: AtomicU64::new(u64::from(rand::random::<u32>())),
        closed: AtomicBool::new(false),
        close_notify: Notify::new(),
        ended: watch::Sender::new(None),
        queued_bytes: AtomicUsize::new(0),
        inbound: inbound.clone(),
        opened: now,
        frame_seen: AtomicBool::new(false),
        drained: Notify::new(),
        read_paused: AtomicBool::new(false),
        read_waker: std::sync::Mutex::new(None),
        flush: OnceLock::new(),
        client_id: OnceLock::new(),
    });
    let client = TransportClient { shared };
    let deadlines = Deadlines {
        connection_timeout: conf.connection_timeout.filter(|t| !t.is_zero()),
        close_idle: conf.close_idle_connections,
        first_frame: match side {
            Side::Server => conf.handshake_timeout.filter(|t| !t.is_zero()),
            Side::Client => None,
        },
    };
    let mut state = ConnectionState::new(
        remote,
        conf.max_frame_size,
        conf.max_queued_bytes_per_connection,
        deadlines,
        conf.module.clone(),
        now,
    );
    let rbuf = BytesMut::with_capacity(READ_CHUNK);
    let timer = match state.check_deadlines(now, 0, &rbuf) {
        Verdict::RecheckAt(Some(at)) => Some(Box::pin(tokio::time::sleep_until(at.into()))),
        _ => None,
    };
    let conn = Connection {
        io,
        peer: remote,
        client: client.clone(),
        handler,
        rx,
        cmds: Vec::with_capacity(COMMAND_BATCH),
        rbuf,
        state,
        frame_published: false,
        out: WriteQueue::new(),
        router: ResponseRouter::with_inbound(remote, inbound),
        timer,
        requested: false,
        needs_flush: false,
        write_deferred: false,
        turn_written: 0,
        waker: None,
        deferred: None,
        handing_now: false,
        stashed: None,
    };
    let conn = Arc::new(Mutex::new(conn));
    let flush: Weak<dyn Flush> = Arc::downgrade(&conn) as Weak<dyn Flush>;
    let _ = client.shared.flush.set(flush);
    let span = tracing::info_span!("connection", id, peer = %remote, local = %local, side = ?side);
    tokio::spawn(Connection::run(conn, on_exit).instrument(span));
    client
}

/// What one turn of the connection's task ends with.
enum Turn {
    /// Nothing more to do until woken.
    Pending,
    /// A lone request was read: hand it to the handler (outside the lock), then carry on.
    Deliver,
    /// The connection is done: closed cleanly, or failed.
    Done(Result<(), TransportError>),
}

/// A request read from the peer, for the handler, in the order read. A lone one is handed over
/// after the turn that read it, once the connection's lock is released (see
/// [`Connection::run`]); one of several that a read brought is handed over at once
/// (`Connection::collect`).
enum Delivery {
    Rpc(Bytes, RpcResponder),
    OneWay(Bytes),
    Upload {
        meta: Bytes,
        body: Bytes,
        responder: RpcResponder,
    },
}

impl Delivery {
    fn hand_to(self, handler: &dyn RpcHandler, client: &TransportClient) {
        match self {
            Delivery::Rpc(body, responder) => {
                let request_id = responder.request_id();
                if let Err(panic) = guarded(move || handler.receive(client, body, responder)) {
                    tracing::warn!(request_id, %panic, "RPC handler panicked; answered RpcFailure");
                }
            }
            Delivery::OneWay(body) => {
                if let Err(panic) = guarded(move || handler.receive_one_way(client, body)) {
                    tracing::warn!(%panic, "one-way handler panicked");
                }
            }
            Delivery::Upload {
                meta,
                body,
                responder,
            } => {
                let request_id = responder.request_id();
                if let Err(panic) =
                    guarded(move || handler.receive_stream(client, meta, body, responder))
                {
                    tracing::warn!(request_id, %panic, "upload handler panicked");
                }
            }
        }
    }
}

struct Connection<S> {
    io: S,
    peer: SocketAddr,
    client: TransportClient,
    handler: Arc<dyn RpcHandler>,
    rx: mpsc::UnboundedReceiver<Command>,
    cmds: Vec<Command>,
    rbuf: BytesMut,
    /// The protocol: frames, uploads, the budget and the deadlines (socket- and clock-free).
    state: ConnectionState,
    /// The first complete frame has been published to the handle (for the server's shedding).
    frame_published: bool,
    out: WriteQueue,
    router: ResponseRouter,
    /// Fires when the deadlines are to be checked again.
    timer: Option<Pin<Box<Sleep>>>,
    /// A request was queued since the last look at the clock.
    requested: bool,
    needs_flush: bool,
    /// The write of what is queued was put off once, to let other tasks add to it.
    write_deferred: bool,
    /// Bytes written in this turn of the task (or of a producer in the flush hook).
    turn_written: usize,
    /// The task, for the flush hook to wake when it leaves work behind.
    waker: Option<Waker>,
    /// The lone request read in this turn, handed to the handler when it ends (see
    /// [`collect`](Self::collect)).
    deferred: Option<Delivery>,
    /// The read being decoded brought several requests: they go to the handler as decoded.
    handing_now: bool,
    /// A step handled under the lock (a response, a stream or chunk request) read while
    /// the request read before it still waits to be handed over: it waits for that one, so that
    /// everything the peer sent is acted on in the order it was sent. A stream or chunk request
    /// read over the byte budget waits here too, until the answers queued before it are written.
    stashed: Option<Step>,
}

fn lock<S>(conn: &Mutex<Connection<S>>) -> MutexGuard<'_, Connection<S>> {
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

/// The flush hook: a producer thread that just queued messages writes them itself when the
/// connection's task is not busy (it holds the connection while it runs); otherwise the task
/// writes them as usual.
impl<S> Flush for Mutex<Connection<S>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn try_flush(&self, cmd: Option<Command>, when: WriteNow) -> Result<(), Option<Command>> {
        let Ok(mut conn) = self.try_lock() else {
            return Err(cmd);
        };
        // Closed under the lock: the task has failed (or is about to fail) what it holds, so a
        // request registered now would never be answered; queued instead, it fails with the rest.
        let closed = conn.client.shared.closed.load(Ordering::Acquire);
        if closed || (when == WriteNow::WhenAlone && !conn.router.one_at_a_time()) {
            return Err(cmd);
        }
        conn.flush_now(cmd);
        Ok(())
    }
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(conn: Arc<Mutex<Self>>, on_exit: Option<OnExit>) {
        tracing::debug!("connection active");
        let (client, handler, peer) = {
            let c = lock(&conn);
            (c.client.clone(), c.handler.clone(), c.peer)
        };
        if let Err(panic) = guarded(|| handler.channel_active(&client)) {
            tracing::error!(%panic, "channel_active panicked");
        }
        let shared = client.shared.clone();
        // A lone request a turn read is handed to the handler after the turn, with the lock
        // released: a handler that answers at once from another thread (a message loop woken
        // by the delivery) then finds the connection free and writes its answer itself,
        // instead of finding it held by this task (or by this task preempted by that very
        // wake-up) and handing the answer back to it. (Requests that arrive together are
        // handed over during the turn: see `Connection::collect`.)
        let turns = poll_fn(|cx| loop {
            let (turn, deferred) = {
                let mut c = lock(&conn);
                let turn = c.poll_run(cx);
                (turn, c.deferred.take())
            };
            if let Some(delivery) = deferred {
                delivery.hand_to(&*handler, &client);
            }
            match turn {
                Turn::Deliver => continue,
                Turn::Pending => return Poll::Pending,
                Turn::Done(result) => return Poll::Ready(result),
            }
        });
        let result = tokio::select! {
            biased;
            _ = shared.close_notify.notified() => Ok(()),
            r = turns => r,
        };
        if result.is_ok() {
            // A clean close: what is queued (a failure answer, say) still goes out first, for
            // a short while, unless the peer does not read.
            let flushed = poll_fn(|cx| lock(&conn).poll_write_all(cx));
            let _ = tokio::time::timeout(LINGER, flushed).await;
        }
        shared.closed.store(true, Ordering::SeqCst);
        let failure = match &result {
            Ok(()) => TransportError::ConnectionClosed { peer },
            Err(e) => e.clone(),
        };
        let outstanding = lock(&conn).fail_everything(&failure);
        // Every waiter of this connection (queue room, close) wakes with its failure.
        shared.ended.send_replace(Some(failure));
        shared.drained.notify_waiters();
        match &result {
            Ok(()) => tracing::debug!(outstanding, "connection closed"),
            Err(e) => {
                if e.is_bad_input() {
                    tracing::warn!(error = %e, outstanding, "closing connection: bad input");
                } else {
                    tracing::warn!(error = %e, outstanding, "closing connection after error");
                }
                if let Err(panic) = guarded(|| handler.exception_caught(e, &client)) {
                    tracing::error!(%panic, "exception_caught panicked");
                }
            }
        }
        if let Err(panic) = guarded(|| handler.channel_inactive(&client)) {
            tracing::error!(%panic, "channel_inactive panicked");
        }
        // Shut down the write side first so a peer sees EOF promptly even if it holds a
        // half-read buffer; then the socket is dropped (closed) before the exit hook runs, so a
        // server that waits for its connections has released their descriptors. (A producer
        // in the flush hook at this instant holds the connection a moment longer.)
        let shutdown = poll_fn(|cx| Pin::new(&mut lock(&conn).io).poll_shutdown(cx));
        let _ = tokio::time::timeout(LINGER, shutdown).await;
        drop(conn);
        if let Some(f) = on_exit {
            f(&client);
        }
    }

    /// Fails the requests still queued (never sent) and the outstanding ones; returns how many
    /// were outstanding.
    fn fail_everything(&mut self, failure: &TransportError) -> usize {
        self.rx.close();
        while let Ok(cmd) = self.rx.try_recv() {
            if let Command::Request(_, pending) = cmd {
                match pending {
                    PendingKind::Rpc(id, p) => self.router.add_rpc(id, p),
                    PendingKind::Chunk(c, r) => self.router.add_chunk(c, r),
                    PendingKind::Stream(s, r) => self.router.add_stream(s, r),
                }
            }
        }
        let outstanding = self.router.outstanding();
        self.router.fail_all(failure);
        outstanding
    }

    /// The flush hook's work, on a producer's thread: takes the queued commands, then `cmd`, and
    /// writes what it can without waiting. Registers no waker of its own; when something is left
    /// (the socket is full) the task is woken to carry on.
    fn flush_now(&mut self, cmd: Option<Command>) {
        let mut taken = 0;
        while let Ok(cmd) = self.rx.try_recv() {
            if let Command::Send(m) | Command::Request(m, _) = &cmd {
                taken += queue_cost(m);
            }
            self.on_command(cmd);
        }
        if taken > 0 {
            let shared = &self.client.shared;
            shared.queued_bytes.fetch_sub(taken, Ordering::Relaxed);
            shared.drained.notify_waiters();
        }
        if let Some(cmd) = cmd {
            self.on_command(cmd);
        }
        let mut cx = Context::from_waker(Waker::noop());
        self.turn_written = 0;
        let wrote = self.poll_write(&mut cx);
        // The task may not run again before the deadlines are checked: what it would note, this
        // thread notes.
        self.note_activity(matches!(wrote, Ok(true)), false);
        if wrote.is_err() || !self.out.is_empty() || self.needs_flush {
            // Left for the task (which also meets the error again and closes).
            if let Some(w) = &self.waker {
                w.wake_by_ref();
            }
        }
    }

    /// Notes read or write progress and a request issued since the last note, for the
    /// deadlines (read from the clock only when deadlines are kept).
    fn note_activity(&mut self, io_progress: bool, read_progress: bool) {
        if self.timer.is_some() && (io_progress || self.requested) {
            self.state
                .on_progress(Instant::now(), io_progress, read_progress, self.requested);
            self.requested = false;
        }
    }

    /// Writes what is queued until nothing is left.
    fn poll_write_all(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        self.write_deferred = true;
        loop {
            match self.poll_write(cx)? {
                _ if self.out.is_empty() && !self.needs_flush => return Poll::Ready(Ok(())),
                true => continue,
                false => return Poll::Pending,
            }
        }
    }

    /// Writes queued bytes until the socket is full, nothing is queued, or this turn has
    /// written [`TURN_WRITE_MAX`] bytes; flushes after. Returns whether it made progress.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, TransportError> {
        let mut progress = false;
        while !self.out.is_empty() {
            self.out
                .pull()
                .map_err(|e| TransportError::io(self.peer, e))?;
            let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
            let n = self.out.fill_slices(&mut slices);
            match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => {
                    return Err(TransportError::io(
                        self.peer,
                        std::io::ErrorKind::WriteZero.into(),
                    ))
                }
                Poll::Ready(Ok(written)) => {
                    self.out.advance(written);
                    self.write_deferred = false;
                    self.needs_flush = true;
                    progress = true;
                    self.turn_written += written;
                    if self.turn_written >= TURN_WRITE_MAX {
                        break;
                    }
                }
                Poll::Ready(Err(e)) => return Err(TransportError::io(self.peer, e)),
                Poll::Pending => break,
            }
        }
        if self.out.is_empty() && self.needs_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(e)) => return Err(TransportError::io(self.peer, e)),
                Poll::Pending => {}
            }
        }
        Ok(progress)
    }

    /// Bytes the process holds for this peer (the byte budget's count).
    fn held(&self) -> usize {
        let shared = &self.client.shared;
        shared.queued_bytes.load(Ordering::Relaxed) + shared.inbound.held() + self.out.len()
    }

    /// Whether reading stops for the byte budget; if so, the task waits for releases.
    fn over_budget(&mut self, cx: &mut Context<'_>) -> bool {
        let was = self.state.budget_paused();
        let inbound = &self.client.shared.inbound;
        if self.state.over_budget(self.held()) {
            inbound.park(cx.waker());
            // Released between the count and the parking: look again.
            if !self.state.over_budget(self.held()) {
                inbound.unpark();
                return false;
            }
            if !was {
                tracing::debug!(
                    held = self.held(),
                    "reading paused: over the byte budget (rpc.io.maxQueuedBytesPerConnection)"
                );
            }
            return true;
        }
        if was {
            inbound.unpark();
            tracing::debug!("reading resumed: under half the byte budget");
        }
        false
    }

    /// One turn of the task: commands, writes, reads and the deadlines, until there is nothing
    /// left to do, requests to hand over, or a reason to let the other tasks run first.
    fn poll_run(&mut self, cx: &mut Context<'_>) -> Turn {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        self.turn_written = 0;
        loop {
            // 0. What waited behind the request handed over after the last turn.
            if self.stashed.is_some() {
                if let Err(e) = self.decode_all() {
                    return Turn::Done(Err(e));
                }
                if self.deferred.is_some() {
                    return Turn::Deliver;
                }
            }
            let mut progress = false;
            let mut io_progress = false;
            let mut read_progress = false;

            // 1. Take queued commands (encode them into the write queue).
            while self.out.len() < WRITE_HIGH_WATER {
                match self.rx.poll_recv_many(cx, &mut self.cmds, COMMAND_BATCH) {
                    Poll::Ready(0) => return Turn::Done(Ok(())),
                    Poll::Ready(_) => {
                        progress = true;
                        let mut cmds = std::mem::take(&mut self.cmds);
                        let mut taken = 0;
                        for cmd in cmds.drain(..) {
                            if let Command::Send(m) | Command::Request(m, _) = &cmd {
                                taken += queue_cost(m);
                            }
                            self.on_command(cmd);
                        }
                        self.cmds = cmds;
                        let shared = &self.client.shared;
                        shared.queued_bytes.fetch_sub(taken, Ordering::Relaxed);
                        shared.drained.notify_waiters();
                    }
                    Poll::Pending => break,
                }
            }

            // 2. Write what is queued; a small amount waits for one turn of the scheduler first.
            let defer =
                !self.out.is_empty() && !self.write_deferred && self.out.len() < COALESCE_BELOW;
            if defer {
                self.write_deferred = true;
            } else {
                match self.poll_write(cx) {
                    Ok(wrote) => {
                        progress |= wrote;
                        io_progress |= wrote;
                    }
                    Err(e) => return Turn::Done(Err(e)),
                }
            }

            // 3. Read and dispatch, unless the handler's side paused reading (backpressure) or
            //    the process holds too much for this peer (the byte budget).
            let paused = self.read_paused(cx) || self.over_budget(cx);
            for _ in 0..if paused { 0 } else { 4 } {
                let want = self.state.reserve_hint(&self.rbuf).max(READ_MIN_SPARE);
                if self.rbuf.capacity() - self.rbuf.len() < want {
                    self.rbuf.reserve(want.max(READ_CHUNK));
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                    Poll::Ready(Ok(0)) => return Turn::Done(self.state.on_eof(&self.rbuf)),
                    Poll::Ready(Ok(_)) => {
                        progress = true;
                        io_progress = true;
                        read_progress = true;
                        if let Err(e) = self.decode_all() {
                            return Turn::Done(Err(e));
                        }
                        if self.deferred.is_some() || self.over_budget(cx) {
                            break;
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        return Turn::Done(Err(TransportError::io(self.peer, e)))
                    }
                    Poll::Pending => break,
                }
            }

            self.note_activity(io_progress, read_progress);
            if defer {
                // Back of the run queue (a woken idle worker may take the task meanwhile): the
                // write happens on the next poll, after the tasks queued before it ran.
                cx.waker().wake_by_ref();
                return Turn::Pending;
            }
            if self.turn_written >= TURN_WRITE_MAX {
                // A long write (a large body): the other tasks of this thread go first.
                cx.waker().wake_by_ref();
                return Turn::Pending;
            }
            if self.deferred.is_some() {
                return Turn::Deliver;
            }
            if progress {
                continue;
            }

            // 4. Nothing to do: check the deadlines, then sleep until woken.
            if let Some(timer) = &mut self.timer {
                if timer.as_mut().poll(cx).is_ready() {
                    let outstanding = self.router.outstanding();
                    match self
                        .state
                        .check_deadlines(Instant::now(), outstanding, &self.rbuf)
                    {
                        Verdict::Close(dead) => {
                            return Turn::Done(Err(self.state.dead_error(dead)))
                        }
                        Verdict::RecheckAt(Some(at)) => {
                            timer.as_mut().reset(at.into());
                            continue;
                        }
                        Verdict::RecheckAt(None) => self.timer = None,
                    }
                }
            }
            return Turn::Pending;
        }
    }

    /// Whether reading is paused; if so, registers the task to be woken on resume.
    fn read_paused(&self, cx: &mut Context<'_>) -> bool {
        let shared = &self.client.shared;
        if !shared.read_paused.load(Ordering::Acquire) {
            return false;
        }
        *shared.read_waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(cx.waker().clone());
        // Resumed between the check and the registration: read now.
        shared.read_paused.load(Ordering::Acquire)
    }

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Send(msg) => self.out.push(&msg),
            Command::Request(msg, pending) => {
                match pending {
                    PendingKind::Rpc(id, p) => self.router.add_rpc(id, p),
                    PendingKind::Chunk(c, r) => self.router.add_chunk(c, r),
                    PendingKind::Stream(s, r) => self.router.add_stream(s, r),
                }
                self.out.push(&msg);
                self.requested = true;
            }
            Command::CancelRpc(id) => {
                if self.router.remove_rpc(id) {
                    tracing::debug!(request_id = id, "request cancelled by its caller");
                }
            }
            Command::CancelChunk(chunk) => {
                self.router.remove_chunk(chunk);
            }
        }
    }

    /// Carries out the steps of every complete frame read so far (requests are collected for
    /// the handler; see [`Delivery`]), stopping at a step that must wait for them.
    fn decode_all(&mut self) -> Result<(), TransportError> {
        self.handing_now = false;
        loop {
            let step = match self.stashed.take() {
                Some(step) => Ok(Some(step)),
                None => self.state.next_step(&mut self.rbuf),
            };
            if !self.frame_published && self.state.frame_seen() {
                // Before the handler hears of it: from now on the server does not shed this
                // connection as one that never completed a frame.
                self.frame_published = true;
                self.client.shared.frame_seen.store(true, Ordering::Release);
            }
            let step = match step? {
                None => return Ok(()),
                Some(step) => step,
            };
            let collected = matches!(
                step,
                Step::Upload { .. }
                    | Step::Request(Message::RpcRequest { .. } | Message::OneWayMessage { .. })
            );
            if !collected && self.deferred.is_some() {
                self.stashed = Some(step);
                return Ok(());
            }
            // A stream or chunk request is answered here, its answer queued under the lock. Past
            // the byte budget it waits, with what was read after it, until the answers before
            // it have been written: otherwise one read of small requests would queue answers
            // without bound (3,000 requests of 21 bytes fit in a 64 KiB read, each for a file of
            // 64 KiB that is read when requested).
            if matches!(step, Step::Request(_)) && !collected && self.state.over_budget(self.held())
            {
                self.stashed = Some(step);
                return Ok(());
            }
            match step {
                Step::Response(msg) => self.router.handle(msg),
                Step::ResponseBody { data, last } => self.router.handle_body(data, last),
                Step::Request(msg) => self.on_request(msg),
                Step::Upload {
                    request_id,
                    meta,
                    body,
                } => {
                    let responder = self.responder(request_id, meta.len() + body.len());
                    self.collect(Delivery::Upload {
                        meta,
                        body,
                        responder,
                    });
                }
            }
        }
    }

    /// A request for the handler, in the order read. A lone request (the only one its read
    /// brought so far) is handed over after the turn, with the connection unlocked: the thread
    /// that answers it (a message loop woken by the delivery) then finds the connection free and
    /// writes the answer itself, with no IO thread to wake (a caller asking one at a time). When
    /// a read brings several, they are handed over as they are decoded, under the lock: the
    /// handler starts on the first while this thread decodes the rest, and the answers made
    /// meanwhile find the connection held and are queued for this task, which writes them
    /// together (pipelined asks; on 2 cores W2 went from 404k to 435k asks/s in 8 alternated
    /// rounds, while a lone ask's round trip keeps its direct write).
    fn collect(&mut self, delivery: Delivery) {
        if !self.handing_now && self.deferred.is_none() {
            self.deferred = Some(delivery);
            return;
        }
        self.handing_now = true;
        let (handler, client) = (&*self.handler, &self.client);
        if let Some(earlier) = self.deferred.take() {
            earlier.hand_to(handler, client);
        }
        delivery.hand_to(handler, client);
    }

    /// The responder of a request of `len` bytes, which count in the byte budget until answered.
    fn responder(&self, request_id: i64, len: usize) -> RpcResponder {
        let cost = len + QUEUE_ENTRY_OVERHEAD;
        let shared = &self.client.shared;
        shared.inbound.add(cost);
        RpcResponder::new(shared.clone(), request_id, cost)
    }

    /// Collects an RPC or a one-way message for the handler; answers the other requests here
    /// (the protocol state has told requests from responses and reassembled uploads).
    fn on_request(&mut self, msg: Message) {
        match msg {
            Message::RpcRequest { request_id, body } => {
                let responder = self.responder(request_id, body.len());
                self.collect(Delivery::Rpc(body.into_bytes(), responder));
            }
            Message::OneWayMessage { body } => self.collect(Delivery::OneWay(body.into_bytes())),
            _ => self.answer_request(msg),
        }
    }

    /// Answers a stream, chunk or merged-block-meta request (their answers are written by
    /// this task, in order).
    fn answer_request(&mut self, msg: Message) {
        let (handler, client) = (&self.handler, &self.client);
        match msg {
            Message::StreamRequest { stream_id } => {
                match guarded(|| handler.open_stream_body(client, &stream_id)) {
                    Ok(Ok(body)) => {
                        let header = Message::StreamResponse {
                            byte_count: body.len(),
                            stream_id,
                            body: Bytes::new(),
                        };
                        self.out.push_reply(&header, body);
                    }
                    Ok(Err(error)) | Err(error) => {
                        self.out.push(&Message::StreamFailure { stream_id, error })
                    }
                }
            }
            Message::ChunkFetchRequest { chunk } => {
                let (stream_id, index) = (chunk.stream_id, chunk.chunk_index);
                match guarded(|| handler.get_chunk_body(client, stream_id, index)) {
                    Ok(Ok(body)) => {
                        let header = Message::ChunkFetchSuccess {
                            chunk,
                            body: Bytes::new(),
                        };
                        self.out.push_reply(&header, body);
                    }
                    Ok(Err(error)) | Err(error) => {
                        self.out.push(&Message::ChunkFetchFailure { chunk, error })
                    }
                }
            }
            Message::MergedBlockMetaRequest {
                request_id,
                app_id,
                shuffle_id,
                shuffle_merge_id,
                reduce_id,
            } => {
                let reply = match guarded(|| {
                    handler.merged_block_meta(
                        client,
                        &app_id,
                        shuffle_id,
                        shuffle_merge_id,
                        reduce_id,
                    )
                }) {
                    Ok(Ok((num_chunks, body))) => Message::MergedBlockMetaSuccess {
                        request_id,
                        num_chunks,
                        body,
                    },
                    Ok(Err(error)) | Err(error) => Message::RpcFailure { request_id, error },
                };
                self.out.push(&reply);
            }
            _ => unreachable!("the protocol state routes responses and uploads apart"),
        }
    }
}
