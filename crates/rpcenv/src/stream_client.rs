//! The reading side of a remote stream: [`StreamReader`] (`tokio::io::AsyncRead`) and
//! [`BlockingStreamReader`] (`std::io::Read`), over the pieces a connection delivers. Served
//! files ([`FileChannel`](crate::FileChannel)) and endpoints' streams are both read through it.
//!
//! Memory stays bounded whatever the stream's length: pieces not yet read count in their
//! connection's byte budget (`rpc.io.maxQueuedBytesPerConnection`), so a reader that falls
//! behind makes the connection stop reading from its socket and TCP slows the sender down.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use rpcenv_transport::{ByteStream, TransportClient, TransportError};
use tokio::io::{AsyncRead, ReadBuf};

use crate::error::RpcError;
use crate::timeout::{block_on_until, ensure_blocking_allowed};

/// The error of a `StreamRequest`: a `StreamFailure` answer is [`RpcError::StreamFailed`]
/// carrying the server's text verbatim (`Stream '<id>' was not found.` is matched by Spark's
/// executors); any other failure (the connection broke) is `otherwise(error)`.
pub(crate) fn stream_request_failed(
    error: TransportError,
    otherwise: impl FnOnce(TransportError) -> RpcError,
) -> RpcError {
    match error {
        TransportError::StreamFailure {
            peer,
            stream_id,
            message,
        } => RpcError::StreamFailed {
            peer: peer.to_string(),
            stream_id,
            message,
        },
        other => otherwise(other),
    }
}

/// A stream of bytes from another env, read as it arrives: `tokio::io::AsyncRead`, ending
/// (a read of 0 bytes) after the announced length. A failure (the connection broke, the
/// server's body ended short) is the error of a read, an `io::Error` whose inner error is the
/// [`RpcError::Transfer`] naming the stream and the peer; a body that ends before its announced
/// length is such a failure too, never a short EOF.
pub struct StreamReader {
    stream: ByteStream,
    peer: SocketAddr,
    /// The piece being read.
    piece: Bytes,
    /// Bytes taken from the stream so far.
    received: u64,
    /// The connection to close when the reader is dropped before the end (one the reader has
    /// to itself, so that the server stops sending the rest); `None` on a shared connection.
    close_early: Option<TransportClient>,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("stream_id", &self.stream_id())
            .field("peer", &self.peer)
            .field("len", &self.len())
            .field("received", &self.received)
            .finish()
    }
}

impl StreamReader {
    /// A reader of `stream`, arriving over `client`.
    pub(crate) fn new(stream: ByteStream, client: &TransportClient) -> Self {
        StreamReader {
            stream,
            peer: client.remote_addr(),
            piece: Bytes::new(),
            received: 0,
            close_early: None,
        }
    }

    /// Dropping this reader before the end closes `client` (the files pool's connections:
    /// Spark's client does the same, there is no other way to stop a stream being sent).
    pub(crate) fn closing_early(mut self, client: &TransportClient) -> Self {
        self.close_early = Some(client.clone());
        self
    }

    /// The stream id the server answered with.
    pub fn stream_id(&self) -> &str {
        self.stream.stream_id()
    }

    /// The length the server announced, in bytes.
    pub fn len(&self) -> u64 {
        self.stream.len()
    }

    /// True for an empty stream.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn failed(&self, source: TransportError) -> RpcError {
        RpcError::Transfer {
            what: format!("stream '{}'", self.stream_id()),
            peer: self.peer.to_string(),
            source: Box::new(source),
        }
    }

    /// Polls for the next piece of the body; `Ready(Ok(None))` at its end.
    pub(crate) fn poll_piece(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, RpcError>> {
        if !self.piece.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.piece))));
        }
        if self.received == self.len() {
            return Poll::Ready(Ok(None));
        }
        match ready!(self.stream.poll_next_chunk(cx)) {
            Some(Ok(piece)) => {
                self.received += piece.len() as u64;
                Poll::Ready(Ok(Some(piece)))
            }
            Some(Err(source)) => Poll::Ready(Err(self.failed(source))),
            None => {
                let truncated = TransportError::StreamTruncated {
                    peer: self.peer,
                    stream_id: self.stream_id().to_string(),
                    received: self.received,
                    expected: self.len(),
                };
                Poll::Ready(Err(self.failed(truncated)))
            }
        }
    }

    /// The next piece of the body; `None` at its end.
    pub(crate) async fn next_piece(&mut self) -> Result<Option<Bytes>, RpcError> {
        std::future::poll_fn(|cx| self.poll_piece(cx)).await
    }
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        if let Some(client) = &self.close_early {
            if self.received < self.len() && client.is_active() {
                tracing::debug!(stream_id = self.stream_id(), peer = %self.peer, received = self.received, len = self.len(), "stream reader dropped before the end; closing its connection");
                client.close();
            }
        }
    }
}

impl AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut piece = match ready!(this.poll_piece(cx)) {
            Ok(Some(piece)) => piece,
            Ok(None) => return Poll::Ready(Ok(())),
            Err(e) => return Poll::Ready(Err(io::Error::other(e))),
        };
        let n = buf.remaining().min(piece.len());
        buf.put_slice(&piece[..n]);
        piece.advance(n);
        this.piece = piece;
        Poll::Ready(Ok(()))
    }
}

/// [`StreamReader`] as a blocking `std::io::Read`, for plain threads (a read on a tokio
/// runtime thread fails instead of blocking it).
#[derive(Debug)]
pub struct BlockingStreamReader {
    inner: StreamReader,
}

impl BlockingStreamReader {
    pub(crate) fn new(inner: StreamReader) -> Self {
        BlockingStreamReader { inner }
    }

    /// The stream id the server answered with.
    pub fn stream_id(&self) -> &str {
        self.inner.stream_id()
    }

    /// The length the server announced, in bytes.
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    /// True for an empty stream.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// The async reader.
    pub fn into_async(self) -> StreamReader {
        self.inner
    }
}

impl io::Read for BlockingStreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Err(e) = ensure_blocking_allowed("BlockingStreamReader::read") {
            return Err(io::Error::other(e));
        }
        let mut read_buf = ReadBuf::new(buf);
        let inner = &mut self.inner;
        block_on_until(
            std::future::poll_fn(|cx| Pin::new(&mut *inner).poll_read(cx, &mut read_buf)),
            None,
        )
        .expect("no deadline: the read completes")?;
        Ok(read_buf.filled().len())
    }
}
