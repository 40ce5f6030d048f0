//! The frame decoder: Spark's `TransportFrameDecoder` plus `MessageDecoder`, without sockets.
//!
//! Input is a growing [`BytesMut`] (what the socket delivered so far); output is one
//! [`Decoded`] item at a time. The 8-byte big-endian length counts itself; it is validated
//! (positive body, within the cap) before the buffer is asked to grow. After a StreamResponse or
//! UploadStream frame the announced number of raw bytes is handed out as [`Decoded::Body`]
//! pieces, sliced from the input without copying, before framing resumes.

use bytes::{Buf, BytesMut};

use crate::error::TransportError;
use crate::message::{Message, LENGTH_FIELD};
use crate::metrics::FrameCounters;

/// Largest amount the decoder suggests reserving at once for an incomplete frame.
const MAX_RESERVE: usize = 4 << 20;
/// Largest amount it suggests reserving at once inside a raw stream body. Body pieces are
/// slices of the read buffer and keep their whole allocation alive until the reader takes the
/// last of them; with 4 MiB buffers a 256 MiB download (`rpcenv fetch`, loopback) peaked 20-65
/// MiB above a 1-byte one (glibc keeps such blocks in its arenas once its mmap threshold has
/// risen), with 256 KiB buffers 9-35 MiB, and no slower.
const MAX_BODY_RESERVE: usize = 256 << 10;

/// One item taken from the byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A complete message.
    Message(Message),
    /// A piece of the raw body that follows the last StreamResponse / UploadStream frame.
    Body {
        /// The bytes (a slice of the input buffer).
        data: bytes::Bytes,
        /// True on the piece that completes the body.
        last: bool,
    },
}

/// Incremental frame decoder with a size cap.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_size: usize,
    body_remaining: u64,
    /// Frames and bytes read (the `rpcenv_frames_in_total` / `rpcenv_bytes_in_total` metrics).
    counters: FrameCounters,
}

