//! Spark's SASL encryption framing (`SaslEncryption`) as a stream between the socket and the
//! frame codec: every write is cut into pieces of at most `maxEncryptedBlockSize` plaintext
//! bytes, each sent as `[i64 length, counting itself][wrap(piece)]`; the reader unwraps piece by
//! piece and hands out the plaintext as one stream (pieces and frames need not line up).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::layer::{LayerError, Opener, Sealer, SecurityLayer};
use crate::auth::stream::{
    poll_write_sealed, sealable, Next, PieceReader, ReadEnd, SealedBuf, SliceCursor,
};
use crate::bootstrap::BoxedIo;

/// The largest wrapped piece accepted from a peer. Spark's pieces hold at most
/// `spark.network.sasl.maxEncryptedBlockSize` (64 KiB by default) plus 24 bytes of overhead.
pub(crate) const MAX_WRAPPED: usize = 16 << 20;
const LENGTH: usize = 8;
const READ_CHUNK: usize = 64 * 1024;

fn refused(peer: SocketAddr, e: LayerError) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("SASL-encrypted data from {peer} was refused: {e}"),
    )
}

/// The reading side's state.
struct Unwrapper {
    peer: SocketAddr,
    opener: Opener,
    /// The wrapped length of the piece being read, once its length field arrived.
    want: Option<usize>,
}

/// A stream wrapping and unwrapping with a negotiated DIGEST-MD5 confidentiality layer.
pub(crate) struct SaslStream {
    io: BoxedIo,
    sealer: Sealer,
    block: usize,
    out: SealedBuf,
    reader: PieceReader,
    dec: Unwrapper,
}

impl SaslStream {
    /// Wrap `io`; outbound pieces hold at most `block` plaintext bytes.
    pub(crate) fn new(
        io: BoxedIo,
        peer: SocketAddr,
        layer: SecurityLayer,
        block: usize,
    ) -> SaslStream {
        SaslStream {
            io,
            sealer: layer.sealer,
            block: block.clamp(1, MAX_WRAPPED / 2),
            out: SealedBuf::default(),
            reader: PieceReader::default(),
            dec: Unwrapper {
                peer,
                opener: layer.opener,
                want: None,
            },
        }
    }
}

impl Unwrapper {
    /// Unwrap the next complete piece in `rbuf`, or say how much more to read.
    fn next(&mut self, rbuf: &mut BytesMut) -> io::Result<Next> {
        loop {
            let want = match self.want {
                Some(w) => w,
                None => {
                    if rbuf.len() < LENGTH {
                        return Ok(Next::Need(READ_CHUNK));
                    }
                    let total = rbuf.get_i64();
                    if total < LENGTH as i64 || total - LENGTH as i64 > MAX_WRAPPED as i64 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{} sent a SASL-encrypted piece of impossible length {total} \
                                 (at most {MAX_WRAPPED} bytes are accepted; check \
                                 network.sasl.maxEncryptedBlockSize)",
                                self.peer
                            ),
                        ));
                    }
                    let w = total as usize - LENGTH;
                    self.want = Some(w);
                    w
                }
            };
            if rbuf.len() < want {
                return Ok(Next::Need(want.max(READ_CHUNK)));
            }
            self.want = None;
            let mut piece = rbuf.split_to(want);
            if piece.is_empty() {
                continue;
            }
            let n = self
                .opener
                .open(&mut piece)
                .map_err(|e| refused(self.peer, e))?;
            piece.truncate(n);
            return Ok(Next::Piece(piece));
        }
    }
}

