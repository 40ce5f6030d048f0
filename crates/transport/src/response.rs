//! Response routing (Spark's `TransportResponseHandler`): the outstanding requests of one
//! connection and the matching of response messages to them. No sockets, no clocks.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use foldhash::{HashMap, HashMapExt};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use crate::budget::Inbound;
use crate::error::TransportError;
use crate::message::{Message, StreamChunkId};

/// Callback form of an RPC completion.
pub type RpcCallback = Box<dyn FnOnce(Result<Bytes, TransportError>) + Send + 'static>;

/// Where the answer to an RPC (or upload) goes.
pub(crate) enum RpcReply {
    Future(oneshot::Sender<Result<Bytes, TransportError>>),
    Callback(RpcCallback),
}

impl RpcReply {
    /// Deliver the result; false when nobody waits any more (cancelled).
    pub(crate) fn complete(self, result: Result<Bytes, TransportError>) -> bool {
        match self {
            RpcReply::Future(tx) => tx.send(result).is_ok(),
            RpcReply::Callback(cb) => {
                cb(result);
                true
            }
        }
    }
}

/// An outstanding request keyed by request id.
pub(crate) enum PendingRpc {
    Rpc(RpcReply),
    Meta(oneshot::Sender<Result<(i32, Bytes), TransportError>>),
}

pub(crate) type ChunkReply = oneshot::Sender<Result<Bytes, TransportError>>;
pub(crate) type StreamReply = oneshot::Sender<Result<ByteStream, TransportError>>;

/// The body of a stream, delivered in pieces as it arrives.
///
/// Pieces not yet taken count in the connection's byte budget: a reader that falls behind makes
/// the connection stop reading from the socket (TCP then slows the sender) instead of buffering
/// the body without bound.
#[derive(Debug)]
pub struct ByteStream {
    stream_id: String,
    len: u64,
    rx: mpsc::UnboundedReceiver<Result<Bytes, TransportError>>,
    inbound: Arc<Inbound>,
}

impl ByteStream {
    pub(crate) fn new(
        stream_id: String,
        len: u64,
        rx: mpsc::UnboundedReceiver<Result<Bytes, TransportError>>,
        inbound: Arc<Inbound>,
    ) -> Self {
        ByteStream {
            stream_id,
            len,
            rx,
            inbound,
        }
    }

    /// The stream id the server answered with.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// The announced length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty stream.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn taken(
        &self,
        piece: Option<Result<Bytes, TransportError>>,
    ) -> Option<Result<Bytes, TransportError>> {
        if let Some(Ok(b)) = &piece {
            self.inbound.release(b.len());
        }
        piece
    }

    /// The next piece; `None` once the body is complete.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, TransportError>> {
        let piece = self.rx.recv().await;
        self.taken(piece)
    }

    /// Polls for the next piece (the poll form of [`next_chunk`](Self::next_chunk), for
    /// `AsyncRead` adapters); `Ready(None)` once the body is complete.
    pub fn poll_next_chunk(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Bytes, TransportError>>> {
        self.rx.poll_recv(cx).map(|piece| self.taken(piece))
    }

    /// The next piece if one has arrived (`None` when none is ready or the body is complete).
    pub fn try_next(&mut self) -> Option<Result<Bytes, TransportError>> {
        let piece = self.rx.try_recv().ok();
        self.taken(piece)
    }

    /// Waits for the whole body, refusing one announced longer than `limit` bytes (the peer
    /// chooses the announced length: memory is reserved for at most `limit`).
    pub async fn collect(mut self, limit: u64) -> Result<Bytes, TransportError> {
        if self.len > limit {
            return Err(TransportError::StreamTooLarge {
                stream_id: self.stream_id.clone(),
                len: self.len,
                limit,
            });
        }
        let first = match self.next_chunk().await {
            None => return Ok(Bytes::new()),
            Some(r) => r?,
        };
        if first.len() as u64 == self.len {
            return Ok(first);
        }
        let mut all = BytesMut::with_capacity(self.len as usize);
        all.extend_from_slice(&first);
        while let Some(piece) = self.next_chunk().await {
            all.extend_from_slice(&piece?);
        }
        Ok(all.freeze())
    }
}

