//! What travels inside the transport's `RpcRequest` / `OneWayMessage` / `RpcResponse` bodies.
//!
//! The request envelope keeps the layout of Spark's `RequestMessage` (`NettyRpcEnv.scala`):
//!
//! ```text
//! sender address   : u8 0/1, then [u16 length + UTF-8 host, i32 port]
//! receiver address : the same (absent for endpoints of client-mode envs)
//! receiver name    : u16 length + UTF-8
//! content          : u8 codec tag, then the message in that codec
//! ```
//!
//! (Spark writes hosts and names with Java's modified UTF-8, which equals UTF-8 for every string
//! without NUL or characters outside the BMP; endpoint names and hosts are such strings.)
//!
//! A reply body starts with a status byte: `0` then the reply's type name (u16 length + UTF-8,
//! Rust's `type_name` of the replied type), the codec tag and the value; or `1` then an encoded
//! `WireError` (a failure or a delivery error, typed so the asker can act on it). The type name
//! lets the asker refuse a reply of another type than it asked for instead of decoding whatever
//! the bytes happen to decode as (an empty `String` and `0u64` have the same postcard bytes).
//!
//! The content codec is chosen by its tag byte, so formats can evolve without breaking peers: the
//! default, and today the only one, is [postcard](https://docs.rs/postcard) (compact, no schema,
//! well kept). A new format is a new [`ContentCodec`] variant.

use std::cell::RefCell;
use std::fmt;
use std::ops::Deref;

use bytes::{BufMut, Bytes, BytesMut};
use rpcenv_transport::Body;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::address::RpcAddress;
use crate::decode_scope::shared_from_source;
use crate::error::{Failure, FailureKind, RpcError};

/// The serialization formats of message content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ContentCodec {
    /// postcard: compact varint-based binary serde format.
    Postcard = 1,
}

impl ContentCodec {
    fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(ContentCodec::Postcard),
            _ => None,
        }
    }
}

/// An envelope or reply that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {what}: {reason}")]
pub struct DecodeError {
    /// What was being decoded.
    pub what: &'static str,
    /// Why it failed.
    pub reason: String,
}

fn decode_error(what: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError {
        what,
        reason: reason.into(),
    }
}

/// Serializes `value` with the default codec, after its tag byte, into `out`.
pub(crate) fn encode_content<T: Serialize + ?Sized>(
    value: &T,
    out: &mut BytesMut,
) -> Result<(), String> {
    out.put_u8(ContentCodec::Postcard as u8);
    let mut writer = out.writer();
    postcard::to_io(value, &mut writer).map_err(|e| e.to_string())?;
    Ok(())
}

/// How many bytes [`encode_content`] writes for `value` (a pass of the serializer that only
/// counts).
///
/// An encoding sized with it fills its buffer exactly, which saves twice: a large value is
/// written without the buffer growing (a copy at each doubling), and the frozen buffer owns its
/// memory outright as a [`Bytes`], where one with room to spare costs a second allocation (the
/// shared header through which `Bytes` frees it).
fn content_len<T: Serialize + ?Sized>(value: &T) -> Result<usize, String> {
    postcard::experimental::serialized_size(value)
        .map(|n| n + 1)
        .map_err(|e| e.to_string())
}

thread_local! {
    /// The large blobs met while an encoding is sized, collected for [`encode_body`] to
    /// write from where they lie. `Some` only inside [`size_and_blobs`]. A thread-local because
    /// serde hands `Blob::serialize` nothing but the serializer: the decode scope
    /// ([`crate::decode_scope`]) is its counterpart for decoding, and these are the only two.
    static OFFERED: RefCell<Option<Vec<Bytes>>> = const { RefCell::new(None) };
}

