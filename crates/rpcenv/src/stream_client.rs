//! The reading side of a remote stream: [`StreamReader`] (`tokio::io::AsyncRead`) and
//! [`BlockingStreamReader`] (`std::io::Read`), over the pieces a connection delivers.
//!
//! Memory stays bounded whatever the stream's length: pieces not yet read count in their
//! connection's byte budget (`rpc.io.maxQueuedBytesPerConnection`), so a reader that falls
//! behind makes the connection stop reading from its socket and TCP slows the sender down.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use rpcenv_transport::{ByteStream, TransportError};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio_util::sync::ReusableBoxFuture;

use crate::error::RpcError;
use crate::timeout::{block_on_until, ensure_blocking_allowed};

type Next = (ByteStream, Option<Result<Bytes, TransportError>>);

async fn next_piece(mut stream: ByteStream) -> Next {
    let piece = stream.next_chunk().await;
    (stream, piece)
}

/// A stream of bytes from another env, read as it arrives: `tokio::io::AsyncRead`, ending
/// (a read of 0 bytes) after the announced length. A failure (the connection broke, the
/// server's body ended short) is the error of a read, an `io::Error` whose inner error is the
/// [`RpcError::Transfer`] naming the stream and the peer.
pub struct StreamReader {
    stream_id: String,
    peer: String,
    len: u64,
    piece: Bytes,
    /// The stream, while no read of a piece is under way.
    idle: Option<ByteStream>,
    /// The read of the next piece, once one was started.
    next: Option<ReusableBoxFuture<'static, Next>>,
    reading: bool,
    done: bool,
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("stream_id", &self.stream_id)
            .field("peer", &self.peer)
            .field("len", &self.len)
            .field("done", &self.done)
            .finish()
    }
}

impl StreamReader {
    pub(crate) fn new(stream: ByteStream, peer: String) -> Self {
        StreamReader {
            stream_id: stream.stream_id().to_string(),
            len: stream.len(),
            done: stream.is_empty(),
            peer,
            piece: Bytes::new(),
            idle: Some(stream),
            next: None,
            reading: false,
        }
    }

    /// The stream id the server answered with.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// The length the server announced, in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for an empty stream.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn failed(&self, source: TransportError) -> io::Error {
        io::Error::other(RpcError::Transfer {
            what: format!("stream '{}'", self.stream_id),
            peer: self.peer.clone(),
            source: Box::new(source),
        })
    }

    /// Polls for the next piece into `self.piece`; `Ok(false)` at the end of the stream.
    fn poll_piece(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        if !self.reading {
            let Some(stream) = self.idle.take() else {
                return Poll::Ready(Ok(false));
            };
            match &mut self.next {
                Some(next) => next.set(next_piece(stream)),
                None => self.next = Some(ReusableBoxFuture::new(next_piece(stream))),
            }
            self.reading = true;
        }
        let next = self.next.as_mut().expect("a read is under way");
        let (stream, piece) = ready!(next.poll(cx));
        self.reading = false;
        self.idle = Some(stream);
        match piece {
            Some(Ok(piece)) => {
                self.piece = piece;
                Poll::Ready(Ok(true))
            }
            None => {
                self.done = true;
                Poll::Ready(Ok(false))
            }
            Some(Err(e)) => {
                self.done = true;
                Poll::Ready(Err(self.failed(e)))
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
        while this.piece.is_empty() {
            if this.done || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if !ready!(this.poll_piece(cx))? {
                return Poll::Ready(Ok(()));
            }
        }
        let n = this.piece.len().min(buf.remaining());
        buf.put_slice(&this.piece[..n]);
        this.piece.advance(n);
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
        block_on_until(self.inner.read(buf), None).expect("no deadline: the read completes")
    }
}