impl Drop for ByteStream {
    fn drop(&mut self) {
        // Pieces never taken are released; later ones are dropped by the connection.
        self.rx.close();
        while let Ok(piece) = self.rx.try_recv() {
            self.taken(Some(piece));
        }
    }
}

struct ActiveStream {
    stream_id: String,
    tx: mpsc::UnboundedSender<Result<Bytes, TransportError>>,
    expected: u64,
    received: u64,
}

/// Outstanding requests of one connection.
pub(crate) struct ResponseRouter {
    peer: SocketAddr,
    rpcs: HashMap<i64, PendingRpc>,
    chunks: HashMap<StreamChunkId, ChunkReply>,
    streams: VecDeque<(String, StreamReply)>,
    active_stream: Option<ActiveStream>,
    /// Stream pieces not yet taken by their reader count here (the connection's byte budget).
    inbound: Arc<Inbound>,
    /// The most RPCs outstanding at once since none was, and that figure for the previous such
    /// stretch: whether this connection's requests have been going one at a time.
    rpc_peak: usize,
    last_rpc_peak: usize,
}

impl ResponseRouter {
    #[cfg(test)]
    pub(crate) fn new(peer: SocketAddr) -> Self {
        Self::with_inbound(peer, Arc::default())
    }

    /// A router whose stream pieces count in `inbound` until their reader takes them.
    pub(crate) fn with_inbound(peer: SocketAddr, inbound: Arc<Inbound>) -> Self {
        ResponseRouter {
            peer,
            rpcs: HashMap::new(),
            chunks: HashMap::new(),
            streams: VecDeque::new(),
            active_stream: None,
            inbound,
            rpc_peak: 0,
            last_rpc_peak: 0,
        }
    }

    /// Nothing is outstanding, and the requests before went one at a time (each answered
    /// before the next was sent): a caller that waits for each answer.
    pub(crate) fn one_at_a_time(&self) -> bool {
        self.outstanding() == 0 && self.last_rpc_peak <= 1
    }

    /// Takes the pending RPC `request_id`, noting the stretch's peak when it was the last one.
    fn take_rpc(&mut self, request_id: i64) -> Option<PendingRpc> {
        let pending = self.rpcs.remove(&request_id)?;
        if self.rpcs.is_empty() {
            self.last_rpc_peak = std::mem::take(&mut self.rpc_peak);
        }
        Some(pending)
    }

    /// Requests still waiting for an answer (a stream whose body is arriving counts).
    pub(crate) fn outstanding(&self) -> usize {
        self.rpcs.len()
            + self.chunks.len()
            + self.streams.len()
            + usize::from(self.active_stream.is_some())
    }

    pub(crate) fn add_rpc(&mut self, request_id: i64, pending: PendingRpc) {
        if let Some(old) = self.rpcs.insert(request_id, pending) {
            tracing::warn!(peer = %self.peer, request_id, "duplicate request id; the older request is failed");
            fail_pending(old, TransportError::ConnectionClosed { peer: self.peer });
        }
        self.rpc_peak = self.rpc_peak.max(self.rpcs.len());
    }

    pub(crate) fn remove_rpc(&mut self, request_id: i64) -> bool {
        self.take_rpc(request_id).is_some()
    }

    pub(crate) fn add_chunk(&mut self, chunk: StreamChunkId, reply: ChunkReply) {
        if let Some(old) = self.chunks.insert(chunk, reply) {
            let _ = old.send(Err(TransportError::ChunkFetchSuperseded {
                peer: self.peer,
                stream_id: chunk.stream_id,
                chunk_index: chunk.chunk_index,
            }));
        }
    }

    pub(crate) fn remove_chunk(&mut self, chunk: StreamChunkId) -> bool {
        self.chunks.remove(&chunk).is_some()
    }

    pub(crate) fn add_stream(&mut self, stream_id: String, reply: StreamReply) {
        self.streams.push_back((stream_id, reply));
    }