/// How many bytes [`encode_content`] writes for `value`, and the blobs of at least
/// [`Blob::SHARE_MIN`] bytes it holds, in the order it serializes them.
fn size_and_blobs<T: Serialize + ?Sized>(value: &T) -> Result<(usize, Vec<Bytes>), String> {
    /// Puts the previous collection back however the sizing ends (a `Serialize` may panic).
    struct Restore(Option<Vec<Bytes>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            OFFERED.with(|o| *o.borrow_mut() = previous);
        }
    }
    let restore = Restore(OFFERED.with(|o| o.replace(Some(Vec::new()))));
    let len = content_len(value);
    let blobs = OFFERED.with(|o| o.borrow_mut().take()).unwrap_or_default();
    drop(restore);
    Ok((len?, blobs))
}

/// A postcard output that writes the blobs [`size_and_blobs`] found as parts of their own
/// (shared, not copied) and everything else into one buffer, split around them.
struct Gather {
    cur: BytesMut,
    parts: Vec<Bytes>,
    blobs: Vec<Bytes>,
}

impl postcard::ser_flavors::Flavor for Gather {
    type Output = Body;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.cur.put_u8(byte);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() >= Blob::SHARE_MIN {
            // The same address and length: the very bytes of that blob (a `Bytes` never changes
            // while a handle to it lives), so the blob may stand for them.
            let blob = self
                .blobs
                .iter()
                .find(|b| b.as_ptr() == data.as_ptr() && b.len() == data.len());
            if let Some(blob) = blob {
                if !self.cur.is_empty() {
                    self.parts.push(self.cur.split().freeze());
                }
                self.parts.push(blob.clone());
                return Ok(());
            }
        }
        self.cur.extend_from_slice(data);
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<Body> {
        self.parts.push(self.cur.split().freeze());
        Ok(Body::from_parts(self.parts))
    }
}

/// Deserializes content written by [`encode_content`].
pub(crate) fn decode_content<T: DeserializeOwned>(content: &[u8]) -> Result<T, DecodeError> {
    let (&tag, rest) = content
        .split_first()
        .ok_or_else(|| decode_error("message content", "empty content"))?;
    match ContentCodec::from_tag(tag) {
        Some(ContentCodec::Postcard) => {
            let (value, remaining) = postcard::take_from_bytes::<T>(rest)
                .map_err(|e| decode_error("message content", e.to_string()))?;
            if !remaining.is_empty() {
                return Err(decode_error(
                    "message content",
                    format!("{} trailing bytes", remaining.len()),
                ));
            }
            Ok(value)
        }
        None => Err(decode_error(
            "message content",
            format!("unknown codec tag {tag} (a newer peer?)"),
        )),
    }
}

/// A byte buffer for message and reply payloads: cheap to clone (a [`Bytes`] handle), written as a
/// byte string, and decoded without a copy when it arrives over the network: a `Blob` of at least
/// [`Blob::SHARE_MIN`] bytes shares the received frame's memory instead of copying out of it
/// (smaller ones are copied, so that they do not keep a whole read buffer alive).
///
/// ```
/// use rpcenv::codec::Blob;
///
/// let blob = Blob::from(vec![7u8; 1 << 20]);
/// assert_eq!(blob.len(), 1 << 20);
/// let bytes: bytes::Bytes = blob.clone().into();
/// assert_eq!(&bytes[..4], &[7, 7, 7, 7]);
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Blob(Bytes);

impl Blob {
    /// Received blobs at least this large share the frame they arrived in.
    pub const SHARE_MIN: usize = 4096;

    /// A blob of `bytes` (no copy).
    pub fn new(bytes: Bytes) -> Self {
        Blob(bytes)
    }

    /// The bytes, as a [`Bytes`] handle (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Blob {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Bytes> for Blob {
    fn from(bytes: Bytes) -> Self {
        Blob(bytes)
    }
}

impl From<Vec<u8>> for Blob {
    fn from(bytes: Vec<u8>) -> Self {
        Blob(Bytes::from(bytes))
    }
}

impl From<&'static [u8]> for Blob {
    fn from(bytes: &'static [u8]) -> Self {
        Blob(Bytes::from_static(bytes))
    }
}

