//! The 13 message types of Spark network-common (Spark: `Message.Type`) and their exact wire layout.
//!
//! A frame is `[frame length: i64][type: u8][header fields][body?]`, big-endian, where the frame
//! length counts itself. Strings are `i32 byte length + UTF-8`, byte arrays `i32 length + bytes`.
//! Bodies of `StreamResponse` and `UploadStream` are not part of the frame: their raw bytes follow
//! it on the wire (the frame decoder hands them out as [`crate::frame::Decoded::Body`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::TransportError;

/// Size of the frame length field.
pub const LENGTH_FIELD: usize = 8;

/// Identifies one chunk of a chunked stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamChunkId {
    /// The stream.
    pub stream_id: i64,
    /// The chunk within the stream.
    pub chunk_index: i32,
}

/// One transport message.
///
/// For [`Message::StreamResponse`] and [`Message::UploadStream`] the encoder writes the byte
/// count from `body.len()`; a decoded one has an empty `body` and the announced count in its
/// count field (the body follows as raw bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Type 0: request one chunk of a stream.
    ChunkFetchRequest {
        /// The chunk.
        chunk: StreamChunkId,
    },
    /// Type 1: the chunk's bytes.
    ChunkFetchSuccess {
        /// The chunk.
        chunk: StreamChunkId,
        /// The chunk's bytes (in frame).
        body: Bytes,
    },
    /// Type 2: the chunk could not be served.
    ChunkFetchFailure {
        /// The chunk.
        chunk: StreamChunkId,
        /// Error text.
        error: String,
    },
    /// Type 3: a request expecting an RpcResponse or RpcFailure with the same id.
    RpcRequest {
        /// Request id (non-negative, unique among a connection's outstanding requests).
        request_id: i64,
        /// Payload (in frame).
        body: Body,
    },
    /// Type 4: the successful answer to an RpcRequest or UploadStream.
    RpcResponse {
        /// Request id being answered.
        request_id: i64,
        /// Payload (in frame).
        body: Body,
    },
    /// Type 5: the failed answer to a request.
    RpcFailure {
        /// Request id being answered.
        request_id: i64,
        /// Error text (Spark sends a stack trace).
        error: String,
    },
    /// Type 6: open a named stream.
    StreamRequest {
        /// Stream id.
        stream_id: String,
    },
    /// Type 7: stream header; `byte_count` raw bytes follow the frame.
    StreamResponse {
        /// Stream id.
        stream_id: String,
        /// Announced length of the raw body.
        byte_count: u64,
        /// The body when encoding (empty when decoded).
        body: Bytes,
    },
    /// Type 8: the stream could not be opened.
    StreamFailure {
        /// Stream id.
        stream_id: String,
        /// Error text.
        error: String,
    },
    /// Type 9: a request expecting no answer.
    OneWayMessage {
        /// Payload (in frame).
        body: Body,
    },
    /// Type 10: an upload; `body_byte_count` raw bytes follow the frame. Answered by
    /// RpcResponse / RpcFailure.
    UploadStream {
        /// Request id.
        request_id: i64,
        /// Metadata (in frame).
        meta: Bytes,
        /// Announced length of the raw body.
        body_byte_count: u64,
        /// The body when encoding (empty when decoded).
        body: Bytes,
    },
    /// Type 11: request the metadata of a merged shuffle block.
    MergedBlockMetaRequest {
        /// Request id.
        request_id: i64,
        /// Application id.
        app_id: String,
        /// Shuffle id.
        shuffle_id: i32,
        /// Shuffle merge id.
        shuffle_merge_id: i32,
        /// Reduce id.
        reduce_id: i32,
    },
    /// Type 12: merged block metadata (failure is RpcFailure).
    MergedBlockMetaSuccess {
        /// Request id.
        request_id: i64,
        /// Number of chunks.
        num_chunks: i32,
        /// Serialized bitmaps (in frame).
        body: Bytes,
    },
}

fn string_len(s: &str) -> usize {
    4 + s.len()
}