    /// Route one response message. Responses with no outstanding request are logged and dropped.
    pub(crate) fn handle(&mut self, msg: Message) {
        let peer = self.peer;
        match msg {
            Message::RpcResponse { request_id, body } => match self.take_rpc(request_id) {
                Some(PendingRpc::Rpc(reply)) => {
                    if !reply.complete(Ok(body.into_bytes())) {
                        tracing::debug!(%peer, request_id, "late response dropped: the request was cancelled");
                    }
                }
                Some(PendingRpc::Meta(tx)) => {
                    let _ = tx.send(Err(TransportError::MalformedMessage {
                        message_type: "RpcResponse",
                        reason: format!("request {request_id} expected MergedBlockMetaSuccess"),
                    }));
                }
                None => {
                    tracing::warn!(%peer, request_id, "Ignoring response for RPC {request_id} from {peer} since it is not outstanding")
                }
            },
            Message::RpcFailure { request_id, error } => match self.take_rpc(request_id) {
                Some(p) => fail_pending(
                    p,
                    TransportError::RpcFailure {
                        peer,
                        request_id,
                        message: error,
                    },
                ),
                None => {
                    tracing::warn!(%peer, request_id, "Ignoring response for RPC {request_id} from {peer} ({error}) since it is not outstanding")
                }
            },
            Message::MergedBlockMetaSuccess {
                request_id,
                num_chunks,
                body,
            } => match self.take_rpc(request_id) {
                Some(PendingRpc::Meta(tx)) => {
                    let _ = tx.send(Ok((num_chunks, body)));
                }
                Some(other) => fail_pending(
                    other,
                    TransportError::MalformedMessage {
                        message_type: "MergedBlockMetaSuccess",
                        reason: format!("request {request_id} expected an RpcResponse"),
                    },
                ),
                None => {
                    tracing::warn!(%peer, request_id, "Ignoring merged block meta response {request_id} from {peer} since it is not outstanding")
                }
            },
            Message::ChunkFetchSuccess { chunk, body } => match self.chunks.remove(&chunk) {
                Some(tx) => {
                    let _ = tx.send(Ok(body));
                }
                None => {
                    tracing::warn!(%peer, ?chunk, "Ignoring response for block {chunk:?} from {peer} since it is not outstanding")
                }
            },
            Message::ChunkFetchFailure { chunk, error } => match self.chunks.remove(&chunk) {
                Some(tx) => {
                    let _ = tx.send(Err(TransportError::ChunkFetchFailure {
                        peer,
                        stream_id: chunk.stream_id,
                        chunk_index: chunk.chunk_index,
                        message: error,
                    }));
                }
                None => {
                    tracing::warn!(%peer, ?chunk, "Ignoring failure for block {chunk:?} from {peer} ({error}) since it is not outstanding")
                }
            },
            Message::StreamResponse {
                stream_id,
                byte_count,
                ..
            } => {
                // Matched purely by order, as Spark's client does.
                let Some((requested, reply)) = self.streams.pop_front() else {
                    tracing::warn!(%peer, %stream_id, "Ignoring unrequested StreamResponse from {peer}; its {byte_count} body bytes are discarded");
                    return;
                };
                if requested != stream_id {
                    tracing::debug!(%peer, %requested, %stream_id, "stream response id differs from the request (matched by order)");
                }
                let (tx, rx) = mpsc::unbounded_channel();
                if reply
                    .send(Ok(ByteStream::new(
                        stream_id.clone(),
                        byte_count,
                        rx,
                        self.inbound.clone(),
                    )))
                    .is_err()
                {
                    tracing::debug!(%peer, %stream_id, "stream abandoned by its requester; body discarded");
                }
                if byte_count > 0 {
                    self.active_stream = Some(ActiveStream {
                        stream_id,
                        tx,
                        expected: byte_count,
                        received: 0,
                    });
                }
            }
            Message::StreamFailure { stream_id, error } => match self.streams.pop_front() {
                Some((_, reply)) => {
                    let _ = reply.send(Err(TransportError::StreamFailure {
                        peer,
                        stream_id,
                        message: error,
                    }));
                }
                None => {
                    tracing::warn!(%peer, %stream_id, "Ignoring unrequested StreamFailure from {peer}: {error}")
                }
            },
            other => {
                tracing::warn!(%peer, message_type = other.type_name(), "not a response message; ignored");
            }
        }
    }

