//! The request handler (Spark's `RpcHandler` + `StreamManager`) and the RPC responder.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::Bytes;

use crate::body::ReplyBody;
use crate::client::{ClientShared, TransportClient, WriteNow};
use crate::command::Command;
use crate::error::TransportError;
use crate::message::{Body, Message};

/// Handles requests arriving on a connection (either side of it: connections are bidirectional).
///
/// Callbacks run on the connection's IO task and must not block; long work is handed off (an
/// [`RpcResponder`] can be moved to another thread and answered later). A panicking callback is
/// caught: the requester gets an RpcFailure carrying the panic message and the connection stays
/// usable. The stream-manager callbacks have defaults that answer a clear failure.
pub trait RpcHandler: Send + Sync + 'static {
    /// An RpcRequest. Answer through `responder` (now or later, from any thread); a dropped
    /// responder answers an RpcFailure.
    fn receive(&self, client: &TransportClient, message: Bytes, responder: RpcResponder);

    /// A OneWayMessage (no answer is possible). The default logs and drops it.
    fn receive_one_way(&self, client: &TransportClient, message: Bytes) {
        tracing::debug!(peer = %client.remote_addr(), len = message.len(), "one-way message dropped: handler does not accept one-way messages");
    }

    /// An UploadStream with its metadata and complete body. Answer through `responder`. The
    /// default answers a failure.
    fn receive_stream(
        &self,
        client: &TransportClient,
        meta: Bytes,
        body: Bytes,
        responder: RpcResponder,
    ) {
        let _ = (client, meta, body);
        responder.fail("This handler does not accept upload streams");
    }

    /// A StreamRequest: the whole stream's bytes, or an error text sent as StreamFailure.
    /// Called in request order, and answers go out in request order.
    fn open_stream(&self, client: &TransportClient, stream_id: &str) -> Result<Bytes, String> {
        let _ = client;
        Err(format!("Stream '{stream_id}' was not found."))
    }

    /// A StreamRequest answered with a body written in bounded pieces (a file region, generated
    /// data; see [`ReplyBody`]). The default answers [`open_stream`](Self::open_stream).
    fn open_stream_body(
        &self,
        client: &TransportClient,
        stream_id: &str,
    ) -> Result<ReplyBody, String> {
        self.open_stream(client, stream_id).map(ReplyBody::Bytes)
    }

    /// A ChunkFetchRequest: the chunk's bytes, or an error text sent as ChunkFetchFailure.
    fn get_chunk(
        &self,
        client: &TransportClient,
        stream_id: i64,
        chunk_index: i32,
    ) -> Result<Bytes, String> {
        let _ = (client, stream_id, chunk_index);
        Err("Chunk was not found".to_string())
    }

    /// A ChunkFetchRequest answered with a body written in bounded pieces. The default answers
    /// [`get_chunk`](Self::get_chunk).
    fn get_chunk_body(
        &self,
        client: &TransportClient,
        stream_id: i64,
        chunk_index: i32,
    ) -> Result<ReplyBody, String> {
        self.get_chunk(client, stream_id, chunk_index)
            .map(ReplyBody::Bytes)
    }

    /// A MergedBlockMetaRequest: `(num_chunks, bitmaps)` or an error text sent as RpcFailure.
    fn merged_block_meta(
        &self,
        client: &TransportClient,
        app_id: &str,
        shuffle_id: i32,
        shuffle_merge_id: i32,
        reduce_id: i32,
    ) -> Result<(i32, Bytes), String> {
        let _ = (client, shuffle_id, shuffle_merge_id, reduce_id);
        Err(format!(
            "Merged block meta requests are not supported (app {app_id})"
        ))
    }

    /// The connection is up (after bootstraps), before any message is handled.
    fn channel_active(&self, client: &TransportClient) {
        let _ = client;
    }

    /// The connection is gone; called once, after `exception_caught` if there was an error.
    fn channel_inactive(&self, client: &TransportClient) {
        let _ = client;
    }

    /// The connection failed with `error` (it is being closed).
    fn exception_caught(&self, error: &TransportError, client: &TransportClient) {
        let _ = (error, client);
    }
}

/// A handler that refuses every request (Spark's `NoOpRpcHandler`): for clients that only send.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoOpRpcHandler;

impl RpcHandler for NoOpRpcHandler {
    fn receive(&self, _client: &TransportClient, _message: Bytes, responder: RpcResponder) {
        responder.fail("Expected no RPC requests on this connection (NoOpRpcHandler)");
    }
}

/// The answer slot of one RpcRequest (or UploadStream). `Send + 'static`: it can be moved to
/// another thread and answered later. Dropping it unanswered sends an RpcFailure. Until it is
/// answered, the request's bytes count in its connection's byte budget.
#[derive(Debug)]
pub struct RpcResponder {
    inner: Option<ResponderInner>,
}