fn put_string(dst: &mut BytesMut, s: &str) {
    dst.put_i32(s.len() as i32);
    dst.put_slice(s.as_bytes());
}

struct Reader {
    buf: Bytes,
    message_type: &'static str,
}

impl Reader {
    fn need(&self, n: usize, what: &str) -> Result<(), TransportError> {
        if self.buf.remaining() < n {
            return Err(TransportError::MalformedMessage {
                message_type: self.message_type,
                reason: format!(
                    "{what} needs {n} bytes, {} left in the frame",
                    self.buf.remaining()
                ),
            });
        }
        Ok(())
    }
    fn i64(&mut self, what: &str) -> Result<i64, TransportError> {
        self.need(8, what)?;
        Ok(self.buf.get_i64())
    }
    fn i32(&mut self, what: &str) -> Result<i32, TransportError> {
        self.need(4, what)?;
        Ok(self.buf.get_i32())
    }
    fn len(&mut self, what: &str) -> Result<usize, TransportError> {
        let n = self.i32(what)?;
        if n < 0 {
            return Err(TransportError::MalformedMessage {
                message_type: self.message_type,
                reason: format!("negative length {n} of {what}"),
            });
        }
        Ok(n as usize)
    }
    fn bytes(&mut self, what: &str) -> Result<Bytes, TransportError> {
        let n = self.len(what)?;
        self.need(n, what)?;
        Ok(self.buf.split_to(n))
    }
    fn string(&mut self, what: &str) -> Result<String, TransportError> {
        let b = self.bytes(what)?;
        Ok(match std::str::from_utf8(&b) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(&b).into_owned(),
        })
    }
    fn count(&mut self, what: &str) -> Result<u64, TransportError> {
        let n = self.i64(what)?;
        u64::try_from(n).map_err(|_| TransportError::MalformedMessage {
            message_type: self.message_type,
            reason: format!("negative {what} {n}"),
        })
    }
    fn chunk(&mut self) -> Result<StreamChunkId, TransportError> {
        Ok(StreamChunkId {
            stream_id: self.i64("streamId")?,
            chunk_index: self.i32("chunkIndex")?,
        })
    }
}

impl Message {
    /// The type id on the wire.
    pub fn type_id(&self) -> u8 {
        match self {
            Message::ChunkFetchRequest { .. } => 0,
            Message::ChunkFetchSuccess { .. } => 1,
            Message::ChunkFetchFailure { .. } => 2,
            Message::RpcRequest { .. } => 3,
            Message::RpcResponse { .. } => 4,
            Message::RpcFailure { .. } => 5,
            Message::StreamRequest { .. } => 6,
            Message::StreamResponse { .. } => 7,
            Message::StreamFailure { .. } => 8,
            Message::OneWayMessage { .. } => 9,
            Message::UploadStream { .. } => 10,
            Message::MergedBlockMetaRequest { .. } => 11,
            Message::MergedBlockMetaSuccess { .. } => 12,
        }
    }

