//! `TransportClient`: a cheap handle to one connection, used to issue requests.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::budget::{BudgetHold, Inbound};
use crate::command::{queue_cost, Command, CommandSender, PendingKind, QUEUE_ENTRY_OVERHEAD};
use crate::error::TransportError;
use crate::message::{Body, Message, StreamChunkId};
use crate::response::{ByteStream, PendingRpc, RpcCallback, RpcReply};

pub(crate) struct ClientShared {
    pub(crate) id: u64,
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    pub(crate) tx: CommandSender,
    pub(crate) next_request_id: AtomicU64,
    pub(crate) closed: AtomicBool,
    /// Asks the connection's task to close (`close()`).
    pub(crate) close_notify: Notify,
    /// Set once, when the connection's task has ended, to the connection's failure: every
    /// waiter of this connection watches it.
    pub(crate) ended: watch::Sender<Option<TransportError>>,
    /// Bytes of messages queued for the connection's task (requests, one-way messages,
    /// replies), not yet taken into its write buffer.
    pub(crate) queued_bytes: AtomicUsize,
    /// Bytes read from the peer and still held (unanswered requests, unread stream pieces).
    pub(crate) inbound: Arc<Inbound>,
    /// When the connection was established.
    pub(crate) opened: std::time::Instant,
    /// The peer has completed a frame (a connection that has not may be shed under pressure).
    pub(crate) frame_seen: AtomicBool,
    /// Signalled when the task takes queued messages.
    pub(crate) drained: Notify,
    /// Reading is paused (backpressure from the handler's side).
    pub(crate) read_paused: AtomicBool,
    /// The connection task, to wake when reading resumes.
    pub(crate) read_waker: std::sync::Mutex<Option<std::task::Waker>>,
    /// The connection's flush hook (weak: the connection owns this handle, not the reverse).
    pub(crate) flush: std::sync::OnceLock<std::sync::Weak<dyn Flush>>,
    /// The id (app id) the peer authenticated as, once set (Spark: `TransportClient.clientId`).
    pub(crate) client_id: std::sync::OnceLock<String>,
}

/// Writes what is queued on a connection from the calling thread if its task is not busy.
pub(crate) trait Flush: Send + Sync {
    /// When the connection's task is not busy (and, for [`WriteNow::WhenAlone`], no request of
    /// the connection awaits its answer): takes the queued commands, then `cmd` if given, writes
    /// what the socket accepts and returns `Ok`. Otherwise hands `cmd` back untouched, for the
    /// caller to queue for the task.
    #[allow(clippy::result_large_err)]
    fn try_flush(&self, cmd: Option<Command>, when: WriteNow) -> Result<(), Option<Command>>;
}

/// When a request is written from the calling thread (through the flush hook) instead of being
/// handed to the connection's task. The hand-off costs a wake-up of the task (a thread switch
/// when its worker sleeps) and a turn of its scheduler before the bytes leave; the task pays
/// off when it batches many messages into one write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteNow {
    /// Whenever the task is not busy: a caller about to block for the answer (a plain thread).
    Always,
    /// Only when no other request of this connection awaits its answer and the ones before
    /// went one at a time (each answered before the next): a lone caller asking and waiting
    /// gains latency and a hand-off, while requests that travel together (several callers, a
    /// window of asks) are left for the task to batch, including the first of each round.
    WhenAlone,
}

impl ClientShared {
    /// The flush hook (see [`TransportClient::try_flush`]), with a command to run after what
    /// is queued; a command it could not run is handed back.
    #[allow(clippy::result_large_err)]
    pub(crate) fn try_flush(
        &self,
        cmd: Option<Command>,
        when: WriteNow,
    ) -> Result<(), Option<Command>> {
        if self.closed.load(Ordering::Acquire) {
            return Err(cmd);
        }
        match self.flush.get().and_then(std::sync::Weak::upgrade) {
            Some(conn) => conn.try_flush(cmd, when),
            None => Err(cmd),
        }
    }