impl FrameDecoder {
    /// A decoder accepting frame bodies (frame length minus 8) up to `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        FrameDecoder {
            max_frame_size,
            body_remaining: 0,
            counters: FrameCounters::inbound(),
        }
    }

    /// True while the raw body of a stream or upload is being passed through.
    pub fn in_raw_body(&self) -> bool {
        self.body_remaining > 0
    }

    /// Raw-body bytes still expected.
    pub fn raw_body_remaining(&self) -> u64 {
        self.body_remaining
    }

    /// Take the next item off the front of `buf`, or `Ok(None)` when more bytes are needed.
    /// After an error the connection must be closed: the stream position is lost.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, TransportError> {
        if self.body_remaining > 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            let n = (buf.len() as u64).min(self.body_remaining) as usize;
            self.body_remaining -= n as u64;
            let data = buf.split_to(n).freeze();
            self.counters.body(n);
            return Ok(Some(Decoded::Body {
                data,
                last: self.body_remaining == 0,
            }));
        }
        let Some(body_len) = self.peek_body_len(buf)? else {
            return Ok(None);
        };
        if buf.len() - LENGTH_FIELD < body_len {
            return Ok(None);
        }
        buf.advance(LENGTH_FIELD);
        let frame = buf.split_to(body_len).freeze();
        let msg = Message::decode(frame)?;
        self.counters.frame(msg.type_id(), LENGTH_FIELD + body_len);
        if let Some(n) = msg.raw_body_len() {
            self.body_remaining = n;
        }
        Ok(Some(Decoded::Message(msg)))
    }

    /// Validate the length field at the front of `buf`, if complete.
    fn peek_body_len(&self, buf: &BytesMut) -> Result<Option<usize>, TransportError> {
        if buf.len() < LENGTH_FIELD {
            return Ok(None);
        }
        let mut len_bytes = [0u8; LENGTH_FIELD];
        len_bytes.copy_from_slice(&buf[..LENGTH_FIELD]);
        let frame_len = i64::from_be_bytes(len_bytes);
        let body_len = i128::from(frame_len) - LENGTH_FIELD as i128;
        if body_len <= 0 {
            return Err(TransportError::InvalidFrameLength {
                body_length: body_len as i64,
            });
        }
        if body_len > self.max_frame_size as i128 {
            return Err(TransportError::FrameTooLarge {
                body_length: body_len as u64,
                max: self.max_frame_size,
                setting: "TransportConf::max_frame_size",
            });
        }
        Ok(Some(body_len as usize))
    }

    /// How many more bytes the item in progress needs (capped at a few MiB), for sizing the next
    /// read; 0 when unknown. Never suggests growing past a validated frame.
    pub fn reserve_hint(&self, buf: &BytesMut) -> usize {
        if self.body_remaining > 0 {
            return (self.body_remaining.min(MAX_BODY_RESERVE as u64) as usize)
                .saturating_sub(buf.len());
        }
        match self.peek_body_len(buf) {
            Ok(Some(body_len)) => (LENGTH_FIELD + body_len)
                .saturating_sub(buf.len())
                .min(MAX_RESERVE),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, Bytes};
    use rand::{Rng, SeedableRng};

    fn frame_of(body_len: usize, fill: u8) -> Vec<u8> {
        // A ChunkFetchSuccess frame whose total body (type + header + chunk) is body_len.
        let msg = Message::ChunkFetchSuccess {
            chunk: crate::message::StreamChunkId {
                stream_id: 1,
                chunk_index: 2,
            },
            body: Bytes::from(vec![fill; body_len - 13]),
        };
        msg.to_bytes().to_vec()
    }

    fn drain(dec: &mut FrameDecoder, buf: &mut BytesMut, out: &mut Vec<Decoded>) {
        while let Some(d) = dec.decode(buf).unwrap() {
            out.push(d);
        }
    }

    #[test]
    fn transport_frame_decoder_suite_test_frame_decoding() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(66);
        let mut wire = Vec::new();
        for i in 0..100 {
            let size = rng.random_range(1024..32 * 1024);
            wire.extend(frame_of(size, i as u8));
        }
        let mut dec = FrameDecoder::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let n = rng.random_range(256..4352).min(wire.len() - pos);
            buf.extend_from_slice(&wire[pos..pos + n]);
            pos += n;
            drain(&mut dec, &mut buf, &mut out);
        }
        assert_eq!(out.len(), 100);
        assert!(buf.is_empty());
        for (i, d) in out.iter().enumerate() {
            let Decoded::Message(Message::ChunkFetchSuccess { body, .. }) = d else {
                panic!()
            };
            assert!(body.iter().all(|b| *b == i as u8));
        }
    }

    #[test]
    fn transport_frame_decoder_suite_test_interception() {
        // A StreamResponse announcing 3 raw pieces, then an ordinary frame.
        let mut dec = FrameDecoder::new(1 << 20);
        let header = Message::StreamResponse {
            stream_id: "s".into(),
            byte_count: 0,
            body: Bytes::from_static(b"abcdefghi"),
        }
        .to_bytes();
        let (frame, raw) = header.split_at(header.len() - 9);
        let mut buf = BytesMut::from(frame);
        let mut out = Vec::new();
        drain(&mut dec, &mut buf, &mut out);
        assert!(matches!(
            &out[0],
            Decoded::Message(Message::StreamResponse { byte_count: 9, .. })
        ));
        for piece in raw.chunks(3) {
            buf.extend_from_slice(piece);
            drain(&mut dec, &mut buf, &mut out);
        }
        let bodies: Vec<_> = out[1..]
            .iter()
            .map(|d| match d {
                Decoded::Body { data, last } => (data.clone(), *last),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            bodies,
            vec![
                (Bytes::from_static(b"abc"), false),
                (Bytes::from_static(b"def"), false),
                (Bytes::from_static(b"ghi"), true)
            ]
        );
        buf.extend_from_slice(&frame_of(100, 7));
        out.clear();
        drain(&mut dec, &mut buf, &mut out);
        assert_eq!(out.len(), 1);
        assert!(matches!(
            out[0],
            Decoded::Message(Message::ChunkFetchSuccess { .. })
        ));
    }

    #[test]
    fn transport_frame_decoder_suite_test_retained_frames() {
        let mut dec = FrameDecoder::new(1 << 20);
        let mut buf = BytesMut::new();
        let mut retained = Vec::new();
        for i in 0..10u8 {
            buf.extend_from_slice(&frame_of(200, i));
            if let Some(Decoded::Message(Message::ChunkFetchSuccess { body, .. })) =
                dec.decode(&mut buf).unwrap()
            {
                if i % 2 == 0 {
                    retained.push((i, body));
                }
            }
            buf.reserve(4096); // new reads must not clobber retained frames
        }
        assert_eq!(retained.len(), 5);
        for (i, body) in retained {
            assert!(body.iter().all(|b| *b == i));
        }
    }

    #[test]
    fn transport_frame_decoder_suite_test_split_length_field() {
        let wire = frame_of(100, 1);
        let mut dec = FrameDecoder::new(1 << 20);
        let mut buf = BytesMut::from(&wire[..5]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&wire[5..]);
        assert!(matches!(
            dec.decode(&mut buf).unwrap(),
            Some(Decoded::Message(_))
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn transport_frame_decoder_suite_test_negative_frame_size() {
        let mut buf = BytesMut::new();
        buf.put_i64(-1);
        let err = FrameDecoder::new(100).decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, TransportError::InvalidFrameLength { body_length: -9 }),
            "{err}"
        );
    }

    #[test]
    fn transport_frame_decoder_suite_test_empty_frame() {
        let mut buf = BytesMut::new();
        buf.put_i64(8);
        let err = FrameDecoder::new(100).decode(&mut buf).unwrap_err();
        assert_eq!(err.to_string(), "Frame length should be positive: 0");
    }

    #[test]
    fn length_seven_is_rejected_too() {
        let mut buf = BytesMut::new();
        buf.put_i64(7);
        assert!(FrameDecoder::new(100).decode(&mut buf).is_err());
    }

    #[test]
    fn oversized_frame_is_rejected_before_growing_the_buffer() {
        let mut buf = BytesMut::with_capacity(16);
        buf.put_i64(i64::MAX);
        let dec = FrameDecoder::new(1 << 20);
        assert_eq!(dec.reserve_hint(&buf), 0);
        let err = dec.clone().decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, TransportError::FrameTooLarge { max: 1048576, .. }),
            "{err}"
        );
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn unknown_type_id_is_a_typed_error() {
        let mut buf = BytesMut::new();
        buf.put_i64(9 + 4);
        buf.put_u8(13);
        buf.put_i32(0);
        let err = FrameDecoder::new(100).decode(&mut buf).unwrap_err();
        assert_eq!(err.to_string(), "Unknown message type: 13");
        let mut buf = BytesMut::new();
        buf.put_i64(9);
        buf.put_u8(0xff);
        let err = FrameDecoder::new(100).decode(&mut buf).unwrap_err();
        assert_eq!(err.to_string(), "Unknown message type: -1");
    }

    #[test]
    fn reserve_hint_is_capped_and_exact() {
        let mut buf = BytesMut::new();
        buf.put_i64(8 + 100);
        let dec = FrameDecoder::new(1 << 30);
        assert_eq!(dec.reserve_hint(&buf), 100);
        let mut buf = BytesMut::new();
        buf.put_i64(8 + (1 << 29));
        assert_eq!(dec.reserve_hint(&buf), MAX_RESERVE);
    }

    #[test]
    fn reserve_hint_inside_a_raw_body_is_capped_lower() {
        let body_len = 8 << 20;
        let mut dec = FrameDecoder::new(1 << 20);
        let message = Message::StreamResponse {
            stream_id: "s".into(),
            byte_count: 0,
            body: Bytes::from(vec![0u8; body_len]),
        }
        .to_bytes();
        let mut buf = BytesMut::from(&message[..message.len() - body_len]);
        assert!(matches!(
            dec.decode(&mut buf).unwrap(),
            Some(Decoded::Message(Message::StreamResponse { .. }))
        ));
        assert_eq!(dec.raw_body_remaining(), body_len as u64);
        assert_eq!(dec.reserve_hint(&BytesMut::new()), MAX_BODY_RESERVE);
        // Near the end, exactly what is left.
        let mut buf = BytesMut::from(&message[message.len() - body_len..][..body_len - 10]);
        while dec.raw_body_remaining() > 10 {
            dec.decode(&mut buf).unwrap();
        }
        assert_eq!(dec.reserve_hint(&BytesMut::new()), 10);
    }
}
