//! The AES-GCM session cipher (Spark's `GcmTransportCipher`, Tink's `AesGcmHkdfStreaming` with
//! 32 KiB segments):
//!
//! ```text
//! message = [i64 total length, counting itself][header][segment 0]...[segment n-1]
//! header  = [u8 header length = 1 + keyLen + 7][salt: keyLen][nonce prefix: 7]
//! segment = AES-GCM(subkey, nonce = prefix || u32 BE index || u8 last, no AAD) of at most
//!           32752 plaintext bytes, + 16-byte tag; the last segment is flagged
//! subkey  = HKDF-SHA256(ikm = session key, salt = header salt, info = the 8 length bytes, keyLen)
//! ```
//!
//! Each write call becomes one message (up to 256 KiB of plaintext); the reader decrypts
//! segment by segment and hands out the plaintext as one stream, so message and frame
//! boundaries need not agree.
//!
//! Per-message keys without per-message key derivation: Spark draws a random salt and nonce
//! prefix for every message. Here a sender draws a random salt per connection (renewed every
//! 2^32 messages) and numbers its messages in the 7-byte nonce prefix, so every (subkey, nonce)
//! pair is still used once, while the subkey, which then depends only on the message length, is
//! cached for the few lengths that recur. The receiver accepts both (it derives from the header
//! whatever the sender chose, with a small cache of its own).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use aes_gcm::aead::{Nonce, Tag};
use aes_gcm::{AeadInOut, Aes128Gcm, Aes256Gcm, KeyInit};
use bytes::{Buf, BytesMut};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use zeroize::Zeroizing;

use super::stream::{
    closed_without_data, poll_write_sealed, sealable, undecryptable, Next, PieceReader, ReadEnd,
    SealedBuf, SliceCursor,
};
use crate::bootstrap::BoxedIo;

/// Ciphertext segment size (Spark's `32768`).
pub(crate) const SEGMENT: usize = 32 * 1024;
const TAG: usize = 16;
/// The longest encrypted message accepted: twice the largest frame, far above its segments' tags.
const MAX_MESSAGE: i64 = 2 * i32::MAX as i64;
/// Plaintext per segment.
pub(crate) const PLAIN_SEGMENT: usize = SEGMENT - TAG;
const PREFIX: usize = 7;
const READ_CHUNK: usize = 64 * 1024;

enum SegmentCipher {
    A128(Box<Aes128Gcm>),
    A256(Box<Aes256Gcm>),
}

fn nonce(prefix: &[u8; PREFIX], index: u32, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..PREFIX].copy_from_slice(prefix);
    n[PREFIX..PREFIX + 4].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n
}

impl SegmentCipher {
    /// The per-message cipher: subkey from the session key, the header salt and the length.
    fn derive(key: &[u8], salt: &[u8], total_len: u64) -> SegmentCipher {
        let mut sub = Zeroizing::new([0u8; 32]);
        let sub = &mut sub[..key.len()];
        Hkdf::<Sha256>::new(Some(salt), key)
            .expand(&total_len.to_be_bytes(), sub)
            .expect("HKDF output length is small");
        match key.len() {
            32 => SegmentCipher::A256(Box::new(
                Aes256Gcm::new_from_slice(sub).expect("32-byte key"),
            )),
            _ => SegmentCipher::A128(Box::new(
                Aes128Gcm::new_from_slice(sub).expect("16-byte key"),
            )),
        }
    }

    fn seal(&self, nonce: [u8; 12], buf: &mut [u8]) -> [u8; TAG] {
        let n = Nonce::<Aes128Gcm>::from(nonce);
        let tag = match self {
            SegmentCipher::A128(c) => c.encrypt_inout_detached(&n, &[], buf.into()),
            SegmentCipher::A256(c) => c.encrypt_inout_detached(&n, &[], buf.into()),
        }
        .expect("segment within AES-GCM limits");
        tag.into()
    }

    fn open(&self, nonce: [u8; 12], buf: &mut [u8], tag: &[u8]) -> Result<(), ()> {
        let n = Nonce::<Aes128Gcm>::from(nonce);
        let tag = Tag::<Aes128Gcm>::try_from(tag).map_err(|_| ())?;
        match self {
            SegmentCipher::A128(c) => c.decrypt_inout_detached(&n, &[], buf.into(), &tag),
            SegmentCipher::A256(c) => c.decrypt_inout_detached(&n, &[], buf.into(), &tag),
        }
        .map_err(|_| ())
    }
}