    /// Queues a command, counting the bytes it will write. Like `mpsc::send`, it hands a command
    /// it could not queue back, so that the caller can fail its pending request.
    #[allow(clippy::result_large_err)]
    pub(crate) fn enqueue(&self, cmd: Command) -> Result<(), mpsc::error::SendError<Command>> {
        let cost = match &cmd {
            Command::Send(m) | Command::Request(m, _) => queue_cost(m),
            _ => 0,
        };
        self.queued_bytes.fetch_add(cost, Ordering::Relaxed);
        let sent = self.tx.send(cmd);
        if sent.is_err() {
            self.queued_bytes.fetch_sub(cost, Ordering::Relaxed);
        }
        sent
    }
}

/// A handle to one connection (cheap to clone). Either side of a connection has one: requests
/// can be issued in both directions.
///
/// Nothing here blocks on the socket: messages are queued to the connection's task, which writes
/// them in batches. When the connection breaks or closes, every outstanding request fails at once
/// with an error naming the peer.
#[derive(Clone)]
pub struct TransportClient {
    pub(crate) shared: Arc<ClientShared>,
}

impl fmt::Debug for TransportClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransportClient")
            .field("id", &self.shared.id)
            .field("remote", &self.shared.remote)
            .field("active", &self.is_active())
            .finish()
    }
}

impl PartialEq for TransportClient {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl Eq for TransportClient {}

impl std::hash::Hash for TransportClient {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.shared.id.hash(state);
    }
}

/// Which outstanding request a dropped future removes.
enum CancelKey {
    Rpc(i64),
    Chunk(StreamChunkId),
    None,
}

/// The answer to a request. Dropping it before it completes removes the outstanding request
/// from the connection; a late answer is then dropped with a log line.
#[must_use = "dropping the future cancels the request"]
pub struct ResponseFuture<T> {
    state: FutureState<T>,
}

enum FutureState<T> {
    Waiting {
        rx: oneshot::Receiver<Result<T, TransportError>>,
        shared: Arc<ClientShared>,
        key: CancelKey,
    },
    Failed(Option<TransportError>),
    Done,
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            FutureState::Waiting { .. } => "waiting",
            FutureState::Failed(_) => "failed",
            FutureState::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("request_id", &self.request_id())
            .field("state", &state)
            .finish()
    }
}

/// The answer to [`TransportClient::send_rpc`] and [`TransportClient::upload_stream`].
pub type RpcFuture = ResponseFuture<Bytes>;

impl<T> ResponseFuture<T> {
    /// The request id (RPCs and uploads), for logs.
    pub fn request_id(&self) -> Option<i64> {
        match &self.state {
            FutureState::Waiting {
                key: CancelKey::Rpc(id),
                ..
            } => Some(*id),
            _ => None,
        }
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, TransportError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match &mut this.state {
            FutureState::Waiting { rx, shared, .. } => {
                let result = match Pin::new(rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(r)) => r,
                    Poll::Ready(Err(_)) => Err(TransportError::ConnectionClosed {
                        peer: shared.remote,
                    }),
                };
                this.state = FutureState::Done;
                Poll::Ready(result)
            }
            FutureState::Failed(err) => {
                let err = err.take().expect("ResponseFuture polled after completion");
                this.state = FutureState::Done;
                Poll::Ready(Err(err))
            }
            FutureState::Done => panic!("ResponseFuture polled after completion"),
        }
    }
}

impl<T> Drop for ResponseFuture<T> {
    fn drop(&mut self) {
        if let FutureState::Waiting { shared, key, .. } = &self.state {
            let cmd = match key {
                CancelKey::Rpc(id) => Command::CancelRpc(*id),
                CancelKey::Chunk(c) => Command::CancelChunk(*c),
                CancelKey::None => return,
            };
            let _ = shared.tx.send(cmd);
        }
    }
}

impl TransportClient {
    /// A stable id of this connection (unique in the process), to key maps by connection.
    pub fn id(&self) -> u64 {
        self.shared.id
    }