    /// The message type's name, as Spark's class name.
    pub fn type_name(&self) -> &'static str {
        type_name(self.type_id())
    }

    /// True for types that answer a request (handled by the response side of a connection).
    pub fn is_response(&self) -> bool {
        matches!(self.type_id(), 1 | 2 | 4 | 5 | 7 | 8 | 12)
    }

    /// The body's bytes, in the parts they are written in (none for a type without a body; one
    /// part but for a [`Body`] given in several), in frame or following it.
    pub fn body_parts(&self) -> &[Bytes] {
        match self {
            Message::RpcRequest { body, .. }
            | Message::RpcResponse { body, .. }
            | Message::OneWayMessage { body } => body.parts(),
            Message::ChunkFetchSuccess { body, .. }
            | Message::StreamResponse { body, .. }
            | Message::UploadStream { body, .. }
            | Message::MergedBlockMetaSuccess { body, .. } => std::slice::from_ref(body),
            _ => &[],
        }
    }

    /// Length of the body in bytes (0 for a type without one).
    pub fn body_len(&self) -> usize {
        match self {
            Message::RpcRequest { body, .. }
            | Message::RpcResponse { body, .. }
            | Message::OneWayMessage { body } => body.len(),
            _ => self.body_parts().iter().map(Bytes::len).sum(),
        }
    }

    /// Length of the header fields after the type byte.
    fn header_len(&self) -> usize {
        match self {
            Message::ChunkFetchRequest { .. } | Message::ChunkFetchSuccess { .. } => 12,
            Message::ChunkFetchFailure { error, .. } => 12 + string_len(error),
            Message::RpcRequest { .. } | Message::RpcResponse { .. } => 12,
            Message::RpcFailure { error, .. } => 8 + string_len(error),
            Message::StreamRequest { stream_id } => string_len(stream_id),
            Message::StreamResponse { stream_id, .. } => string_len(stream_id) + 8,
            Message::StreamFailure { stream_id, error } => {
                string_len(stream_id) + string_len(error)
            }
            Message::OneWayMessage { .. } => 4,
            Message::UploadStream { meta, .. } => 8 + 4 + meta.len() + 8,
            Message::MergedBlockMetaRequest { app_id, .. } => 8 + string_len(app_id) + 12,
            Message::MergedBlockMetaSuccess { .. } => 12,
        }
    }

    /// True when the body is counted in the frame length (false for the two raw-body types).
    pub fn body_in_frame(&self) -> bool {
        !matches!(
            self,
            Message::StreamResponse { .. } | Message::UploadStream { .. }
        )
    }

    /// Bytes this message occupies on the wire, raw bodies included.
    pub fn wire_len(&self) -> usize {
        LENGTH_FIELD + 1 + self.header_len() + self.body_len()
    }

    /// Write the length field, type byte and header fields (not the body).
    pub fn encode_header(&self, dst: &mut BytesMut) {
        self.encode_header_for_body(self.body_len(), dst);
    }

    /// As [`Message::encode_header`], for a body of `body_len` bytes that is not in `self` (a
    /// reply body written in pieces after the header).
    pub(crate) fn encode_header_for_body(&self, body_len: usize, dst: &mut BytesMut) {
        let header_len = self.header_len();
        let frame_len =
            LENGTH_FIELD + 1 + header_len + if self.body_in_frame() { body_len } else { 0 };
        dst.reserve(LENGTH_FIELD + 1 + header_len);
        dst.put_i64(frame_len as i64);
        dst.put_u8(self.type_id());
        match self {
            Message::ChunkFetchRequest { chunk } | Message::ChunkFetchSuccess { chunk, .. } => {
                dst.put_i64(chunk.stream_id);
                dst.put_i32(chunk.chunk_index);
            }
            Message::ChunkFetchFailure { chunk, error } => {
                dst.put_i64(chunk.stream_id);
                dst.put_i32(chunk.chunk_index);
                put_string(dst, error);
            }
            Message::RpcRequest { request_id, .. } | Message::RpcResponse { request_id, .. } => {
                dst.put_i64(*request_id);
                dst.put_i32(body_len as i32);
            }
            Message::RpcFailure { request_id, error } => {
                dst.put_i64(*request_id);
                put_string(dst, error);
            }
            Message::StreamRequest { stream_id } => put_string(dst, stream_id),
            Message::StreamResponse { stream_id, .. } => {
                put_string(dst, stream_id);
                dst.put_i64(body_len as i64);
            }
            Message::StreamFailure { stream_id, error } => {
                put_string(dst, stream_id);
                put_string(dst, error);
            }
            Message::OneWayMessage { .. } => dst.put_i32(body_len as i32),
            Message::UploadStream {
                request_id, meta, ..
            } => {
                dst.put_i64(*request_id);
                dst.put_i32(meta.len() as i32);
                dst.put_slice(meta);
                dst.put_i64(body_len as i64);
            }
            Message::MergedBlockMetaRequest {
                request_id,
                app_id,
                shuffle_id,
                shuffle_merge_id,
                reduce_id,
            } => {
                dst.put_i64(*request_id);
                put_string(dst, app_id);
                dst.put_i32(*shuffle_id);
                dst.put_i32(*shuffle_merge_id);
                dst.put_i32(*reduce_id);
            }
            Message::MergedBlockMetaSuccess {
                request_id,
                num_chunks,
                ..
            } => {
                dst.put_i64(*request_id);
                dst.put_i32(*num_chunks);
            }
        }
    }

    /// Write the whole message (header, then body in frame or raw body after it).
    pub fn encode(&self, dst: &mut BytesMut) {
        self.encode_header(dst);
        for part in self.body_parts() {
            dst.extend_from_slice(part);
        }
    }

    /// The whole message as bytes (a convenience for tests and tools).
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.wire_len());
        self.encode(&mut b);
        b.freeze()
    }

    /// Decode one frame's content (everything after the 8-byte length: type byte, header, body).
    /// In-frame bodies are slices of `frame` (no copy). As Spark, the body length fields of
    /// RpcRequest / RpcResponse / OneWayMessage are ignored: the body is the rest of the frame.
    pub fn decode(mut frame: Bytes) -> Result<Message, TransportError> {
        if frame.is_empty() {
            return Err(TransportError::InvalidFrameLength { body_length: 0 });
        }
        let type_id = frame.get_u8();
        let message_type = match type_id {
            0..=12 => type_name(type_id),
            _ => {
                return Err(TransportError::UnknownMessageType {
                    type_id: type_id as i8,
                })
            }
        };
        let mut r = Reader {
            buf: frame,
            message_type,
        };
        let msg = match type_id {
            0 => Message::ChunkFetchRequest { chunk: r.chunk()? },
            1 => {
                let chunk = r.chunk()?;
                Message::ChunkFetchSuccess { chunk, body: r.buf }
            }
            2 => Message::ChunkFetchFailure {
                chunk: r.chunk()?,
                error: r.string("errorString")?,
            },
            3 | 4 => {
                let request_id = r.i64("requestId")?;
                let _ignored_body_len = r.i32("bodyLength")?;
                let body = r.buf;
                if type_id == 3 {
                    Message::RpcRequest {
                        request_id,
                        body: body.into(),
                    }
                } else {
                    Message::RpcResponse {
                        request_id,
                        body: body.into(),
                    }
                }
            }
            5 => Message::RpcFailure {
                request_id: r.i64("requestId")?,
                error: r.string("errorString")?,
            },
            6 => Message::StreamRequest {
                stream_id: r.string("streamId")?,
            },
            7 => Message::StreamResponse {
                stream_id: r.string("streamId")?,
                byte_count: r.count("byteCount")?,
                body: Bytes::new(),
            },
            8 => Message::StreamFailure {
                stream_id: r.string("streamId")?,
                error: r.string("error")?,
            },
            9 => {
                let _ignored_body_len = r.i32("bodyLength")?;
                Message::OneWayMessage { body: r.buf.into() }
            }
            10 => Message::UploadStream {
                request_id: r.i64("requestId")?,
                meta: r.bytes("meta")?,
                body_byte_count: r.count("bodyByteCount")?,
                body: Bytes::new(),
            },
            11 => Message::MergedBlockMetaRequest {
                request_id: r.i64("requestId")?,
                app_id: r.string("appId")?,
                shuffle_id: r.i32("shuffleId")?,
                shuffle_merge_id: r.i32("shuffleMergeId")?,
                reduce_id: r.i32("reduceId")?,
            },
            _ => {
                let request_id = r.i64("requestId")?;
                let num_chunks = r.i32("numChunks")?;
                Message::MergedBlockMetaSuccess {
                    request_id,
                    num_chunks,
                    body: r.buf,
                }
            }
        };
        Ok(msg)
    }

    /// For the raw-body types, the announced length of the raw body that follows the frame.
    pub fn raw_body_len(&self) -> Option<u64> {
        match self {
            Message::StreamResponse { byte_count, .. } => Some(*byte_count),
            Message::UploadStream {
                body_byte_count, ..
            } => Some(*body_byte_count),
            _ => None,
        }
    }
}