impl AsyncRead for SaslStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let dec = &mut this.dec;
        let end = ready!(this
            .reader
            .poll_read(&mut this.io, cx, buf, |rbuf| dec.next(rbuf)))?;
        if let ReadEnd::Eof { leftover } = end {
            if leftover || this.dec.want.is_some() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} closed the connection in the middle of a SASL-encrypted piece",
                        this.dec.peer
                    ),
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Wrap up to [`sealable`] bytes of `bufs` onto `out`, in pieces of at most `block` bytes;
/// the count taken.
fn seal(sealer: &mut Sealer, block: usize, bufs: &[IoSlice<'_>], out: &mut Vec<u8>) -> usize {
    let n = sealable(bufs);
    let mut src = SliceCursor::new(bufs);
    let mut left = n;
    while left > 0 {
        let k = left.min(block);
        out.reserve(LENGTH + sealer.wrapped_len(k));
        let start = out.len();
        out.extend_from_slice(&[0; LENGTH]);
        src.take(k, |piece| out.extend_from_slice(piece));
        sealer.seal(out, start + LENGTH);
        let total = (out.len() - start) as i64;
        out[start..start + LENGTH].copy_from_slice(&total.to_be_bytes());
        left -= k;
    }
    n
}

impl AsyncWrite for SaslStream {
    crate::auth::stream::sealed_write_methods!();

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let (sealer, block) = (&mut this.sealer, this.block);
        poll_write_sealed(&mut this.io, &mut this.out, cx, |out| {
            seal(sealer, block, bufs, out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::sasl::layer::SaslCipher;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn layers() -> (SecurityLayer, SecurityLayer) {
        let ha1 = [3u8; 16];
        (
            SecurityLayer::new(&ha1, SaslCipher::TripleDes, true),
            SecurityLayer::new(&ha1, SaslCipher::TripleDes, false),
        )
    }

    #[tokio::test]
    async fn writes_are_cut_into_pieces_of_at_most_the_block_size() {
        // 8 KiB with 1 KiB blocks -> 8 pieces (Spark's testEncryptedMessageChunking).
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (c, s) = layers();
        let (a, mut wire) = tokio::io::duplex(1 << 20);
        let mut sender = SaslStream::new(Box::new(a), peer, c, 1024);
        let data: Vec<u8> = (0..8192).map(|i| (i % 251) as u8).collect();
        sender.write_all(&data).await.unwrap();
        sender.flush().await.unwrap();
        drop(sender);
        let mut raw = Vec::new();
        wire.read_to_end(&mut raw).await.unwrap();
        let mut pieces = 0;
        let mut at = 0;
        while at < raw.len() {
            let len = i64::from_be_bytes(raw[at..at + 8].try_into().unwrap()) as usize;
            assert_eq!(len, 8 + 1024 + 6 + 16, "1024 + pad 6 + MAC 10 + trailer 6");
            at += len;
            pieces += 1;
        }
        assert_eq!(pieces, 8);
        // Fed back one byte at a time, the receiver gets the plaintext.
        let (b, mut feed) = tokio::io::duplex(64);
        let mut receiver = SaslStream::new(Box::new(b), peer, s, 1024);
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 8192];
            receiver.read_exact(&mut got).await.unwrap();
            got
        });
        for byte in raw {
            feed.write_all(&[byte]).await.unwrap();
        }
        assert_eq!(reader.await.unwrap(), data);
    }

    #[tokio::test]
    async fn a_corrupted_or_impossible_piece_fails_the_read() {
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let (c, s) = layers();
        let (a, mut wire) = tokio::io::duplex(1 << 20);
        let mut sender = SaslStream::new(Box::new(a), peer, c, 65536);
        sender.write_all(b"hello").await.unwrap();
        sender.flush().await.unwrap();
        let mut raw = [0u8; 8 + 22];
        wire.read_exact(&mut raw).await.unwrap();
        raw[10] ^= 0x40;
        let (b, mut feed) = tokio::io::duplex(1024);
        let mut receiver = SaslStream::new(Box::new(b), peer, s, 65536);
        feed.write_all(&raw).await.unwrap();
        let err = receiver.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let (_, s) = layers();
        let (b, mut feed) = tokio::io::duplex(1024);
        let mut receiver = SaslStream::new(Box::new(b), peer, s, 65536);
        feed.write_all(&i64::MAX.to_be_bytes()).await.unwrap();
        let err = receiver.read(&mut [0u8; 16]).await.unwrap_err();
        assert!(err.to_string().contains("impossible length"), "{err}");
        // A peer vanishing mid-piece.
        let (_, s) = layers();
        let (b, mut feed) = tokio::io::duplex(1024);
        let mut receiver = SaslStream::new(Box::new(b), peer, s, 65536);
        feed.write_all(&100i64.to_be_bytes()).await.unwrap();
        feed.write_all(&[1, 2, 3]).await.unwrap();
        drop(feed);
        let err = receiver.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }
}
