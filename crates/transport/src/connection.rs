//! One connection: a single task that owns the socket, reads and decodes frames, dispatches
//! requests to the handler and responses to the [`ResponseRouter`], and writes queued frames in
//! batches. Callers never touch the socket: they push [`Command`]s on an unbounded channel.

use std::future::{poll_fn, Future};
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, Notify};
use tokio::time::{Instant, Sleep};
use tracing::Instrument;

use crate::client::{ClientShared, TransportClient};
use crate::codec::{WriteQueue, MAX_IO_SLICES};
use crate::command::{queue_cost, Command, PendingKind};
use crate::conf::TransportConf;
use crate::error::TransportError;
use crate::frame::{Decoded, FrameDecoder};
use crate::handler::{guarded, RpcHandler, RpcResponder};
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
    let shared = Arc::new(ClientShared {
        id,
        local,
        remote,
        tx,
        next_request_id: AtomicU64::new(u64::from(rand::random::<u32>())),
        closed: AtomicBool::new(false),
        close_notify: Notify::new(),
        queued_bytes: AtomicUsize::new(0),
        drained: Notify::new(),
        read_paused: AtomicBool::new(false),
        read_waker: std::sync::Mutex::new(None),
    });
    let client = TransportClient { shared };
    let now = Instant::now();
    let idle = conf
        .connection_timeout
        .filter(|t| !t.is_zero())
        .map(|t| IdleTimer {
            timeout: t,
            setting: conf.connection_timeout_key(),
            close_idle: conf.close_idle_connections,
            sleep: Box::pin(tokio::time::sleep_until(now + t)),
        });
    let conn = Connection {
        io,
        peer: remote,
        client: client.clone(),
        handler,
        rx,
        cmds: Vec::with_capacity(COMMAND_BATCH),
        rbuf: BytesMut::with_capacity(READ_CHUNK),
        decoder: FrameDecoder::new(conf.max_frame_size),
        out: WriteQueue::new(),
        router: ResponseRouter::new(remote),
        upload: None,
        max_upload: conf.max_frame_size,
        idle,
        last_io: now,
        last_request: now,
        needs_flush: false,
        write_deferred: false,
    };
    let span = tracing::info_span!("connection", id, peer = %remote, local = %local, side = ?side);
    tokio::spawn(conn.run(on_exit).instrument(span));
    client
}

struct IdleTimer {
    timeout: Duration,
    setting: String,
    close_idle: bool,
    sleep: Pin<Box<Sleep>>,
}

/// The decision taken when the idle timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdleVerdict {
    /// Close the connection: it was quiet for this long with requests outstanding (or idle
    /// connections are to be closed).
    Close(Duration),
    /// Check again at this instant.
    RecheckAt(Instant),
}

/// Spark's rule (TransportChannelHandler): the connection is overdue when there was no read or
/// write for `timeout` and the last request is older than `timeout`; it is then closed if
/// requests are outstanding (or if idle connections are to be closed).
pub(crate) fn idle_verdict(
    now: Instant,
    last_io: Instant,
    last_request: Instant,
    outstanding: usize,
    timeout: Duration,
    close_idle: bool,
) -> IdleVerdict {
    let latest = last_io.max(last_request);
    let overdue_at = latest + timeout;
    if now >= overdue_at && (outstanding > 0 || close_idle) {
        return IdleVerdict::Close(now - latest);
    }
    if now >= overdue_at {
        IdleVerdict::RecheckAt(now + timeout)
    } else {
        IdleVerdict::RecheckAt(overdue_at)
    }
}

struct Upload {
    request_id: i64,
    meta: Bytes,
    body: BytesMut,
}

struct Connection<S> {
    io: S,
    peer: SocketAddr,
    client: TransportClient,
    handler: Arc<dyn RpcHandler>,
    rx: mpsc::UnboundedReceiver<Command>,
    cmds: Vec<Command>,
    rbuf: BytesMut,
    decoder: FrameDecoder,
    out: WriteQueue,
    router: ResponseRouter,
    upload: Option<Upload>,
    max_upload: usize,
    idle: Option<IdleTimer>,
    last_io: Instant,
    last_request: Instant,
    needs_flush: bool,
    /// The write of what is queued was put off once, to let other tasks add to it.
    write_deferred: bool,
}