/// The payload of an RPC or its answer ([`Message::RpcRequest`], [`Message::OneWayMessage`],
/// [`Message::RpcResponse`]): one buffer, or several written one after another as if joined.
///
/// Several parts spare a sender a copy: a message that holds a large byte string already in
/// memory (rpcenv's `Blob`) is encoded around it, and the string itself is written from where it
/// lies, with the encoded bytes before and after it as parts of their own. The bytes on the wire
/// are the same. A decoded body is always one part (a slice of the received frame).
#[derive(Clone, Default)]
pub struct Body(BodyParts);

#[derive(Clone)]
enum BodyParts {
    One(Bytes),
    /// At least two parts, none empty, and their total length.
    Many(Box<[Bytes]>, usize),
}

impl Default for BodyParts {
    fn default() -> Self {
        BodyParts::One(Bytes::new())
    }
}

impl Body {
    /// A body written as `parts`, one after another (empty parts are dropped).
    pub fn from_parts(parts: impl IntoIterator<Item = Bytes>) -> Body {
        let mut parts: Vec<Bytes> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        match parts.len() {
            0 => Body::default(),
            1 => Body(BodyParts::One(parts.pop().expect("one part"))),
            _ => {
                let len = parts.iter().map(Bytes::len).sum();
                Body(BodyParts::Many(parts.into_boxed_slice(), len))
            }
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        match &self.0 {
            BodyParts::One(b) => b.len(),
            BodyParts::Many(_, len) => *len,
        }
    }

    /// True for an empty body.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The parts, in the order they are written.
    pub fn parts(&self) -> &[Bytes] {
        match &self.0 {
            BodyParts::One(b) => std::slice::from_ref(b),
            BodyParts::Many(parts, _) => parts,
        }
    }

    /// The body as one buffer: free for one part (every decoded body), a copy for several.
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            BodyParts::One(b) => b,
            BodyParts::Many(parts, len) => {
                let mut joined = BytesMut::with_capacity(len);
                for part in parts.iter() {
                    joined.extend_from_slice(part);
                }
                joined.freeze()
            }
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body(BodyParts::One(bytes))
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Body::from(Bytes::from(bytes))
    }
}