impl From<Blob> for Bytes {
    fn from(blob: Blob) -> Self {
        blob.0
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.len() >= Blob::SHARE_MIN {
            // Inside `size_and_blobs`, so that the encoding writes these bytes from here.
            OFFERED.with(|o| {
                if let Some(blobs) = o.borrow_mut().as_mut() {
                    blobs.push(self.0.clone());
                }
            });
        }
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte string")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Blob, E> {
                Ok(Blob(shared_or_copied(v)))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Blob, E> {
                Ok(Blob(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Blob, E> {
                Ok(Blob(Bytes::from(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Blob, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Blob(Bytes::from(out)))
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

/// `bytes` as a handle into the frame being decoded when it lies inside it and is large enough,
/// else a copy.
fn shared_or_copied(bytes: &[u8]) -> Bytes {
    if bytes.len() >= Blob::SHARE_MIN {
        if let Some(shared) = shared_from_source(bytes) {
            return shared;
        }
    }
    Bytes::copy_from_slice(bytes)
}

/// An address as an envelope carries it (borrowed: decoding a header allocates nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WireAddress<'a> {
    pub(crate) host: &'a str,
    pub(crate) port: u16,
}

impl WireAddress<'_> {
    pub(crate) fn to_address(self) -> RpcAddress {
        RpcAddress::new(self.host, self.port)
    }

    /// Whether `address` is this one (as `to_address` would make it).
    pub(crate) fn is(self, address: &RpcAddress) -> bool {
        address.port() == self.port && address.host() == self.host
    }
}

/// The decoded header of a request envelope; `content` is the undecoded message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Envelope<'a> {
    pub(crate) sender: Option<WireAddress<'a>>,
    pub(crate) receiver: Option<WireAddress<'a>>,
    pub(crate) name: &'a str,
    pub(crate) content: &'a [u8],
}

fn put_address(out: &mut BytesMut, address: Option<&RpcAddress>) {
    match address {
        None => out.put_u8(0),
        Some(a) => {
            out.put_u8(1);
            put_str(out, a.host());
            out.put_i32(i32::from(a.port()));
        }
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    // Hosts and endpoint names are short; longer strings are refused when endpoints register.
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.put_u16(len);
    out.put_slice(&s.as_bytes()[..usize::from(len)]);
}

/// Encodes an envelope: header, then `message` with the default codec.
pub(crate) fn encode_request<T: Serialize + ?Sized>(
    sender: Option<&RpcAddress>,
    receiver: Option<&RpcAddress>,
    name: &str,
    message: &T,
) -> Result<Body, String> {
    encode_with_header(&envelope_header(sender, receiver, name), message)
}

/// An envelope's header (sender, receiver, endpoint name): the same for every message of a ref,
/// so a ref encodes it once.
pub(crate) fn envelope_header(
    sender: Option<&RpcAddress>,
    receiver: Option<&RpcAddress>,
    name: &str,
) -> Bytes {
    let mut out = BytesMut::with_capacity(32 + name.len());
    put_address(&mut out, sender);
    put_address(&mut out, receiver);
    put_str(&mut out, name);
    out.freeze()
}

/// Encodes an envelope from its encoded `header` ([`envelope_header`]), then `message` with
/// the default codec (see [`encode_body`]).
pub(crate) fn encode_with_header<T: Serialize + ?Sized>(
    header: &[u8],
    message: &T,
) -> Result<Body, String> {
    encode_body(header.len(), |out| out.put_slice(header), message)
}

/// Encodes `value` with the default codec after a prefix of `prefix_len` bytes that
/// `put_prefix` writes (an envelope's header, a reply's status and type name).
///
/// A [`Blob`] of at least [`Blob::SHARE_MIN`] bytes in `value` is not copied: the body is given
/// in parts, the blob's own bytes among them, and the connection writes them from where they lie
/// (the bytes on the wire are the same). A 1 MiB blob would otherwise be copied once more on its
/// way to the socket: W4 (1 MiB asks) spent 11% of its CPU in that copy.
fn encode_body<T: Serialize + ?Sized>(
    prefix_len: usize,
    put_prefix: impl FnOnce(&mut BytesMut),
    value: &T,
) -> Result<Body, String> {
    let (len, blobs) = size_and_blobs(value)?;
    let apart: usize = blobs.iter().map(Bytes::len).sum();
    let mut out = BytesMut::with_capacity(prefix_len + len.saturating_sub(apart));
    put_prefix(&mut out);
    if blobs.is_empty() {
        encode_content(value, &mut out)?;
        return Ok(Body::from(out.freeze()));
    }
    out.put_u8(ContentCodec::Postcard as u8);
    let gather = Gather {
        cur: out,
        parts: Vec::new(),
        blobs,
    };
    postcard::serialize_with_flavor(value, gather).map_err(|e| e.to_string())
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(decode_error("request envelope", "truncated"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().expect("2 bytes"));
        std::str::from_utf8(self.take(usize::from(len))?)
            .map_err(|_| decode_error("request envelope", "a string is not UTF-8"))
    }

    fn address(&mut self) -> Result<Option<WireAddress<'a>>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => {
                let host = self.str()?;
                let port = i32::from_be_bytes(self.take(4)?.try_into().expect("4 bytes"));
                let port = u16::try_from(port)
                    .map_err(|_| decode_error("request envelope", format!("port {port}")))?;
                Ok(Some(WireAddress { host, port }))
            }
            b => Err(decode_error(
                "request envelope",
                format!("address flag {b} is not 0 or 1"),
            )),
        }
    }
}

/// Decodes an envelope's header; the content is left for the receiving endpoint to decode.
pub(crate) fn decode_request(body: &[u8]) -> Result<Envelope<'_>, DecodeError> {
    let mut r = Reader { buf: body };
    let sender = r.address()?;
    let receiver = r.address()?;
    let name = r.str()?;
    Ok(Envelope {
        sender,
        receiver,
        name,
        content: r.buf,
    })
}

const REPLY_OK: u8 = 0;
const REPLY_ERROR: u8 = 1;

/// Why a remote ask failed, as it travels back to the asker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum WireError {
    /// The endpoint answered with a failure.
    Failed {
        endpoint: String,
        kind: FailureKind,
        message: String,
    },
    EndpointNotFound {
        uri: String,
    },
    EndpointStopped {
        name: String,
    },
    EnvStopped,
    NoReply {
        endpoint: String,
    },
    /// The request could not be decoded by the receiver (e.g. a message type mismatch).
    BadRequest {
        message: String,
    },
}

impl WireError {
    /// What a local error becomes on the wire.
    pub(crate) fn from_error(e: &RpcError) -> WireError {
        match e {
            RpcError::Failed { endpoint, failure } => WireError::Failed {
                endpoint: endpoint.clone(),
                kind: failure.kind(),
                message: failure.message().to_string(),
            },
            RpcError::EndpointNotFound { uri } => WireError::EndpointNotFound { uri: uri.clone() },
            RpcError::EndpointStopped { name } => WireError::EndpointStopped { name: name.clone() },
            RpcError::EnvStopped => WireError::EnvStopped,
            RpcError::NoReply { endpoint } => WireError::NoReply {
                endpoint: endpoint.clone(),
            },
            other => WireError::BadRequest {
                message: other.to_string(),
            },
        }
    }

