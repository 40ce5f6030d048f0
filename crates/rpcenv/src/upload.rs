//! Uploads to an env: [`UploadReceiver`], registered by name with
//! [`RpcEnv::register_upload_receiver`](crate::RpcEnv::register_upload_receiver), is handed each
//! [`Upload`] sent to that name with [`RpcEnv::upload_stream`](crate::RpcEnv::upload_stream)
//! and answers it through [`UploadReply`].
//!
//! On the wire an upload is Spark's `UploadStream` frame: its metadata is the receiver's name
//! and the sender's own metadata (this module's format, below), its body the uploaded bytes.
//! Spark's `NettyRpcEnv` accepts no uploads (its handler refuses them); Spark's block transfer
//! service uses `UploadStream` for block uploads, with a serialized `UploadBlockStream` as the
//! metadata.

use std::fmt;
use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use rpcenv_transport::RpcResponder;

/// The longest receiver name (its length travels as a `u16`).
pub(crate) const MAX_RECEIVER_NAME: usize = u16::MAX as usize;

/// The metadata of an `UploadStream` frame: `u16` big-endian length of the receiver's name,
/// the name in UTF-8, then the sender's metadata. `None` when the name is too long.
pub(crate) fn encode_upload_meta(receiver: &str, meta: &[u8]) -> Option<Bytes> {
    let len = u16::try_from(receiver.len()).ok()?;
    let mut out = BytesMut::with_capacity(2 + receiver.len() + meta.len());
    out.put_u16(len);
    out.put_slice(receiver.as_bytes());
    out.put_slice(meta);
    Some(out.freeze())
}

/// Splits the metadata of an `UploadStream` frame into the receiver's name and the sender's
/// metadata (shared, not copied); the error says what is malformed.
pub(crate) fn decode_upload_meta(meta: &Bytes) -> Result<(String, Bytes), String> {
    let Some(len) = meta.get(..2) else {
        return Err(format!(
            "malformed upload metadata: {} bytes, too short for the receiver name's length",
            meta.len()
        ));
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let Some(name) = meta.get(2..2 + len) else {
        return Err(format!(
            "malformed upload metadata: the receiver name announces {len} bytes, {} follow",
            meta.len() - 2
        ));
    };
    let name = std::str::from_utf8(name)
        .map_err(|e| format!("malformed upload metadata: the receiver name is not UTF-8: {e}"))?;
    Ok((name.to_string(), meta.slice(2 + len..)))
}

/// One upload, as its receiver is handed it.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The receiver's name the sender addressed.
    pub receiver: String,
    /// The sender's metadata.
    pub meta: Bytes,
    /// The uploaded bytes (whole: the connection reassembles them, within
    /// `rpc.message.maxSize`).
    pub body: Bytes,
    /// The sender's socket address.
    pub peer: SocketAddr,
    /// The app id the sender's connection authenticated as (`None` without authentication).
    pub app_id: Option<String>,
}

/// The answer to one upload: [`ok`](Self::ok) with a reply the sender's
/// [`upload_stream`](crate::RpcEnv::upload_stream) returns, or [`fail`](Self::fail) with a
/// message it fails with. It may be moved to another thread and answered later; dropped
/// unanswered, the sender gets a failure saying so.
#[derive(Debug)]
pub struct UploadReply {
    responder: RpcResponder,
}

impl UploadReply {
    pub(crate) fn new(responder: RpcResponder) -> Self {
        UploadReply { responder }
    }

    /// Accepts the upload; `reply` goes back to the sender.
    pub fn ok(self, reply: Bytes) {
        self.responder.respond(reply);
    }

    /// Refuses the upload with `error`, which the sender's call fails with.
    pub fn fail(self, error: impl fmt::Display) {
        self.responder.fail(error.to_string());
    }
}

/// Receives the uploads sent to the name it is registered under (Spark: the stream callback
/// `RpcHandler.receiveStream` returns). Called on the connection's IO thread, once the whole
/// body has arrived: it must not block; hand long work to another thread with the
/// [`UploadReply`]. A panic answers the sender with a failure carrying its message.
pub trait UploadReceiver: Send + Sync + 'static {
    /// One upload; answer it through `reply`.
    fn receive(&self, upload: Upload, reply: UploadReply);
}

impl<F> UploadReceiver for F
where
    F: Fn(Upload, UploadReply) + Send + Sync + 'static,
{
    fn receive(&self, upload: Upload, reply: UploadReply) {
        self(upload, reply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips() {
        let wire = encode_upload_meta("blocks", b"\x00meta\xff").unwrap();
        let (name, meta) = decode_upload_meta(&wire).unwrap();
        assert_eq!(name, "blocks");
        assert_eq!(&meta[..], b"\x00meta\xff");
        let (name, meta) = decode_upload_meta(&encode_upload_meta("", b"").unwrap()).unwrap();
        assert!(name.is_empty() && meta.is_empty());
    }

    #[test]
    fn malformed_metadata_is_refused_with_the_reason() {
        let short = decode_upload_meta(&Bytes::from_static(b"\x00")).unwrap_err();
        assert!(short.contains("too short"), "{short}");
        let cut = decode_upload_meta(&Bytes::from_static(b"\x00\x09abc")).unwrap_err();
        assert!(cut.contains("announces 9 bytes, 3 follow"), "{cut}");
        let bad = decode_upload_meta(&Bytes::from_static(b"\x00\x02\xff\xfe")).unwrap_err();
        assert!(bad.contains("not UTF-8"), "{bad}");
    }

    #[test]
    fn a_name_too_long_for_its_length_field_is_refused() {
        let long = "n".repeat(MAX_RECEIVER_NAME + 1);
        assert!(encode_upload_meta(&long, b"").is_none());
        assert!(encode_upload_meta(&long[1..], b"").is_some());
    }
}