struct ResponderInner {
    shared: Arc<ClientShared>,
    request_id: i64,
    /// What the request counts for in the connection's byte budget until answered.
    cost: usize,
}

impl std::fmt::Debug for ResponderInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponderInner")
            .field("peer", &self.shared.remote)
            .field("request_id", &self.request_id)
            .finish()
    }
}

thread_local! {
    /// The "inside a handler callback" flag of this thread: a thread-identity flag, not a
    /// parameter. A responder's `Drop` has no other way to learn that it runs while a handler
    /// call unwinds from a panic, whose message should then answer the request.
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
    /// The responders dropped while the handler call of this thread unwound, answered by
    /// [`guarded`] with the panic message once it has caught the panic.
    static ORPHANS: RefCell<Vec<ResponderInner>> = const { RefCell::new(Vec::new()) };
}

impl RpcResponder {
    /// The responder of a request that counts `cost` bytes in the connection's budget (already
    /// added by the caller; released when answered).
    pub(crate) fn new(shared: Arc<ClientShared>, request_id: i64, cost: usize) -> Self {
        RpcResponder {
            inner: Some(ResponderInner {
                shared,
                request_id,
                cost,
            }),
        }
    }

    /// The id of the request being answered.
    pub fn request_id(&self) -> i64 {
        self.inner.as_ref().map_or(-1, |i| i.request_id)
    }

    /// The id of the connection the request came on ([`TransportClient::id`]); `None` once
    /// answered.
    pub fn connection_id(&self) -> Option<u64> {
        self.inner.as_ref().map(|i| i.shared.id)
    }

    /// The requester's address.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.inner.as_ref().map(|i| i.shared.remote)
    }

    /// Answer with an RpcResponse carrying `body`.
    pub fn respond(mut self, body: impl Into<Body>) {
        if let Some(inner) = self.inner.take() {
            inner.send(Message::RpcResponse {
                request_id: inner.request_id,
                body: body.into(),
            });
        }
    }

    /// Answer with an RpcResponse carrying `body`, written from this thread when the
    /// connection's task is not busy (the flush hook, see [`TransportClient::try_flush`]): no
    /// hand-off to the task and no wake-up of it. When the task is busy the answer is queued
    /// for it, as [`respond`](Self::respond). For producer threads; on the connection's own
    /// task (inside a handler callback) it is `respond`. Returns true when this thread wrote
    /// the answer.
    pub fn respond_now(mut self, body: impl Into<Body>) -> bool {
        let Some(inner) = self.inner.take() else {
            return false;
        };
        let msg = Message::RpcResponse {
            request_id: inner.request_id,
            body: body.into(),
        };
        match inner
            .shared
            .try_flush(Some(Command::Send(msg)), WriteNow::Always)
        {
            Ok(()) => {
                inner.shared.inbound.release(inner.cost);
                true
            }
            Err(cmd) => {
                if let Some(Command::Send(msg)) = cmd {
                    inner.send(msg);
                }
                false
            }
        }
    }

    /// Answer with an RpcFailure carrying `error`.
    pub fn fail(mut self, error: impl Into<String>) {
        if let Some(inner) = self.inner.take() {
            inner.send(Message::RpcFailure {
                request_id: inner.request_id,
                error: error.into(),
            });
        }
    }
}

impl ResponderInner {
    fn send(&self, msg: Message) {
        if self.shared.enqueue(Command::Send(msg)).is_err() {
            tracing::debug!(peer = %self.shared.remote, request_id = self.request_id, "response dropped: connection closed");
        }
        self.shared.inbound.release(self.cost);
    }
}

impl Drop for RpcResponder {
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if std::thread::panicking() && IN_HANDLER.with(Cell::get) {
            // The handler call that owns this responder is unwinding: the connection answers
            // with the panic message once it has caught the panic.
            ORPHANS.with(|o| o.borrow_mut().push(inner));
            return;
        }
        let error = format!(
            "The RPC handler dropped the responder of request {} without answering",
            inner.request_id
        );
        inner.send(Message::RpcFailure {
            request_id: inner.request_id,
            error,
        });
    }
}

/// Run a handler callback, catching a panic. On panic every responder dropped while unwinding
/// is answered with an RpcFailure carrying the panic message, which is also returned.
pub(crate) fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let was = IN_HANDLER.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    IN_HANDLER.with(|c| c.set(was));
    match result {
        Ok(v) => Ok(v),
        Err(payload) => {
            let msg = panic_message(payload.as_ref());
            for inner in ORPHANS.with(|o| std::mem::take(&mut *o.borrow_mut())) {
                inner.send(Message::RpcFailure {
                    request_id: inner.request_id,
                    error: msg.clone(),
                });
            }
            Err(msg)
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "the request handler panicked".to_string()
    }
}
