//! Pieces shared by the two session-cipher streams: the encrypted write buffer and the errors
//! that explain a cipher or version mismatch.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

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

/// `AsyncWrite` for a session-cipher stream: the same for every cipher. The stream has fields
/// `io: BoxedIo`, `out: SealedBuf` and `wrote: bool`, and a method
/// `seal(&mut self, bufs: &[IoSlice<'_>]) -> usize` that encrypts up to [`MAX_SEAL`] bytes of
/// `bufs` into `out` and returns how many it took. A write first drains what an earlier one left
/// (so memory stays bounded), then seals, then starts draining what it sealed.
macro_rules! sealed_async_write {
    ($stream:ty) => {
        impl AsyncWrite for $stream {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                self.poll_write_vectored(cx, &[IoSlice::new(buf)])
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                let this = self.get_mut();
                ready!(this.out.poll_drain(&mut this.io, cx))?;
                let n = this.seal(bufs);
                if n > 0 {
                    this.wrote = true;
                }
                if let Poll::Ready(Err(e)) = this.out.poll_drain(&mut this.io, cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(n))
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                let this = self.get_mut();
                ready!(this.out.poll_drain(&mut this.io, cx))?;
                Pin::new(&mut this.io).poll_flush(cx)
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                let this = self.get_mut();
                ready!(this.out.poll_drain(&mut this.io, cx))?;
                Pin::new(&mut this.io).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use sealed_async_write;