/// Subkeys recently derived, keyed by (salt, total length); most recent first.
struct SubkeyCache {
    entries: Vec<(Vec<u8>, u64, SegmentCipher)>,
}

const SUBKEY_CACHE: usize = 8;

impl SubkeyCache {
    fn new() -> Self {
        SubkeyCache {
            entries: Vec::with_capacity(SUBKEY_CACHE),
        }
    }

    fn get(&mut self, key: &[u8], salt: &[u8], total: u64) -> &SegmentCipher {
        let hit = self
            .entries
            .iter()
            .position(|(s, t, _)| *t == total && s.as_slice() == salt);
        match hit {
            Some(0) => {}
            Some(i) => {
                let e = self.entries.remove(i);
                self.entries.insert(0, e);
            }
            None => {
                if self.entries.len() == SUBKEY_CACHE {
                    self.entries.pop();
                }
                let c = SegmentCipher::derive(key, salt, total);
                self.entries.insert(0, (salt.to_vec(), total, c));
            }
        }
        &self.entries[0].2
    }
}

/// The size on the wire of a message carrying `plain` bytes.
pub(crate) fn message_len(header_len: usize, plain: usize) -> usize {
    let (full, rem) = (plain / PLAIN_SEGMENT, plain % PLAIN_SEGMENT);
    8 + header_len + full * SEGMENT + if rem > 0 { rem + TAG } else { 0 }
}

/// Append one encrypted message carrying `n` bytes from `src` to `out`, with the given salt and
/// nonce prefix.
fn seal_message(
    key: &[u8],
    salt: &[u8],
    prefix: &[u8; PREFIX],
    cache: &mut SubkeyCache,
    src: &mut SliceCursor<'_, '_>,
    n: usize,
    out: &mut Vec<u8>,
) {
    let header_len = 1 + key.len() + PREFIX;
    let total = message_len(header_len, n);
    out.reserve(total);
    out.extend_from_slice(&(total as u64).to_be_bytes());
    out.push(header_len as u8);
    out.extend_from_slice(salt);
    out.extend_from_slice(prefix);
    let cipher = cache.get(key, salt, total as u64);
    let segments = n.div_ceil(PLAIN_SEGMENT);
    let mut left = n;
    for index in 0..segments {
        let len = left.min(PLAIN_SEGMENT);
        let start = out.len();
        src.take(len, |piece| out.extend_from_slice(piece));
        let last = index + 1 == segments;
        let tag = cipher.seal(nonce(prefix, index as u32, last), &mut out[start..]);
        out.extend_from_slice(&tag);
        left -= len;
    }
}

enum ReadState {
    /// Waiting for a message's 8-byte length.
    Length,
    /// Waiting for the header; `total` is the announced length.
    Header { total: u64 },
    /// Decrypting segments; `left` ciphertext bytes of the message remain.
    Segments {
        salt: Vec<u8>,
        total: u64,
        prefix: [u8; PREFIX],
        index: u32,
        left: u64,
    },
}

/// The reading side's state: where in a message the ciphertext stands.
struct Decoder {
    peer: SocketAddr,
    key: Zeroizing<Vec<u8>>,
    state: ReadState,
    read_keys: SubkeyCache,
}

/// A stream encrypting and decrypting with Spark's segmented AES-GCM.
pub(crate) struct GcmStream {
    io: BoxedIo,
    out: SealedBuf,
    reader: PieceReader,
    dec: Decoder,
    write_keys: SubkeyCache,
    /// This sender's salt (see the module docs) and message counter.
    salt: Zeroizing<Vec<u8>>,
    counter: u64,
    wrote: bool,
}

/// Messages sent under one salt before a new one is drawn.
const MESSAGES_PER_SALT: u64 = 1 << 32;

fn random_salt(len: usize) -> Zeroizing<Vec<u8>> {
    let mut salt = Zeroizing::new(vec![0u8; len]);
    rand::rng().fill_bytes(&mut salt);
    salt
}

impl GcmStream {
    /// A stream using `key` (16 or 32 bytes) in both directions.
    pub(crate) fn new(io: BoxedIo, peer: SocketAddr, key: &[u8]) -> Self {
        GcmStream {
            io,
            out: SealedBuf::default(),
            reader: PieceReader::default(),
            dec: Decoder {
                peer,
                key: Zeroizing::new(key.to_vec()),
                state: ReadState::Length,
                read_keys: SubkeyCache::new(),
            },
            write_keys: SubkeyCache::new(),
            salt: random_salt(key.len()),
            counter: 0,
            wrote: false,
        }
    }
}

