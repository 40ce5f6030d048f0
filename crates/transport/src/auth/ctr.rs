//! The AES-CTR session cipher (Spark's `CtrTransportCipher`): one continuous AES-CTR keystream
//! per direction for the life of the connection, the whole 16-byte IV a 128-bit big-endian
//! counter; AES-256 with v1 keys (32 bytes), AES-128 with v2 keys. No framing and no tag.
//!
//! CTR is unauthenticated; as a sanity check the first decrypted bytes must form a plausible
//! frame header, so a cipher or version mismatch is reported as such rather than as a frame
//! error.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use aes::{Aes128, Aes256};
use ctr::cipher::{KeyIvInit, StreamCipher};
use ctr::Ctr128BE;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stream::{
    closed_without_data, poll_write_sealed, sealable, undecryptable, SealedBuf, SliceCursor,
};
use crate::bootstrap::BoxedIo;

enum Keystream {
    A128(Box<Ctr128BE<Aes128>>),
    A256(Box<Ctr128BE<Aes256>>),
}

impl Keystream {
    fn new(key: &[u8], iv: &[u8; 16]) -> Keystream {
        match key.len() {
            32 => Keystream::A256(Box::new(
                Ctr128BE::<Aes256>::new_from_slices(key, iv).expect("32-byte key"),
            )),
            _ => Keystream::A128(Box::new(
                Ctr128BE::<Aes128>::new_from_slices(key, iv).expect("16-byte key"),
            )),
        }
    }

    fn apply(&mut self, buf: &mut [u8]) {
        match self {
            Keystream::A128(c) => c.apply_keystream(buf),
            Keystream::A256(c) => c.apply_keystream(buf),
        }
    }
}

/// Checks the first decrypted frame header (8-byte length + type byte).
struct FirstFrameCheck {
    header: [u8; 9],
    have: usize,
}

impl FirstFrameCheck {
    /// Feed decrypted bytes; `Err` when the header is impossible.
    fn feed(&mut self, data: &[u8]) -> Result<bool, &'static str> {
        let k = (9 - self.have).min(data.len());
        self.header[self.have..self.have + k].copy_from_slice(&data[..k]);
        self.have += k;
        if self.have < 9 {
            return Ok(false);
        }
        let len = i64::from_be_bytes(self.header[..8].try_into().expect("8 bytes"));
        if !(9..=i64::from(i32::MAX) + 8).contains(&len) {
            return Err("the first frame's length is impossible");
        }
        if self.header[8] > 12 {
            return Err("the first frame's type is unknown");
        }
        Ok(true)
    }
}

/// A stream encrypting and decrypting with AES-CTR.
pub(crate) struct CtrStream {
    io: BoxedIo,
    peer: SocketAddr,
    dec: Keystream,
    enc: Keystream,
    out: SealedBuf,
    check: Option<FirstFrameCheck>,
    wrote: bool,
    read: bool,
}

impl CtrStream {
    /// `in_iv` decrypts what arrives, `out_iv` encrypts what leaves.
    pub(crate) fn new(
        io: BoxedIo,
        peer: SocketAddr,
        key: &[u8],
        in_iv: &[u8; 16],
        out_iv: &[u8; 16],
    ) -> Self {
        CtrStream {
            io,
            peer,
            dec: Keystream::new(key, in_iv),
            enc: Keystream::new(key, out_iv),
            out: SealedBuf::default(),
            check: Some(FirstFrameCheck {
                header: [0; 9],
                have: 0,
            }),
            wrote: false,
            read: false,
        }
    }
}

impl AsyncRead for CtrStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let fresh = &mut buf.filled_mut()[before..];
        if fresh.is_empty() {
            if !this.read && this.wrote && buf.remaining() > 0 {
                return Poll::Ready(Err(closed_without_data(this.peer)));
            }
            return Poll::Ready(Ok(()));
        }
        this.read = true;
        this.dec.apply(fresh);
        if let Some(check) = &mut this.check {
            match check.feed(fresh) {
                Ok(true) => this.check = None,
                Ok(false) => {}
                Err(detail) => return Poll::Ready(Err(undecryptable(this.peer, detail))),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Encrypt up to [`sealable`] bytes of `bufs` onto `out`; the count taken.
fn seal(enc: &mut Keystream, bufs: &[IoSlice<'_>], out: &mut Vec<u8>) -> usize {
    let n = sealable(bufs);
    let start = out.len();
    out.reserve(n);
    SliceCursor::new(bufs).take(n, |piece| out.extend_from_slice(piece));
    enc.apply(&mut out[start..]);
    n
}

impl AsyncWrite for CtrStream {
    super::stream::sealed_write_methods!();

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let enc = &mut this.enc;
        let r = poll_write_sealed(&mut this.io, &mut this.out, cx, |out| seal(enc, bufs, out));
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.wrote = true;
        }
        r
    }
}