    /// The peer's socket address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.shared.remote
    }

    /// This end's socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// The id the peer of this connection authenticated as (its app id), or `None` when the
    /// connection is not authenticated (Spark: `TransportClient.getClientId`). Stream services
    /// use it to let a peer read only what was registered for its app.
    pub fn client_id(&self) -> Option<&str> {
        self.shared.client_id.get().map(String::as_str)
    }

    /// Records the id the peer authenticated as (Spark: `TransportClient.setClientId`), once:
    /// set by whoever knows the outcome of the connection's authentication, before the
    /// connection's first request is handled. Returns false, keeping the id already set, when
    /// one was.
    pub fn set_client_id(&self, id: impl Into<String>) -> bool {
        self.shared.client_id.set(id.into()).is_ok()
    }

    /// True until the connection is closed (by either side) or failed.
    pub fn is_active(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire) && !self.shared.tx.is_closed()
    }

    /// Bytes of requests and one-way messages queued on this connection that its task has not
    /// yet taken for writing (the writer itself holds at most a few MiB more). Callers use it
    /// to bound what they queue.
    pub fn queued_bytes(&self) -> usize {
        self.shared.queued_bytes.load(Ordering::Relaxed)
    }

    /// Waits until at most `limit` bytes are queued. Fails with the connection's failure when
    /// it is closed, reset or failed before or while waiting.
    pub async fn wait_queued_at_most(&self, limit: usize) -> Result<(), TransportError> {
        let mut ended = self.shared.ended.subscribe();
        loop {
            let drained = self.shared.drained.notified();
            let mut drained = std::pin::pin!(drained);
            drained.as_mut().enable();
            if let Some(failure) = ended.borrow_and_update().clone() {
                return Err(failure);
            }
            if !self.is_active() {
                return Err(self.closed_error());
            }
            if self.queued_bytes() <= limit {
                return Ok(());
            }
            tokio::select! {
                _ = drained => {}
                _ = ended.changed() => {}
            }
        }
    }

    /// Waits until the connection has ended; returns its failure (`ConnectionClosed` after a
    /// clean close).
    pub async fn closed(&self) -> TransportError {
        let mut ended = self.shared.ended.subscribe();
        let failure = match ended.wait_for(Option::is_some).await {
            Ok(failure) => failure.clone(),
            Err(_) => None,
        };
        failure.unwrap_or_else(|| self.closed_error())
    }

    /// The flush hook: writes the messages queued on this connection (a reply just answered,
    /// say) from the calling thread, without waiting for the connection's task, when that task
    /// is not busy. Returns true when this call wrote them (as far as the socket took them; the
    /// task writes the rest), false when the task was busy or the connection is closed: the
    /// task then writes them as usual. Never blocks; meant for producer threads, not for
    /// handler callbacks running on the connection's own task (those always get false).
    pub fn try_flush(&self) -> bool {
        self.shared.try_flush(None, WriteNow::Always).is_ok()
    }

    /// Counts a message of `len` bytes received on this connection in its byte budget
    /// (`max_queued_bytes_per_connection`) for as long as the returned hold lives, like a request
    /// not yet answered. A receiver that keeps a message waiting (a one-way message in an
    /// over-full queue) holds it this way instead of pausing reading: the connection is still
    /// read, so replies arriving on it are delivered, and it stops reading only once the budget
    /// is exhausted, until the holds fall under half of it.
    pub fn hold(&self, len: usize) -> BudgetHold {
        BudgetHold::new(self.shared.inbound.clone(), len + QUEUE_ENTRY_OVERHEAD)
    }

    /// Stops reading from the socket (TCP then slows the peer down) until
    /// [`resume_reading`](Self::resume_reading). Writes go on.
    pub fn pause_reading(&self) {
        self.shared.read_paused.store(true, Ordering::Release);
    }

    /// Resumes reading after [`pause_reading`](Self::pause_reading).
    pub fn resume_reading(&self) {
        self.shared.read_paused.store(false, Ordering::Release);
        let waker = self
            .shared
            .read_waker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether reading is paused.
    pub fn is_reading_paused(&self) -> bool {
        self.shared.read_paused.load(Ordering::Acquire)
    }

    /// Close the connection. Outstanding requests fail with `Connection from <peer> closed`.
    /// Returns at once; the connection's task finishes the close.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.close_notify.notify_one();
    }

    fn next_request_id(&self) -> i64 {
        (self.shared.next_request_id.fetch_add(1, Ordering::Relaxed) & (i64::MAX as u64)) as i64
    }

    fn closed_error(&self) -> TransportError {
        TransportError::ConnectionClosed {
            peer: self.shared.remote,
        }
    }

    fn request<T>(
        &self,
        msg: Message,
        pending: PendingKind,
        rx: oneshot::Receiver<Result<T, TransportError>>,
        key: CancelKey,
    ) -> ResponseFuture<T> {
        if self.shared.closed.load(Ordering::Acquire)
            || self.shared.enqueue(Command::Request(msg, pending)).is_err()
        {
            return ResponseFuture {
                state: FutureState::Failed(Some(self.closed_error())),
            };
        }
        ResponseFuture {
            state: FutureState::Waiting {
                rx,
                shared: self.shared.clone(),
                key,
            },
        }
    }

    /// Send an RpcRequest; the future resolves to the RpcResponse body, or fails with the
    /// RpcFailure text or the connection's failure. The request is queued at once (before the
    /// future is polled).
    pub fn send_rpc(&self, body: impl Into<Body>) -> RpcFuture {
        let id = self.next_request_id();
        let (tx, rx) = oneshot::channel();
        let pending = PendingKind::Rpc(id, PendingRpc::Rpc(RpcReply::Future(tx)));
        self.request(
            Message::RpcRequest {
                request_id: id,
                body: body.into(),
            },
            pending,
            rx,
            CancelKey::Rpc(id),
        )
    }

    /// Send an RpcRequest whose answer is handed to `callback` (on the connection's IO task; it
    /// must not block). Returns the request id, for [`TransportClient::remove_rpc_request`].
    /// If the connection is closed the callback is called at once with the error.
    pub fn send_rpc_with_callback(
        &self,
        body: impl Into<Body>,
        callback: impl FnOnce(Result<Bytes, TransportError>) + Send + 'static,
    ) -> i64 {
        self.rpc_with_callback(body.into(), Box::new(callback), None)
    }

    /// [`send_rpc_with_callback`](Self::send_rpc_with_callback), writing the request from the
    /// calling thread when `when` allows it and the connection's task is not busy (the flush
    /// hook, see [`try_flush`](Self::try_flush)): no hand-off to the task and no wake-up of it.
    /// Otherwise the request is queued for the task as usual. Never blocks.
    pub fn send_rpc_with_callback_now(
        &self,
        body: impl Into<Body>,
        callback: impl FnOnce(Result<Bytes, TransportError>) + Send + 'static,
        when: WriteNow,
    ) -> i64 {
        self.rpc_with_callback(body.into(), Box::new(callback), Some(when))
    }

    /// Runs (through the flush hook, when `now` says so) or queues an RpcRequest whose answer
    /// goes to `callback`; fails the callback at once when the connection is closed. Returns
    /// the request id.
    fn rpc_with_callback(&self, body: Body, callback: RpcCallback, now: Option<WriteNow>) -> i64 {
        let id = self.next_request_id();
        let msg = Message::RpcRequest {
            request_id: id,
            body,
        };
        let pending = PendingKind::Rpc(id, PendingRpc::Rpc(RpcReply::Callback(callback)));
        self.run_or_queue(Command::Request(msg, pending), now);
        id
    }

    /// Runs `cmd` (a request whose answer goes to a callback) through the flush hook when `now`
    /// says so, else queues it; fails the callback at once when the connection is closed.
    fn run_or_queue(&self, cmd: Command, now: Option<WriteNow>) {
        let cmd = match now {
            Some(when) => match self.shared.try_flush(Some(cmd), when) {
                Ok(()) => return,
                Err(cmd) => cmd.expect("the flush hook hands back the command it did not run"),
            },
            None => cmd,
        };
        let fail = |cmd: Command| {
            if let Command::Request(_, PendingKind::Rpc(_, PendingRpc::Rpc(reply))) = cmd {
                reply.complete(Err(self.closed_error()));
            }
        };
        if self.shared.closed.load(Ordering::Acquire) {
            return fail(cmd);
        }
        if let Err(mpsc::error::SendError(cmd)) = self.shared.enqueue(cmd) {
            fail(cmd);
        }
    }

    /// Forget an outstanding RPC (its answer, if it comes, is dropped with a log line).
    pub fn remove_rpc_request(&self, request_id: i64) {
        let _ = self.shared.tx.send(Command::CancelRpc(request_id));
    }

    /// Send a OneWayMessage. Fails only if the connection is already closed.
    pub fn send(&self, body: impl Into<Body>) -> Result<(), TransportError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(self.closed_error());
        }
        self.shared
            .enqueue(Command::Send(Message::OneWayMessage { body: body.into() }))
            .map_err(|_| self.closed_error())
    }

    /// Send an RPC and block this thread until the answer or `timeout`. Returns
    /// [`TransportError::BlockingInRuntime`] when called on a tokio runtime thread.
    pub fn send_rpc_sync(
        &self,
        body: impl Into<Body>,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(TransportError::BlockingInRuntime {
                operation: "TransportClient::send_rpc_sync",
            });
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let id = self.send_rpc_with_callback(body, move |r| {
            let _ = tx.send(r);
        });
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                self.remove_rpc_request(id);
                Err(TransportError::Timeout {
                    peer: self.shared.remote,
                    request_id: id,
                    after: timeout,
                })
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(self.closed_error()),
        }
    }

    /// Request the stream `stream_id`; resolves when its StreamResponse header arrives, to the
    /// body delivered in pieces. Stream answers are matched by order, as in Spark.
    pub fn stream(&self, stream_id: impl Into<String>) -> ResponseFuture<ByteStream> {
        let stream_id = stream_id.into();
        let (tx, rx) = oneshot::channel();
        let pending = PendingKind::Stream(stream_id.clone(), tx);
        self.request(
            Message::StreamRequest { stream_id },
            pending,
            rx,
            CancelKey::None,
        )
    }

    /// Fetch one chunk of a chunked stream.
    pub fn fetch_chunk(&self, stream_id: i64, chunk_index: i32) -> ResponseFuture<Bytes> {
        let chunk = StreamChunkId {
            stream_id,
            chunk_index,
        };
        let (tx, rx) = oneshot::channel();
        let pending = PendingKind::Chunk(chunk, tx);
        self.request(
            Message::ChunkFetchRequest { chunk },
            pending,
            rx,
            CancelKey::Chunk(chunk),
        )
    }

    /// Upload `body` with metadata `meta` (UploadStream); resolves to the RpcResponse body.
    pub fn upload_stream(&self, meta: Bytes, body: Bytes) -> RpcFuture {
        let id = self.next_request_id();
        let (tx, rx) = oneshot::channel();
        let pending = PendingKind::Rpc(id, PendingRpc::Rpc(RpcReply::Future(tx)));
        let msg = Message::UploadStream {
            request_id: id,
            meta,
            body_byte_count: body.len() as u64,
            body,
        };
        self.request(msg, pending, rx, CancelKey::Rpc(id))
    }

    /// Request merged block metadata; resolves to `(num_chunks, bitmaps)`.
    pub fn send_merged_block_meta_req(
        &self,
        app_id: impl Into<String>,
        shuffle_id: i32,
        shuffle_merge_id: i32,
        reduce_id: i32,
    ) -> ResponseFuture<(i32, Bytes)> {
        let id = self.next_request_id();
        let (tx, rx) = oneshot::channel();
        let pending = PendingKind::Rpc(id, PendingRpc::Meta(tx));
        let msg = Message::MergedBlockMetaRequest {
            request_id: id,
            app_id: app_id.into(),
            shuffle_id,
            shuffle_merge_id,
            reduce_id,
        };
        self.request(msg, pending, rx, CancelKey::Rpc(id))
    }
}