impl Decoder {
    fn header_len(&self) -> usize {
        1 + self.key.len() + PREFIX
    }

    /// Decrypt the next complete segment in `rbuf`, or say how much more to read.
    fn next(&mut self, rbuf: &mut BytesMut) -> io::Result<Next> {
        loop {
            match &mut self.state {
                ReadState::Length => {
                    if rbuf.len() < 8 {
                        return Ok(Next::Need(self.wanted()));
                    }
                    let total = rbuf.get_i64();
                    let min = (8 + self.header_len()) as i64;
                    // A message is at most one frame (whose length fits an i32) sealed in
                    // segments; far above that, the length can only be undecryptable bytes read
                    // as one (peers that disagree on the cipher), not a reason to wait for more.
                    if total < min || total > MAX_MESSAGE {
                        return Err(undecryptable(
                            self.peer,
                            "an encrypted message's length is impossible",
                        ));
                    }
                    self.state = ReadState::Header {
                        total: total as u64,
                    };
                }
                ReadState::Header { total } => {
                    let total = *total;
                    let header_len = self.header_len();
                    if let Some(&first) = rbuf.first() {
                        if usize::from(first) != header_len {
                            return Err(undecryptable(
                                self.peer,
                                "an encrypted message's header has the wrong length",
                            ));
                        }
                    }
                    if rbuf.len() < header_len {
                        return Ok(Next::Need(self.wanted()));
                    }
                    let header = rbuf.split_to(header_len);
                    let salt = &header[1..1 + self.key.len()];
                    let prefix: [u8; PREFIX] =
                        header[1 + self.key.len()..].try_into().expect("7 bytes");
                    let left = total - 8 - header_len as u64;
                    let tail = left % SEGMENT as u64;
                    if tail > 0 && tail <= TAG as u64 {
                        return Err(undecryptable(
                            self.peer,
                            "an encrypted message's length does not fit its segments",
                        ));
                    }
                    self.state = if left == 0 {
                        ReadState::Length
                    } else {
                        ReadState::Segments {
                            salt: salt.to_vec(),
                            total,
                            prefix,
                            index: 0,
                            left,
                        }
                    };
                }
                ReadState::Segments {
                    salt,
                    total,
                    prefix,
                    index,
                    left,
                } => {
                    let cipher = self.read_keys.get(&self.key, salt, *total);
                    let len = (*left).min(SEGMENT as u64) as usize;
                    if rbuf.len() < len {
                        return Ok(Next::Need(self.wanted()));
                    }
                    let last = *left == len as u64;
                    let mut seg = rbuf.split_to(len);
                    let tag = seg.split_off(len - TAG);
                    if cipher
                        .open(nonce(prefix, *index, last), &mut seg, &tag)
                        .is_err()
                    {
                        return Err(undecryptable(self.peer, "an AES-GCM tag did not verify"));
                    }
                    *index = index.wrapping_add(1);
                    *left -= len as u64;
                    if last {
                        self.state = ReadState::Length;
                    }
                    return Ok(Next::Piece(seg));
                }
            }
        }
    }

    /// How many more ciphertext bytes the current step needs.
    fn wanted(&self) -> usize {
        match &self.state {
            ReadState::Segments { left, .. } => {
                ((*left).min(SEGMENT as u64) as usize).max(READ_CHUNK)
            }
            _ => READ_CHUNK,
        }
    }
}