    /// A piece of the raw body of the current stream response.
    pub(crate) fn handle_body(&mut self, data: Bytes, last: bool) {
        match &mut self.active_stream {
            Some(active) => {
                active.received += data.len() as u64;
                let len = data.len();
                self.inbound.add(len);
                if active.tx.send(Ok(data)).is_err() {
                    // Its reader is gone: the piece is dropped.
                    self.inbound.release(len);
                }
                if last {
                    self.active_stream = None;
                }
            }
            None => {
                tracing::debug!(peer = %self.peer, len = data.len(), "discarding body bytes of an unrequested stream")
            }
        }
    }

    /// Fail everything outstanding with `err` (connection closed or failed).
    pub(crate) fn fail_all(&mut self, err: &TransportError) {
        for (_, p) in self.rpcs.drain() {
            fail_pending(p, err.clone());
        }
        for (_, tx) in self.chunks.drain() {
            let _ = tx.send(Err(err.clone()));
        }
        for (_, tx) in self.streams.drain(..) {
            let _ = tx.send(Err(err.clone()));
        }
        if let Some(active) = self.active_stream.take() {
            let _ = active.tx.send(Err(TransportError::StreamTruncated {
                peer: self.peer,
                stream_id: active.stream_id,
                received: active.received,
                expected: active.expected,
            }));
        }
    }
}