impl From<&'static [u8]> for Body {
    fn from(bytes: &'static [u8]) -> Self {
        Body::from(Bytes::from_static(bytes))
    }
}

impl From<&'static str> for Body {
    fn from(text: &'static str) -> Self {
        Body::from(Bytes::from_static(text.as_bytes()))
    }
}

/// Whether two lists of parts hold the same bytes, however they are split.
fn same_bytes(a: &[Bytes], b: &[Bytes]) -> bool {
    match (a, b) {
        ([a], [b]) => a == b,
        _ => a
            .iter()
            .flat_map(|p| p.iter())
            .eq(b.iter().flat_map(|p| p.iter())),
    }
}

impl PartialEq for Body {
    /// Equal when the bytes are, however they are split into parts.
    fn eq(&self, other: &Body) -> bool {
        self.len() == other.len() && same_bytes(self.parts(), other.parts())
    }
}

impl Eq for Body {}

impl PartialEq<Bytes> for Body {
    fn eq(&self, other: &Bytes) -> bool {
        self.len() == other.len() && same_bytes(self.parts(), std::slice::from_ref(other))
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            BodyParts::One(b) => b.fmt(f),
            BodyParts::Many(parts, len) => f
                .debug_struct("Body")
                .field("len", len)
                .field("parts", &parts.iter().map(Bytes::len).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// Spark's class name of a message type id (`"Unknown"` outside 0..=12).
pub fn type_name(type_id: u8) -> &'static str {
    match type_id {
        0 => "ChunkFetchRequest",
        1 => "ChunkFetchSuccess",
        2 => "ChunkFetchFailure",
        3 => "RpcRequest",
        4 => "RpcResponse",
        5 => "RpcFailure",
        6 => "StreamRequest",
        7 => "StreamResponse",
        8 => "StreamFailure",
        9 => "OneWayMessage",
        10 => "UploadStream",
        11 => "MergedBlockMetaRequest",
        12 => "MergedBlockMetaSuccess",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod golden {
    //! Golden bytes for every message type, written out by hand from Spark's encoders.
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn check(msg: Message, wire: &str, frame_len: usize) {
        let expected = hex(wire);
        assert_eq!(msg.to_bytes().to_vec(), expected, "{msg:?}");
        assert_eq!(msg.wire_len(), expected.len());
        let decoded = Message::decode(Bytes::from(expected[8..frame_len].to_vec())).unwrap();
        let normalized = match msg {
            Message::StreamResponse {
                stream_id, body, ..
            } => Message::StreamResponse {
                stream_id,
                byte_count: body.len() as u64,
                body: Bytes::new(),
            },
            Message::UploadStream {
                request_id,
                meta,
                body,
                ..
            } => Message::UploadStream {
                request_id,
                meta,
                body_byte_count: body.len() as u64,
                body: Bytes::new(),
            },
            m => m,
        };
        assert_eq!(decoded, normalized);
    }

    const C: StreamChunkId = StreamChunkId {
        stream_id: 1,
        chunk_index: 2,
    };

    #[test]
    fn golden_chunk_fetch_request() {
        check(
            Message::ChunkFetchRequest { chunk: C },
            "0000000000000015 00 0000000000000001 00000002",
            21,
        );
    }

    #[test]
    fn golden_chunk_fetch_success() {
        let m = Message::ChunkFetchSuccess {
            chunk: C,
            body: Bytes::from_static(b"abc"),
        };
        check(
            m,
            "0000000000000018 01 0000000000000001 00000002 616263",
            24,
        );
    }

    #[test]
    fn golden_chunk_fetch_failure() {
        let m = Message::ChunkFetchFailure {
            chunk: C,
            error: "err".into(),
        };
        check(
            m,
            "000000000000001c 02 0000000000000001 00000002 00000003 657272",
            28,
        );
    }

    #[test]
    fn golden_rpc_request() {
        let m = Message::RpcRequest {
            request_id: 12345,
            body: Bytes::from_static(b"hi").into(),
        };
        check(m, "0000000000000017 03 0000000000003039 00000002 6869", 23);
    }

    #[test]
    fn golden_rpc_response() {
        let m = Message::RpcResponse {
            request_id: 12345,
            body: Bytes::from_static(b"hi").into(),
        };
        check(m, "0000000000000017 04 0000000000003039 00000002 6869", 23);
    }

    #[test]
    fn golden_rpc_failure() {
        let m = Message::RpcFailure {
            request_id: 12345,
            error: "oops".into(),
        };
        check(
            m,
            "0000000000000019 05 0000000000003039 00000004 6f6f7073",
            25,
        );
    }

    #[test]
    fn golden_stream_request() {
        check(
            Message::StreamRequest {
                stream_id: "abcde".into(),
            },
            "0000000000000012 06 00000005 6162636465",
            18,
        );
    }

    #[test]
    fn golden_stream_response() {
        let m = Message::StreamResponse {
            stream_id: "s".into(),
            byte_count: 3,
            body: Bytes::from_static(b"xyz"),
        };
        check(
            m,
            "0000000000000016 07 00000001 73 0000000000000003 78797a",
            22,
        );
    }

    #[test]
    fn golden_stream_failure() {
        let m = Message::StreamFailure {
            stream_id: "s".into(),
            error: "bad".into(),
        };
        check(m, "0000000000000015 08 00000001 73 00000003 626164", 21);
    }

    #[test]
    fn golden_one_way_message() {
        check(
            Message::OneWayMessage {
                body: Bytes::from_static(b"hey").into(),
            },
            "0000000000000010 09 00000003 686579",
            16,
        );
    }

    #[test]
    fn golden_upload_stream() {
        let m = Message::UploadStream {
            request_id: 7,
            meta: Bytes::from_static(b"m"),
            body_byte_count: 4,
            body: Bytes::from_static(b"body"),
        };
        check(
            m,
            "000000000000001e 0a 0000000000000007 00000001 6d 0000000000000004 626f6479",
            30,
        );
    }

    #[test]
    fn golden_merged_block_meta_request() {
        let m = Message::MergedBlockMetaRequest {
            request_id: 19,
            app_id: "app1".into(),
            shuffle_id: 0,
            shuffle_merge_id: 1,
            reduce_id: 2,
        };
        check(
            m,
            "0000000000000025 0b 0000000000000013 00000004 61707031 00000000 00000001 00000002",
            37,
        );
    }

    #[test]
    fn golden_merged_block_meta_success() {
        let m = Message::MergedBlockMetaSuccess {
            request_id: 13,
            num_chunks: 2,
            body: Bytes::from_static(b"bm"),
        };
        check(m, "0000000000000017 0c 000000000000000d 00000002 626d", 23);
    }

    #[test]
    fn body_length_field_is_ignored_on_decode() {
        // RpcRequest whose body-length field lies (says 99): the body is the rest of the frame.
        let frame = hex("03 0000000000000001 00000063 6869");
        let m = Message::decode(Bytes::from(frame)).unwrap();
        assert_eq!(
            m,
            Message::RpcRequest {
                request_id: 1,
                body: Bytes::from_static(b"hi").into()
            }
        );
    }

    #[test]
    fn truncated_header_is_malformed() {
        let err =
            Message::decode(Bytes::from(hex("05 0000000000000001 00000010 6869"))).unwrap_err();
        assert!(
            matches!(
                err,
                TransportError::MalformedMessage {
                    message_type: "RpcFailure",
                    ..
                }
            ),
            "{err}"
        );
    }
}

#[cfg(test)]
mod body {
    use super::*;

    #[test]
    fn parts_are_kept_in_order_without_the_empty_ones() {
        let body = Body::from_parts([
            Bytes::from_static(b"ab"),
            Bytes::new(),
            Bytes::from_static(b"cde"),
        ]);
        assert_eq!(body.len(), 5);
        assert_eq!(body.parts().len(), 2);
        assert_eq!(body.clone().into_bytes(), Bytes::from_static(b"abcde"));
        assert_eq!(body, Body::from(&b"abcde"[..]));
        assert_ne!(body, Body::from(&b"abcdf"[..]));
        assert_eq!(
            Body::from_parts([Bytes::from_static(b"x")]).parts().len(),
            1
        );
        let empty = Body::from_parts([Bytes::new(), Bytes::new()]);
        assert!(empty.is_empty());
        assert_eq!(empty, Body::default());
    }

    #[test]
    fn a_body_in_parts_is_framed_as_one() {
        let parts = [Bytes::from(vec![1u8; 40_000]), Bytes::from_static(b"tail")];
        let joined = Body::from_parts(parts.clone()).into_bytes();
        for (split, whole) in [
            (
                Message::RpcRequest {
                    request_id: 9,
                    body: Body::from_parts(parts.clone()),
                },
                Message::RpcRequest {
                    request_id: 9,
                    body: joined.clone().into(),
                },
            ),
            (
                Message::OneWayMessage {
                    body: Body::from_parts(parts.clone()),
                },
                Message::OneWayMessage {
                    body: joined.clone().into(),
                },
            ),
        ] {
            assert_eq!(split.wire_len(), whole.wire_len());
            assert_eq!(split.to_bytes(), whole.to_bytes());
            let frame = split.to_bytes().slice(LENGTH_FIELD..);
            assert_eq!(Message::decode(frame).unwrap(), split);
        }
    }
}