    pub(crate) fn into_error(self, peer: &str) -> RpcError {
        match self {
            WireError::Failed {
                endpoint,
                kind,
                message,
            } => RpcError::Failed {
                endpoint,
                failure: Failure::new(kind, message),
            },
            WireError::EndpointNotFound { uri } => RpcError::EndpointNotFound { uri },
            WireError::EndpointStopped { name } => RpcError::EndpointStopped { name },
            WireError::EnvStopped => RpcError::RemoteEnvStopped {
                peer: peer.to_string(),
            },
            WireError::NoReply { endpoint } => RpcError::NoReply { endpoint },
            WireError::BadRequest { message } => RpcError::BadRequest {
                peer: peer.to_string(),
                message,
            },
        }
    }
}

/// Encodes a successful reply, named by its type; a value that cannot be serialized becomes a
/// failure reply.
///
/// Large [`Blob`]s in the reply are written from where they lie, as in a request
/// ([`encode_body`]).
pub(crate) fn encode_reply_ok<T: Serialize>(value: &T, endpoint: &str) -> Body {
    let type_name = std::any::type_name::<T>();
    let prefix = |out: &mut BytesMut| {
        out.put_u8(REPLY_OK);
        put_str(out, type_name);
    };
    match encode_body(1 + 2 + type_name.len(), prefix, value) {
        Ok(body) => body,
        Err(reason) => encode_reply_error(&WireError::Failed {
            endpoint: endpoint.to_string(),
            kind: FailureKind::Serialization,
            message: format!("the reply could not be serialized: {reason}"),
        })
        .into(),
    }
}

/// Encodes a failed reply.
pub(crate) fn encode_reply_error(error: &WireError) -> Bytes {
    let mut out = BytesMut::with_capacity(64);
    out.put_u8(REPLY_ERROR);
    encode_content(error, &mut out).expect("WireError always serializes");
    out.freeze()
}

/// Splits the content of a successful reply (as [`decode_reply`] returns it) into the name of the
/// replied type and the encoded value.
pub(crate) fn split_typed_reply(typed: &[u8]) -> Result<(&str, &[u8]), DecodeError> {
    let mut r = Reader { buf: typed };
    let type_name = r
        .str()
        .map_err(|e| decode_error("reply", format!("type name: {}", e.reason)))?;
    Ok((type_name, r.buf))
}

/// Splits a reply into its typed content (type name and encoded value, see
/// [`split_typed_reply`]) or its error.
pub(crate) fn decode_reply(body: &Bytes) -> Result<Result<Bytes, WireError>, DecodeError> {
    match body.first() {
        Some(&REPLY_OK) => Ok(Ok(body.slice(1..))),
        Some(&REPLY_ERROR) => Ok(Err(decode_content::<WireError>(&body[1..])?)),
        Some(b) => Err(decode_error("reply", format!("unknown status byte {b}"))),
        None => Err(decode_error("reply", "empty reply")),
    }
}

/// Entry points for the criterion benchmarks (`crates/rpcenv/benches`): the envelope codec as
/// the network path uses it. Not a stable API.
#[doc(hidden)]
pub mod bench {
    use super::*;