fn fail_pending(p: PendingRpc, err: TransportError) {
    match p {
        PendingRpc::Rpc(reply) => {
            reply.complete(Err(err));
        }
        PendingRpc::Meta(tx) => {
            let _ = tx.send(Err(err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn peer() -> SocketAddr {
        "127.0.0.1:40000".parse().unwrap()
    }

    type Log = Arc<Mutex<Vec<Result<Bytes, TransportError>>>>;

    fn callback(log: &Log) -> RpcReply {
        let log = log.clone();
        RpcReply::Callback(Box::new(move |r| log.lock().unwrap().push(r)))
    }

    fn chunk(i: i32) -> StreamChunkId {
        StreamChunkId {
            stream_id: 1,
            chunk_index: i,
        }
    }

    /// Requests answered one by one keep the connection "one at a time"; a stretch with several
    /// in flight ends it until a stretch of single requests follows.
    #[test]
    fn requests_going_one_at_a_time_are_recognised() {
        let mut r = ResponseRouter::new(peer());
        let log = Log::default();
        let answer = |r: &mut ResponseRouter, id| {
            r.handle(Message::RpcResponse {
                request_id: id,
                body: Bytes::new().into(),
            })
        };
        assert!(r.one_at_a_time(), "a fresh connection");
        r.add_rpc(1, PendingRpc::Rpc(callback(&log)));
        assert!(!r.one_at_a_time(), "one is outstanding");
        answer(&mut r, 1);
        assert!(r.one_at_a_time());
        for id in 2..10 {
            r.add_rpc(id, PendingRpc::Rpc(callback(&log)));
        }
        for id in 2..10 {
            answer(&mut r, id);
        }
        assert!(!r.one_at_a_time(), "eight went together");
        r.add_rpc(10, PendingRpc::Rpc(callback(&log)));
        answer(&mut r, 10);
        assert!(r.one_at_a_time(), "then one alone");
        assert_eq!(log.lock().unwrap().len(), 10);
    }

    #[test]
    fn transport_response_handler_suite_handle_successful_fetch() {
        let mut r = ResponseRouter::new(peer());
        let (tx, mut rx) = oneshot::channel();
        r.add_chunk(chunk(0), tx);
        assert_eq!(r.outstanding(), 1);
        r.handle(Message::ChunkFetchSuccess {
            chunk: chunk(0),
            body: Bytes::new(),
        });
        assert_eq!(rx.try_recv().unwrap().unwrap(), Bytes::new());
        assert_eq!(r.outstanding(), 0);
    }

    #[test]
    fn transport_response_handler_suite_handle_failed_fetch() {
        let mut r = ResponseRouter::new(peer());
        let (tx, mut rx) = oneshot::channel();
        r.add_chunk(chunk(0), tx);
        r.handle(Message::ChunkFetchFailure {
            chunk: chunk(0),
            error: "some error msg".into(),
        });
        let err = rx.try_recv().unwrap().unwrap_err();
        assert_eq!(
            err.to_string(),
            "Failure while fetching StreamChunkId[streamId=1,chunkIndex=0]: some error msg"
        );
        assert_eq!(r.outstanding(), 0);
    }

    #[test]
    fn transport_response_handler_suite_clear_all_outstanding_requests() {
        let mut r = ResponseRouter::new(peer());
        let mut rxs = Vec::new();
        for i in 0..3 {
            let (tx, rx) = oneshot::channel();
            r.add_chunk(chunk(i), tx);
            rxs.push(rx);
        }
        assert_eq!(r.outstanding(), 3);
        r.handle(Message::ChunkFetchSuccess {
            chunk: chunk(0),
            body: Bytes::new(),
        });
        r.fail_all(&TransportError::ConnectionClosed { peer: peer() });
        assert!(rxs[0].try_recv().unwrap().is_ok());
        for rx in &mut rxs[1..] {
            assert!(matches!(
                rx.try_recv().unwrap(),
                Err(TransportError::ConnectionClosed { .. })
            ));
        }
        assert_eq!(r.outstanding(), 0);
    }

    #[test]
    fn transport_response_handler_suite_handle_successful_rpc() {
        let mut r = ResponseRouter::new(peer());
        let log = Log::default();
        r.add_rpc(12345, PendingRpc::Rpc(callback(&log)));
        assert_eq!(r.outstanding(), 1);
        r.handle(Message::RpcResponse {
            request_id: 54321,
            body: Bytes::new().into(),
        });
        assert_eq!(r.outstanding(), 1);
        r.handle(Message::RpcResponse {
            request_id: 12345,
            body: Bytes::from(vec![0u8; 10]).into(),
        });
        assert_eq!(r.outstanding(), 0);
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].as_ref().unwrap(), &Bytes::from(vec![0u8; 10]));
    }

    #[test]
    fn transport_response_handler_suite_handle_failed_rpc() {
        let mut r = ResponseRouter::new(peer());
        let log = Log::default();
        r.add_rpc(12345, PendingRpc::Rpc(callback(&log)));
        r.handle(Message::RpcFailure {
            request_id: 54321,
            error: "uh-oh!".into(),
        });
        assert_eq!(r.outstanding(), 1);
        r.handle(Message::RpcFailure {
            request_id: 12345,
            error: "oh no".into(),
        });
        assert_eq!(r.outstanding(), 0);
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 1);
        let err = log[0].as_ref().unwrap_err();
        assert_eq!(err.to_string(), "oh no");
        assert!(matches!(
            err,
            TransportError::RpcFailure {
                request_id: 12345,
                ..
            }
        ));
    }

    #[test]
    fn transport_response_handler_suite_test_active_streams() {
        let mut r = ResponseRouter::new(peer());
        let (tx, mut rx) = oneshot::channel();
        r.add_stream("stream-1".into(), tx);
        assert_eq!(r.outstanding(), 1);
        r.handle(Message::StreamResponse {
            stream_id: "stream-1".into(),
            byte_count: 1234,
            body: Bytes::new(),
        });
        let mut stream = rx.try_recv().unwrap().unwrap();
        assert_eq!(stream.len(), 1234);
        assert_eq!(
            r.outstanding(),
            1,
            "the stream is active until its body is complete"
        );
        r.handle_body(Bytes::from(vec![1u8; 1000]), false);
        r.handle_body(Bytes::from(vec![1u8; 234]), true);
        assert_eq!(r.outstanding(), 0);
        assert_eq!(stream.try_next().unwrap().unwrap().len(), 1000);

        let (tx, mut rx) = oneshot::channel();
        r.add_stream("stream-2".into(), tx);
        r.handle(Message::StreamFailure {
            stream_id: "stream-2".into(),
            error: "some error".into(),
        });
        assert_eq!(r.outstanding(), 0);
        assert_eq!(
            rx.try_recv().unwrap().unwrap_err().to_string(),
            "some error"
        );
    }

    #[test]
    fn transport_response_handler_suite_zero_length_stream_completes_at_once() {
        let mut r = ResponseRouter::new(peer());
        let (tx, mut rx) = oneshot::channel();
        r.add_stream("z".into(), tx);
        r.handle(Message::StreamResponse {
            stream_id: "z".into(),
            byte_count: 0,
            body: Bytes::new(),
        });
        assert_eq!(r.outstanding(), 0);
        let mut stream = rx.try_recv().unwrap().unwrap();
        assert_eq!(stream.len(), 0);
        assert!(stream.try_next().is_none());
    }

    #[test]
    fn transport_response_handler_suite_fail_outstanding_stream_callback_on_close() {
        let mut r = ResponseRouter::new(peer());
        let (tx, mut rx) = oneshot::channel();
        r.add_stream("stream-1".into(), tx);
        r.fail_all(&TransportError::ConnectionClosed { peer: peer() });
        assert_eq!(
            rx.try_recv().unwrap().unwrap_err().to_string(),
            "Connection from 127.0.0.1:40000 closed"
        );
    }

    #[test]
    fn transport_response_handler_suite_fail_outstanding_stream_callback_on_exception() {
        let mut r = ResponseRouter::new(peer());
        let (tx, mut rx) = oneshot::channel();
        r.add_stream("stream-1".into(), tx);
        r.handle(Message::StreamResponse {
            stream_id: "stream-1".into(),
            byte_count: 10,
            body: Bytes::new(),
        });
        let mut stream = rx.try_recv().unwrap().unwrap();
        r.handle_body(Bytes::from_static(b"abc"), false);
        let err = TransportError::io(peer(), std::io::Error::other("boom"));
        r.fail_all(&err);
        assert_eq!(stream.try_next().unwrap().unwrap().len(), 3);
        assert!(matches!(
            stream.try_next().unwrap(),
            Err(TransportError::StreamTruncated {
                received: 3,
                expected: 10,
                ..
            })
        ));
    }

    #[test]
    fn transport_response_handler_suite_handle_successful_merged_block_meta() {
        let mut r = ResponseRouter::new(peer());
        let (tx, mut rx) = oneshot::channel();
        r.add_rpc(13, PendingRpc::Meta(tx));
        r.handle(Message::MergedBlockMetaSuccess {
            request_id: 31,
            num_chunks: 2,
            body: Bytes::new(),
        });
        assert_eq!(r.outstanding(), 1);
        r.handle(Message::MergedBlockMetaSuccess {
            request_id: 13,
            num_chunks: 2,
            body: Bytes::from_static(b"bm"),
        });
        assert_eq!(
            rx.try_recv().unwrap().unwrap(),
            (2, Bytes::from_static(b"bm"))
        );
    }

    #[test]
    fn transport_response_handler_suite_handle_failed_merged_block_meta() {
        let mut r = ResponseRouter::new(peer());
        let (tx, mut rx) = oneshot::channel();
        r.add_rpc(51, PendingRpc::Meta(tx));
        r.handle(Message::RpcFailure {
            request_id: 15,
            error: "x".into(),
        });
        assert_eq!(r.outstanding(), 1);
        r.handle(Message::RpcFailure {
            request_id: 51,
            error: "failed".into(),
        });
        assert_eq!(rx.try_recv().unwrap().unwrap_err().to_string(), "failed");
    }

    #[test]
    fn cancelled_rpc_late_response_is_dropped() {
        let mut r = ResponseRouter::new(peer());
        let (tx, rx) = oneshot::channel();
        r.add_rpc(7, PendingRpc::Rpc(RpcReply::Future(tx)));
        drop(rx);
        r.handle(Message::RpcResponse {
            request_id: 7,
            body: Bytes::new().into(),
        });
        assert_eq!(r.outstanding(), 0);
        let (tx, _rx) = oneshot::channel();
        r.add_rpc(8, PendingRpc::Rpc(RpcReply::Future(tx)));
        assert!(r.remove_rpc(8));
        r.handle(Message::RpcResponse {
            request_id: 8,
            body: Bytes::new().into(),
        });
        assert_eq!(r.outstanding(), 0);
    }
}
