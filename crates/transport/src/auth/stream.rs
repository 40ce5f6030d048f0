//! Pieces shared by the cipher streams (AES-CTR, AES-GCM, SASL): the encrypted write buffer and
//! the write side built on it, and the errors that explain a cipher or version mismatch.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::task::ready;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, ReadBuf};

use crate::bootstrap::BoxedIo;

/// Plaintext taken per write call (encrypted into the write buffer at once).
pub(crate) const MAX_SEAL: usize = 256 * 1024;

/// What Spark's protocol cannot detect at the handshake.
pub(crate) const NO_KEY_CONFIRMATION: &str = "Spark's auth protocol has no key confirmation, so \
     peers that disagree on network.crypto.cipher or network.crypto.authEngineVersion complete \
     the handshake and fail at the first encrypted message";

/// Data from `peer` did not decrypt (a tag mismatch or an impossible frame).
pub(crate) fn undecryptable(peer: SocketAddr, detail: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "data from {peer} could not be decrypted ({detail}); {NO_KEY_CONFIRMATION}: check \
             that both sides use the same settings"
        ),
    )
}

/// The peer closed right after the handshake without sending anything, although this side sent
/// data: what a peer that could not decrypt our first message does.
pub(crate) fn closed_without_data(peer: SocketAddr) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!(
            "{peer} closed the connection without sending any encrypted data after \
             authentication; if this happened at the first message, the peer probably could not \
             decrypt it ({NO_KEY_CONFIRMATION})"
        ),
    )
}

/// Encrypted bytes waiting for the socket.
#[derive(Default)]
pub(crate) struct SealedBuf {
    pub(crate) buf: Vec<u8>,
    pos: usize,
}

impl SealedBuf {
    /// Write out everything buffered.
    pub(crate) fn poll_drain(
        &mut self,
        io: &mut BoxedIo,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while self.pos < self.buf.len() {
            match Pin::new(&mut *io).poll_write(cx, &self.buf[self.pos..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.pos += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.buf.clear();
        self.pos = 0;
        if self.buf.capacity() > 4 * MAX_SEAL {
            self.buf.shrink_to(MAX_SEAL);
        }
        Poll::Ready(Ok(()))
    }
}

/// Copies `n` bytes from a cursor over I/O slices.
pub(crate) struct SliceCursor<'a, 'b> {
    slices: &'a [io::IoSlice<'b>],
    index: usize,
    offset: usize,
}

impl<'a, 'b> SliceCursor<'a, 'b> {
    pub(crate) fn new(slices: &'a [io::IoSlice<'b>]) -> Self {
        SliceCursor {
            slices,
            index: 0,
            offset: 0,
        }
    }

    /// Call `f` on successive pieces totalling `n` bytes (fewer if the slices run out).
    pub(crate) fn take(&mut self, mut n: usize, mut f: impl FnMut(&[u8])) {
        while n > 0 && self.index < self.slices.len() {
            let s = &self.slices[self.index][self.offset..];
            let k = s.len().min(n);
            f(&s[..k]);
            n -= k;
            self.offset += k;
            if self.offset == self.slices[self.index].len() {
                self.index += 1;
                self.offset = 0;
            }
        }
    }
}

/// Total length of `slices`, capped at [`MAX_SEAL`].
pub(crate) fn sealable(slices: &[io::IoSlice<'_>]) -> usize {
    let mut n = 0usize;
    for s in slices {
        n = n.saturating_add(s.len());
        if n >= MAX_SEAL {
            return MAX_SEAL;
        }
    }
    n
}

/// `poll_write_vectored` of a cipher stream: drain what is buffered, then `seal` new plaintext
/// from the caller's slices into the buffer (returning how much it took) and start writing it.
pub(crate) fn poll_write_sealed(
    io: &mut BoxedIo,
    out: &mut SealedBuf,
    cx: &mut Context<'_>,
    seal: impl FnOnce(&mut Vec<u8>) -> usize,
) -> Poll<io::Result<usize>> {
    ready!(out.poll_drain(io, cx))?;
    let n = seal(&mut out.buf);
    if let Poll::Ready(Err(e)) = out.poll_drain(io, cx) {
        return Poll::Ready(Err(e));
    }
    Poll::Ready(Ok(n))
}

/// `poll_flush` of a cipher stream: everything buffered reaches the socket first.
pub(crate) fn poll_flush_sealed(
    io: &mut BoxedIo,
    out: &mut SealedBuf,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    ready!(out.poll_drain(io, cx))?;
    Pin::new(io).poll_flush(cx)
}

/// `poll_shutdown` of a cipher stream: everything buffered reaches the socket first.
pub(crate) fn poll_shutdown_sealed(
    io: &mut BoxedIo,
    out: &mut SealedBuf,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    ready!(out.poll_drain(io, cx))?;
    Pin::new(io).poll_shutdown(cx)
}

/// The `AsyncWrite` methods every cipher stream shares (the stream has `io: BoxedIo` and
/// `out: SealedBuf` fields): a single-buffer write goes through the vectored one, and flush and
/// shutdown let the sealed bytes reach the socket first. Only `poll_write_vectored`, which
/// seals, is each cipher's own.
macro_rules! sealed_write_methods {
    () => {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let this = self.get_mut();
            $crate::auth::stream::poll_flush_sealed(&mut this.io, &mut this.out, cx)
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let this = self.get_mut();
            $crate::auth::stream::poll_shutdown_sealed(&mut this.io, &mut this.out, cx)
        }
    };
}
pub(crate) use sealed_write_methods;

/// What a framed cipher's decoder found in the ciphertext buffer.
pub(crate) enum Next {
    /// A decrypted piece of plaintext.
    Piece(BytesMut),
    /// Nothing complete yet: read at least this many more bytes.
    Need(usize),
}

/// How a read of a framed cipher stream ended.
pub(crate) enum ReadEnd {
    /// Plaintext was handed out.
    Data,
    /// The peer closed the connection; `leftover` if ciphertext of an incomplete piece remains.
    Eof { leftover: bool },
}

/// The read side of the framed cipher streams (AES-GCM, SASL): ciphertext gathered in a buffer,
/// decoded piece by piece, the plaintext handed out as one stream.
#[derive(Default)]
pub(crate) struct PieceReader {
    rbuf: BytesMut,
    plain: BytesMut,
    /// Any ciphertext arrived.
    pub(crate) read_any: bool,
}

impl PieceReader {
    /// `poll_read` of a framed cipher stream; `next` takes the next complete piece out of the
    /// ciphertext buffer.
    pub(crate) fn poll_read(
        &mut self,
        io: &mut BoxedIo,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
        mut next: impl FnMut(&mut BytesMut) -> io::Result<Next>,
    ) -> Poll<io::Result<ReadEnd>> {
        loop {
            if !self.plain.is_empty() {
                let k = self.plain.len().min(buf.remaining());
                buf.put_slice(&self.plain[..k]);
                self.plain.advance(k);
                return Poll::Ready(Ok(ReadEnd::Data));
            }
            let want = match next(&mut self.rbuf)? {
                Next::Piece(p) => {
                    self.plain = p;
                    continue;
                }
                Next::Need(want) => want,
            };
            if self.rbuf.capacity() - self.rbuf.len() < want {
                self.rbuf.reserve(want);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut *io),
                cx,
                &mut self.rbuf
            ))?;
            if n == 0 {
                return Poll::Ready(Ok(ReadEnd::Eof {
                    leftover: !self.rbuf.is_empty(),
                }));
            }
            self.read_any = true;
        }
    }
}