impl<S> Connection<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn run(mut self, on_exit: Option<OnExit>) {
        tracing::debug!("connection active");
        let client = self.client.clone();
        let handler = self.handler.clone();
        if let Err(panic) = guarded(|| handler.channel_active(&client)) {
            tracing::error!(%panic, "channel_active panicked");
        }
        let shared = client.shared.clone();
        let result = tokio::select! {
            biased;
            _ = shared.close_notify.notified() => Ok(()),
            r = poll_fn(|cx| self.poll_run(cx)) => r,
        };
        shared.closed.store(true, Ordering::SeqCst);
        self.rx.close();
        let failure = match &result {
            Ok(()) => TransportError::ConnectionClosed { peer: self.peer },
            Err(e) => e.clone(),
        };
        // Requests still queued were never sent: fail them together with the outstanding ones.
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
        self.router.fail_all(&failure);
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
        if let Some(f) = on_exit {
            f(&client);
        }
        // Dropping the socket closes it. Shut down the write side first so a peer sees EOF
        // promptly even if it holds a half-read buffer.
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::io::AsyncWriteExt::shutdown(&mut self.io),
        )
        .await;
    }

    fn poll_run(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        loop {
            let mut progress = false;
            let mut io_progress = false;

            // 1. Take queued commands (encode them into the write queue).
            while self.out.len() < WRITE_HIGH_WATER {
                match self.rx.poll_recv_many(cx, &mut self.cmds, COMMAND_BATCH) {
                    Poll::Ready(0) => return Poll::Ready(Ok(())),
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
                        if taken > 0 {
                            let shared = &self.client.shared;
                            shared.queued_bytes.fetch_sub(taken, Ordering::Relaxed);
                            shared.drained.notify_waiters();
                        }
                    }
                    Poll::Pending => break,
                }
            }

            // 2. Write what is queued; a small amount waits for one turn of the scheduler first.
            let defer =
                !self.out.is_empty() && !self.write_deferred && self.out.len() < COALESCE_BELOW;
            if defer {
                self.write_deferred = true;
            }
            while !defer && !self.out.is_empty() {
                let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
                let n = self.out.fill_slices(&mut slices);
                match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(TransportError::io(
                            self.peer,
                            std::io::ErrorKind::WriteZero.into(),
                        )))
                    }
                    Poll::Ready(Ok(written)) => {
                        self.out.advance(written);
                        self.write_deferred = false;
                        self.needs_flush = true;
                        progress = true;
                        io_progress = true;
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(TransportError::io(self.peer, e)))
                    }
                    Poll::Pending => break,
                }
            }
            if self.out.is_empty() && self.needs_flush {
                match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.needs_flush = false,
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(TransportError::io(self.peer, e)))
                    }
                    Poll::Pending => {}
                }
            }

            // 3. Read and dispatch, unless the handler's side paused reading (backpressure).
            let paused = self.read_paused(cx);
            for _ in 0..if paused { 0 } else { 4 } {
                let want = self.decoder.reserve_hint(&self.rbuf).max(READ_MIN_SPARE);
                if self.rbuf.capacity() - self.rbuf.len() < want {
                    self.rbuf.reserve(want.max(READ_CHUNK));
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.rbuf) {
                    Poll::Ready(Ok(0)) => {
                        if !self.rbuf.is_empty() || self.decoder.in_raw_body() {
                            return Poll::Ready(Err(TransportError::TruncatedFrame {
                                peer: self.peer,
                                pending_bytes: self.rbuf.len(),
                            }));
                        }
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Ok(_)) => {
                        progress = true;
                        io_progress = true;
                        if let Err(e) = self.decode_all() {
                            return Poll::Ready(Err(e));
                        }
                    }
                    Poll::Ready(Err(e)) => {
                        return Poll::Ready(Err(TransportError::io(self.peer, e)))
                    }
                    Poll::Pending => break,
                }
            }

            if io_progress && self.idle.is_some() {
                self.last_io = Instant::now();
            }
            if defer {
                // Back of the run queue (a woken idle worker may take the task meanwhile): the
                // write happens on the next poll, after the tasks queued before it ran.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if progress {
                continue;
            }

            // 4. Nothing to do: check the idle timer, then sleep until woken.
            if let Some(idle) = &mut self.idle {
                if idle.sleep.as_mut().poll(cx).is_ready() {
                    match idle_verdict(
                        Instant::now(),
                        self.last_io,
                        self.last_request,
                        self.router.outstanding() + usize::from(self.upload.is_some()),
                        idle.timeout,
                        idle.close_idle,
                    ) {
                        IdleVerdict::Close(quiet) => {
                            return Poll::Ready(Err(TransportError::IdleTimeout {
                                peer: self.peer,
                                idle: quiet,
                                setting: idle.setting.clone(),
                            }))
                        }
                        IdleVerdict::RecheckAt(at) => {
                            idle.sleep.as_mut().reset(at);
                            continue;
                        }
                    }
                }
            }
            return Poll::Pending;
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
                if self.idle.is_some() {
                    self.last_request = Instant::now();
                }
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

    fn decode_all(&mut self) -> Result<(), TransportError> {
        loop {
            let item = match self.decoder.decode(&mut self.rbuf) {
                Ok(Some(item)) => item,
                Ok(None) => return Ok(()),
                Err(e) => {
                    return Err(TransportError::BadInput {
                        peer: self.peer,
                        source: Box::new(e),
                    })
                }
            };
            match item {
                Decoded::Message(msg) => self.on_message(msg)?,
                Decoded::Body { data, last } => self.on_body(data, last),
            }
        }
    }

    fn on_body(&mut self, data: Bytes, last: bool) {
        match &mut self.upload {
            Some(up) => {
                if up.body.is_empty() && last {
                    // The whole body arrived in one piece: no copy.
                    let up = self.upload.take().expect("upload in progress");
                    self.deliver_upload(up.request_id, up.meta, data);
                    return;
                }
                up.body.extend_from_slice(&data);
                if last {
                    let up = self.upload.take().expect("upload in progress");
                    self.deliver_upload(up.request_id, up.meta, up.body.freeze());
                }
            }
            None => self.router.handle_body(data, last),
        }
    }

    fn deliver_upload(&mut self, request_id: i64, meta: Bytes, body: Bytes) {
        let responder = RpcResponder::new(self.client.shared.tx.clone(), request_id, self.peer);
        let (handler, client) = (&self.handler, &self.client);
        if let Err(panic) = guarded(|| handler.receive_stream(client, meta, body, responder)) {
            tracing::warn!(request_id, %panic, "upload handler panicked");
        }
    }

    fn on_message(&mut self, msg: Message) -> Result<(), TransportError> {
        if msg.is_response() {
            self.router.handle(msg);
            return Ok(());
        }
        let (handler, client) = (&self.handler, &self.client);
        match msg {
            Message::RpcRequest { request_id, body } => {
                let responder = RpcResponder::new(client.shared.tx.clone(), request_id, self.peer);
                if let Err(panic) = guarded(|| handler.receive(client, body, responder)) {
                    tracing::warn!(request_id, %panic, "RPC handler panicked; answered RpcFailure");
                }
            }
            Message::OneWayMessage { body } => {
                if let Err(panic) = guarded(|| handler.receive_one_way(client, body)) {
                    tracing::warn!(%panic, "one-way handler panicked");
                }
            }
            Message::StreamRequest { stream_id } => {
                let reply = match guarded(|| handler.open_stream(client, &stream_id)) {
                    Ok(Ok(body)) => Message::StreamResponse {
                        byte_count: body.len() as u64,
                        stream_id,
                        body,
                    },
                    Ok(Err(error)) | Err(error) => Message::StreamFailure { stream_id, error },
                };
                self.out.push(&reply);
            }
            Message::ChunkFetchRequest { chunk } => {
                let reply =
                    match guarded(|| handler.get_chunk(client, chunk.stream_id, chunk.chunk_index))
                    {
                        Ok(Ok(body)) => Message::ChunkFetchSuccess { chunk, body },
                        Ok(Err(error)) | Err(error) => Message::ChunkFetchFailure { chunk, error },
                    };
                self.out.push(&reply);
            }
            Message::UploadStream {
                request_id,
                meta,
                body_byte_count,
                ..
            } => {
                if body_byte_count > self.max_upload as u64 {
                    return Err(TransportError::BadInput {
                        peer: self.peer,
                        source: Box::new(TransportError::FrameTooLarge {
                            body_length: body_byte_count,
                            max: self.max_upload,
                            setting: "TransportConf::max_frame_size",
                        }),
                    });
                }
                if body_byte_count == 0 {
                    self.deliver_upload(request_id, meta, Bytes::new());
                } else {
                    let body = BytesMut::with_capacity(body_byte_count as usize);
                    self.upload = Some(Upload {
                        request_id,
                        meta,
                        body,
                    });
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
            _ => unreachable!("responses are routed above"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_verdict_follows_sparks_rule() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let s = Duration::from_secs;
        // Quiet long enough with outstanding requests: close.
        assert_eq!(
            idle_verdict(t0 + s(10), t0, t0, 1, timeout, false),
            IdleVerdict::Close(s(10))
        );
        // Nothing outstanding: keep, check a timeout later.
        assert_eq!(
            idle_verdict(t0 + s(10), t0, t0, 0, timeout, false),
            IdleVerdict::RecheckAt(t0 + s(20))
        );
        // ... unless idle connections are closed.
        assert_eq!(
            idle_verdict(t0 + s(10), t0, t0, 0, timeout, true),
            IdleVerdict::Close(s(10))
        );
        // Recent IO: recheck when it becomes overdue.
        assert_eq!(
            idle_verdict(t0 + s(10), t0 + s(5), t0, 3, timeout, false),
            IdleVerdict::RecheckAt(t0 + s(15))
        );
        // A recent request restarts the clock (furtherRequestsDelay).
        assert_eq!(
            idle_verdict(t0 + s(10), t0, t0 + s(8), 3, timeout, false),
            IdleVerdict::RecheckAt(t0 + s(18))
        );
    }
}