impl AsyncRead for GcmStream {
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
        let peer = this.dec.peer;
        match end {
            ReadEnd::Data => {}
            ReadEnd::Eof { leftover } => {
                if leftover || !matches!(this.dec.state, ReadState::Length) {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "{peer} closed the connection in the middle of an encrypted message"
                        ),
                    )));
                }
                if !this.reader.read_any && this.wrote {
                    return Poll::Ready(Err(closed_without_data(peer)));
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for GcmStream {
    super::stream::sealed_write_methods!();

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = sealable(bufs);
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        let (key, salt, counter, keys) = (
            &this.dec.key,
            &mut this.salt,
            &mut this.counter,
            &mut this.write_keys,
        );
        let r = poll_write_sealed(&mut this.io, &mut this.out, cx, |out| {
            if *counter == MESSAGES_PER_SALT {
                *salt = random_salt(key.len());
                *counter = 0;
                *keys = SubkeyCache::new();
            }
            let mut prefix = [0u8; PREFIX];
            prefix.copy_from_slice(&counter.to_be_bytes()[8 - PREFIX..]);
            *counter += 1;
            let mut src = SliceCursor::new(bufs);
            seal_message(key, salt, &prefix, keys, &mut src, n, out);
            n
        });
        if matches!(r, Poll::Ready(Ok(_))) {
            this.wrote = true;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_lengths_follow_sparks_rule() {
        // v2: header 24 bytes.
        assert_eq!(message_len(24, 1), 8 + 24 + 1 + 16);
        assert_eq!(message_len(24, PLAIN_SEGMENT), 8 + 24 + SEGMENT);
        assert_eq!(message_len(24, PLAIN_SEGMENT + 1), 8 + 24 + SEGMENT + 17);
        // v1: header 40 bytes.
        assert_eq!(message_len(40, 100), 8 + 40 + 116);
    }

    #[tokio::test]
    async fn senders_number_their_messages_under_one_salt_and_receivers_decrypt() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let key = [4u8; 16];
        let (a, mut wire) = tokio::io::duplex(1 << 20);
        let mut sender = GcmStream::new(Box::new(a), peer, &key);
        for _ in 0..3 {
            sender.write_all(b"same length").await.unwrap();
            sender.flush().await.unwrap();
        }
        let one = message_len(24, 11);
        let mut raw = vec![0u8; 3 * one];
        wire.read_exact(&mut raw).await.unwrap();
        let msgs: Vec<&[u8]> = raw.chunks(one).collect();
        for (i, m) in msgs.iter().enumerate() {
            assert_eq!(&m[9..25], &msgs[0][9..25], "one salt");
            assert_eq!(
                &m[25..32],
                &(i as u64).to_be_bytes()[1..],
                "numbered prefix"
            );
        }
        let (b, mut feed) = tokio::io::duplex(1 << 20);
        let mut receiver = GcmStream::new(Box::new(b), peer, &key);
        feed.write_all(&raw).await.unwrap();
        let mut got = vec![0u8; 33];
        receiver.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..], &b"same lengthsame lengthsame length"[..]);
        // A flipped bit fails with the explanation.
        let mut bad = raw[..one].to_vec();
        bad[one - 1] ^= 1;
        let (c, mut feed) = tokio::io::duplex(1 << 20);
        let mut receiver = GcmStream::new(Box::new(c), peer, &key);
        feed.write_all(&bad).await.unwrap();
        let err = receiver.read(&mut got).await.unwrap_err().to_string();
        assert!(err.contains("no key confirmation"), "{err}");
    }

    #[test]
    fn sealed_layout_and_round_trip() {
        for key in [vec![7u8; 16], vec![9u8; 32]] {
            for n in [
                1usize,
                100,
                PLAIN_SEGMENT,
                PLAIN_SEGMENT + 1,
                3 * PLAIN_SEGMENT + 5,
            ] {
                let plain: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                let salt = vec![3u8; key.len()];
                let prefix = [5u8; PREFIX];
                let mut out = Vec::new();
                let slices = [IoSlice::new(&plain[..n / 2]), IoSlice::new(&plain[n / 2..])];
                seal_message(
                    &key,
                    &salt,
                    &prefix,
                    &mut SubkeyCache::new(),
                    &mut SliceCursor::new(&slices),
                    n,
                    &mut out,
                );
                let header_len = 1 + key.len() + PREFIX;
                assert_eq!(out.len(), message_len(header_len, n));
                assert_eq!(
                    u64::from_be_bytes(out[..8].try_into().unwrap()),
                    out.len() as u64
                );
                assert_eq!(out[8] as usize, header_len);
                assert_eq!(&out[9..9 + key.len()], &salt[..]);
                // Decrypt segment by segment with the documented nonces.
                let cipher = SegmentCipher::derive(&key, &salt, out.len() as u64);
                let body = &out[8 + header_len..];
                let segments: Vec<&[u8]> = body.chunks(SEGMENT).collect();
                let mut got = Vec::new();
                for (i, seg) in segments.iter().enumerate() {
                    let mut ct = seg[..seg.len() - TAG].to_vec();
                    let last = i + 1 == segments.len();
                    cipher
                        .open(
                            nonce(&prefix, i as u32, last),
                            &mut ct,
                            &seg[seg.len() - TAG..],
                        )
                        .unwrap();
                    got.extend_from_slice(&ct);
                }
                assert_eq!(got, plain);
                // The last flag matters.
                let seg = segments[0];
                let mut ct = seg[..seg.len() - TAG].to_vec();
                assert!(cipher
                    .open(
                        nonce(&prefix, 0, segments.len() != 1),
                        &mut ct,
                        &seg[seg.len() - TAG..]
                    )
                    .is_err());
            }
        }
    }
}