    /// Encodes a request envelope carrying `message`.
    pub fn encode_envelope<T: Serialize + ?Sized>(
        sender: Option<&RpcAddress>,
        receiver: Option<&RpcAddress>,
        name: &str,
        message: &T,
    ) -> Result<Bytes, String> {
        encode_request(sender, receiver, name, message).map(Body::into_bytes)
    }

    /// Decodes an envelope's header and then its content as a `T`, as a receiving env does;
    /// returns the endpoint name's length and the message.
    pub fn decode_envelope<T: DeserializeOwned>(body: &[u8]) -> Result<(usize, T), DecodeError> {
        let envelope = decode_request(body)?;
        let message = decode_content::<T>(envelope.content)?;
        Ok((envelope.name.len(), message))
    }

    /// Encodes a successful reply carrying `value`.
    pub fn encode_reply<T: Serialize>(value: &T) -> Bytes {
        encode_reply_ok(value, "bench").into_bytes()
    }

    /// Decodes a reply written by [`encode_reply`], checking its type name as an asker does.
    pub fn decode_reply_value<T: DeserializeOwned>(body: &Bytes) -> Result<T, DecodeError> {
        match decode_reply(body)? {
            Ok(typed) => {
                let (type_name, content) = split_typed_reply(&typed)?;
                if type_name != std::any::type_name::<T>() {
                    return Err(decode_error("reply", format!("a {type_name}")));
                }
                decode_content::<T>(content)
            }
            Err(wire) => Err(decode_error("reply", format!("{wire:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size pass that sizes an encoding's buffer agrees with the encoding byte for byte (an
    /// encoding that outgrew or underfilled its buffer would cost a copy or a second allocation).
    #[test]
    fn encodings_are_sized_exactly() {
        #[derive(Serialize)]
        struct Nested {
            name: String,
            parts: Vec<(u64, Option<String>)>,
            blob: Blob,
        }
        fn check<T: Serialize>(value: &T) {
            let mut out = BytesMut::new();
            encode_content(value, &mut out).unwrap();
            assert_eq!(content_len(value).unwrap(), out.len());
            let header = envelope_header(None, None, "sized");
            let body = encode_with_header(&header, value).unwrap().into_bytes();
            assert_eq!(body.len(), header.len() + out.len());
            assert_eq!(&body[header.len()..], &out[..]);
        }
        check(&());
        check(&Blob::from(&[7u8; 16][..]));
        check(&Blob::from(vec![1u8; 1 << 20]));
        check(&"é".repeat(300));
        check(&Nested {
            name: "n".into(),
            parts: (0..100)
                .map(|i| (i * 1_000_003, (i % 3 == 0).then(|| i.to_string())))
                .collect(),
            blob: Blob::from(&b"abc"[..]),
        });
        let reply = encode_reply_ok(&Blob::from(vec![3u8; 70_000]), "sized");
        assert_eq!(
            reply.parts().len(),
            2,
            "the blob is a part of its own: {reply:?}"
        );
        let reply = reply.into_bytes();
        let typed = decode_reply(&reply).unwrap().unwrap();
        let (name, content) = split_typed_reply(&typed).unwrap();
        assert_eq!(name, std::any::type_name::<Blob>());
        assert_eq!(decode_content::<Blob>(content).unwrap().len(), 70_000);
    }

    /// Spark: NettyRpcEnvSuite "RequestMessage serialization".
    #[test]
    fn request_message_serialization() {
        let sender = RpcAddress::new("localhost", 12345);
        let receiver = RpcAddress::new("localhost", 54321);
        for (s, content) in [
            (Some(&sender), Some("foo".to_string())),
            (None, Some("foo".to_string())),
            (Some(&sender), None),
        ] {
            let body = encode_request(s, Some(&receiver), "test", &content)
                .unwrap()
                .into_bytes();
            let env = decode_request(&body).unwrap();
            assert_eq!(env.sender.map(WireAddress::to_address).as_ref(), s);
            assert_eq!(
                env.receiver.map(WireAddress::to_address),
                Some(receiver.clone())
            );
            assert!(env.receiver.is_some_and(|r| r.is(&receiver)));
            assert_eq!(env.name, "test");
            assert_eq!(
                decode_content::<Option<String>>(env.content).unwrap(),
                content
            );
        }
    }

    #[test]
    fn envelope_layout_is_sparks() {
        let body = encode_request(Some(&RpcAddress::new("h", 7)), None, "ep", &())
            .unwrap()
            .into_bytes();
        assert_eq!(
            &body[..],
            &[
                1,
                0,
                1,
                b'h',
                0,
                0,
                0,
                7,
                0,
                0,
                2,
                b'e',
                b'p',
                ContentCodec::Postcard as u8
            ]
        );
    }

    #[test]
    fn truncated_or_garbage_envelopes_are_decode_errors() {
        let body = encode_request(Some(&RpcAddress::new("host", 1)), None, "name", &5u32)
            .unwrap()
            .into_bytes();
        for cut in 0..body.len() - 2 {
            let r = decode_request(&body[..cut]);
            assert!(
                r.is_err() || decode_content::<u32>(r.unwrap().content).is_err(),
                "cut {cut}"
            );
        }
        assert!(decode_request(&[7, 0, 0]).is_err());
        assert!(decode_content::<u32>(&[99, 1]).is_err());
    }

    #[test]
    fn large_blobs_are_written_from_where_they_lie() {
        let big = Blob::from(vec![5u8; 1 << 20]);
        let edge = Blob::from(vec![6u8; Blob::SHARE_MIN]);
        let small = Blob::from(vec![7u8; Blob::SHARE_MIN - 1]);
        let message = (
            "before".to_string(),
            big.clone(),
            17u32,
            small.clone(),
            edge.clone(),
            big.clone(),
        );
        let header = envelope_header(None, None, "ep");
        let body = encode_with_header(&header, &message).unwrap();
        let lies_in = |blob: &Blob| {
            body.parts()
                .iter()
                .filter(|p| p.as_ptr() == blob.as_ptr() && p.len() == blob.len())
                .count()
        };
        assert_eq!(lies_in(&big), 2, "{body:?}");
        assert_eq!(lies_in(&edge), 1, "{body:?}");
        assert_eq!(
            lies_in(&small),
            0,
            "a blob under SHARE_MIN is copied: {body:?}"
        );
        // The parts are the bytes the contiguous encoding gives.
        let mut whole = BytesMut::from(&header[..]);
        encode_content(&message, &mut whole).unwrap();
        assert_eq!(body.len(), whole.len());
        let joined = body.into_bytes();
        assert!(joined[..] == whole[..]);
        let env = decode_request(&joined).unwrap();
        let decoded: (String, Blob, u32, Blob, Blob, Blob) = decode_content(env.content).unwrap();
        assert_eq!(decoded, message);
        // Without large blobs the body is one buffer.
        let plain = encode_with_header(&header, &(small, "x".repeat(10_000))).unwrap();
        assert_eq!(plain.parts().len(), 1);
    }

    #[test]
    fn a_panicking_serialize_leaves_no_blob_collection_behind() {
        struct Panics(Blob);
        impl Serialize for Panics {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                let _ = self.0.serialize(s);
                panic!("a user's Serialize panics");
            }
        }
        let value = Panics(Blob::from(vec![1u8; Blob::SHARE_MIN]));
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            encode_with_header(b"", &value)
        }));
        assert!(panicked.is_err());
        assert!(OFFERED.with(|o| o.borrow().is_none()));
        // Blobs serialized afterwards, outside an encoding, are not collected.
        let _ = postcard::to_stdvec(&value.0).unwrap();
        assert!(OFFERED.with(|o| o.borrow().is_none()));
    }

    #[test]
    fn large_blobs_share_the_frame_they_are_decoded_from() {
        let big = Blob::from(vec![3u8; Blob::SHARE_MIN]);
        let small = Blob::from(&b"tiny"[..]);
        let body = encode_request(None, None, "ep", &(big.clone(), small.clone()))
            .unwrap()
            .into_bytes();
        let env = decode_request(&body).unwrap();
        let content = Bytes::copy_from_slice(env.content);
        let (b, s): (Blob, Blob) = crate::decode_scope::detached(content.clone())
            .run(|| decode_content(&content))
            .0
            .unwrap();
        assert_eq!((&b, &s), (&big, &small));
        let inside = |blob: &Blob| {
            let (start, at) = (content.as_ptr() as usize, blob.as_ptr() as usize);
            at >= start && at < start + content.len()
        };
        assert!(inside(&b), "a large blob shares the frame");
        assert!(!inside(&s), "a small blob is copied");
        // Without a source (or outside it), blobs are copies.
        let (b2, _): (Blob, Blob) = decode_content(&content).unwrap();
        assert!(!inside(&b2));
        assert_eq!(b2, big);
    }

    #[test]
    fn replies_round_trip() {
        let ok = encode_reply_ok(&"hi".to_string(), "ep").into_bytes();
        let typed = decode_reply(&ok).unwrap().unwrap();
        let (type_name, content) = split_typed_reply(&typed).unwrap();
        assert_eq!(type_name, std::any::type_name::<String>());
        assert_eq!(decode_content::<String>(content).unwrap(), "hi");
        // The codec tag byte still leads the value.
        assert_eq!(content[0], ContentCodec::Postcard as u8);
        assert!(split_typed_reply(&typed[..3]).is_err());
        let err = encode_reply_error(&WireError::EndpointStopped { name: "x".into() });
        assert_eq!(
            decode_reply(&err).unwrap().unwrap_err(),
            WireError::EndpointStopped { name: "x".into() }
        );
        assert!(decode_reply(&Bytes::from_static(&[9])).is_err());
    }
}
