//! Outbound batching: messages are encoded into one growing buffer and written with vectored
//! writes, so many small frames leave in one syscall. Large bodies are not copied: they are queued
//! as their own segments (`Bytes` handles) between the encoded headers. A reply body given as a
//! [`BodySource`] is a segment too: it is pulled one bounded piece at a time when everything
//! before it has been written, so it is never whole in memory.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

use crate::body::{BodySource, ReplyBody, BODY_PIECE};
use crate::message::Message;
use crate::metrics::FrameCounters;

/// Bodies up to this size are copied into the batch buffer; larger ones are queued by handle.
pub(crate) const INLINE_BODY_MAX: usize = 16 * 1024;

/// Most slices handed to one vectored write.
pub(crate) const MAX_IO_SLICES: usize = 64;

/// One queued segment: bytes, or a body still to be pulled.
enum Seg {
    Bytes(Bytes),
    Source(Box<dyn BodySource>),
}

/// Encoded bytes waiting to be written, in order.
pub struct WriteQueue {
    segs: VecDeque<Seg>,
    cur: BytesMut,
    len: usize,
    /// Frames and bytes queued (the `rpcenv_frames_out_total` / `rpcenv_bytes_out_total` metrics).
    counters: FrameCounters,
}

impl Default for WriteQueue {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for WriteQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteQueue")
            .field("len", &self.len)
            .field("segments", &self.segs.len())
            .finish()
    }
}

impl WriteQueue {
    /// An empty queue.
    pub fn new() -> Self {
        WriteQueue {
            segs: VecDeque::new(),
            cur: BytesMut::with_capacity(16 * 1024),
            len: 0,
            counters: FrameCounters::outbound(),
        }
    }

    /// Bytes waiting (with the unread part of pulled bodies).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append one message (its frame, then its body: in frame or raw, the bytes are the same).
    pub fn push(&mut self, msg: &Message) {
        msg.encode_header(&mut self.cur);
        for part in msg.body_parts() {
            if part.len() <= INLINE_BODY_MAX {
                self.cur.extend_from_slice(part);
            } else {
                self.segs.push_back(Seg::Bytes(self.cur.split().freeze()));
                self.segs.push_back(Seg::Bytes(part.clone()));
            }
        }
        let len = msg.wire_len();
        self.len += len;
        self.counters.frame(msg.type_id(), len);
    }

    /// Append a stream or chunk reply whose body is given apart from `header` (whose own body,
    /// if any, is ignored).
    pub fn push_reply(&mut self, header: &Message, body: ReplyBody) {
        let body_len = body.len() as usize;
        let head_start = self.cur.len();
        header.encode_header_for_body(body_len, &mut self.cur);
        self.len += self.cur.len() - head_start + body_len;
        match body {
            ReplyBody::Bytes(b) if b.len() <= INLINE_BODY_MAX => self.cur.extend_from_slice(&b),
            ReplyBody::Bytes(b) => {
                self.segs.push_back(Seg::Bytes(self.cur.split().freeze()));
                self.segs.push_back(Seg::Bytes(b));
            }
            ReplyBody::Source(s) if s.is_empty() => {}
            ReplyBody::Source(s) => {
                self.segs.push_back(Seg::Bytes(self.cur.split().freeze()));
                self.segs.push_back(Seg::Source(s));
            }
        }
    }

    /// When a pulled body is next to be written, pulls its next piece (at most [`BODY_PIECE`]
    /// bytes). An error, or a body that ends before its announced length, is returned: the
    /// frame cannot be completed.
    pub fn pull(&mut self) -> std::io::Result<()> {
        while let Some(Seg::Bytes(b)) = self.segs.front() {
            if !b.is_empty() {
                return Ok(());
            }
            self.segs.pop_front();
        }
        let Some(Seg::Source(src)) = self.segs.front_mut() else {
            return Ok(());
        };
        let want = src.len();
        let piece = src.next_piece(BODY_PIECE)?;
        if piece.is_empty() || piece.len() as u64 > want {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "a reply body source gave {} bytes with {want} still announced",
                    piece.len()
                ),
            ));
        }
        if src.is_empty() {
            self.segs.pop_front();
        }
        self.segs.push_front(Seg::Bytes(piece));
        Ok(())
    }

    /// Fill `dst` with the next slices to write; returns how many were filled.
    pub fn fill_slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for seg in &self.segs {
            let seg = match seg {
                Seg::Bytes(b) if b.is_empty() => continue,
                Seg::Bytes(b) => b,
                // Not pulled yet: what follows waits for it.
                Seg::Source(_) => return n,
            };
            if n == dst.len() {
                return n;
            }
            dst[n] = IoSlice::new(seg);
            n += 1;
        }
        if n < dst.len() && !self.cur.is_empty() {
            dst[n] = IoSlice::new(&self.cur);
            n += 1;
        }
        n
    }

    /// Drop `n` written bytes from the front.
    pub fn advance(&mut self, mut n: usize) {
        assert!(n <= self.len, "advanced past the queued bytes");
        self.len -= n;
        while n > 0 {
            match self.segs.front_mut() {
                Some(Seg::Bytes(front)) if n >= front.len() => {
                    n -= front.len();
                    self.segs.pop_front();
                }
                Some(Seg::Bytes(front)) => {
                    front.advance(n);
                    n = 0;
                }
                Some(Seg::Source(_)) => unreachable!("bytes of an unpulled body were written"),
                None => {
                    self.cur.advance(n);
                    n = 0;
                }
            }
        }
        if self.len == 0 {
            self.segs.clear();
            self.cur.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::StreamChunkId;

    fn drain_all(q: &mut WriteQueue, max_write: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while !q.is_empty() {
            q.pull().unwrap();
            let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
            let n = q.fill_slices(&mut slices);
            let mut budget = max_write;
            let mut written = 0;
            for s in &slices[..n] {
                let take = s.len().min(budget);
                out.extend_from_slice(&s[..take]);
                budget -= take;
                written += take;
                if budget == 0 {
                    break;
                }
            }
            q.advance(written);
        }
        out
    }

    #[test]
    fn batches_small_and_large_bodies_in_order_under_short_writes() {
        let msgs = vec![
            Message::RpcRequest {
                request_id: 1,
                body: Bytes::from_static(b"small").into(),
            },
            Message::OneWayMessage {
                body: Bytes::from(vec![7u8; 100_000]).into(),
            },
            Message::StreamResponse {
                stream_id: "s".into(),
                byte_count: 0,
                body: Bytes::from(vec![9u8; 40_000]),
            },
            Message::RpcFailure {
                request_id: 2,
                error: "e".into(),
            },
        ];
        let expected: Vec<u8> = msgs.iter().flat_map(|m| m.to_bytes().to_vec()).collect();
        for max_write in [1, 7, 4096, usize::MAX] {
            let mut q = WriteQueue::new();
            for m in &msgs {
                q.push(m);
            }
            assert_eq!(q.len(), expected.len());
            assert_eq!(
                drain_all(&mut q, max_write),
                expected,
                "max_write {max_write}"
            );
            assert!(q.is_empty());
        }
    }

    /// A body produced on demand, counting how much of it was ever pulled at once.
    struct Pattern {
        left: u64,
        next: u8,
    }

    impl BodySource for Pattern {
        fn len(&self) -> u64 {
            self.left
        }
        fn next_piece(&mut self, max: usize) -> std::io::Result<Bytes> {
            let n = (self.left as usize).min(max).min(1000);
            let piece: Vec<u8> = (0..n)
                .map(|_| {
                    self.next = self.next.wrapping_add(1);
                    self.next
                })
                .collect();
            self.left -= n as u64;
            Ok(Bytes::from(piece))
        }
    }

    #[test]
    fn pulled_bodies_keep_their_place_between_other_messages() {
        let body: Vec<u8> = (1..=5000u32).map(|i| i as u8).collect();
        let stream = Message::StreamResponse {
            stream_id: "s".into(),
            byte_count: 0,
            body: Bytes::from(body.clone()),
        };
        let chunk = Message::ChunkFetchSuccess {
            chunk: StreamChunkId {
                stream_id: 1,
                chunk_index: 2,
            },
            body: Bytes::from(body.clone()),
        };
        let after = Message::RpcFailure {
            request_id: 3,
            error: "after".into(),
        };
        let expected: Vec<u8> = [&stream, &chunk, &after]
            .iter()
            .flat_map(|m| m.to_bytes().to_vec())
            .collect();
        for max_write in [1, 999, usize::MAX] {
            let mut q = WriteQueue::new();
            q.push_reply(
                &stream,
                ReplyBody::source(Pattern {
                    left: 5000,
                    next: 0,
                }),
            );
            q.push_reply(
                &chunk,
                ReplyBody::source(Pattern {
                    left: 5000,
                    next: 0,
                }),
            );
            q.push(&after);
            assert_eq!(q.len(), expected.len());
            assert_eq!(drain_all(&mut q, max_write), expected);
        }
    }

    #[test]
    fn a_body_shorter_than_announced_is_an_error() {
        struct Short;
        impl BodySource for Short {
            fn len(&self) -> u64 {
                10
            }
            fn next_piece(&mut self, _max: usize) -> std::io::Result<Bytes> {
                Ok(Bytes::new())
            }
        }
        let mut q = WriteQueue::new();
        let header = Message::StreamResponse {
            stream_id: "s".into(),
            byte_count: 0,
            body: Bytes::new(),
        };
        q.push_reply(&header, ReplyBody::source(Short));
        q.pull().unwrap();
        let mut slices = [IoSlice::new(&[]); MAX_IO_SLICES];
        let n = q.fill_slices(&mut slices);
        let head: usize = slices[..n].iter().map(|s| s.len()).sum();
        q.advance(head);
        assert!(q.pull().is_err());
    }
}

#[cfg(all(test, feature = "metrics"))]
mod metrics_tests {
    //! The frame and byte counters of a write queue and a decoder (here: the queue is the
    //! sending side of the pair).
    use super::*;
    use crate::frame::FrameDecoder;
    use crate::metrics::{SharedString, BYTES_IN, BYTES_OUT, FRAMES_IN, FRAMES_OUT};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use metrics_util::{CompositeKey, MetricKind};

    fn counter_value(
        snapshot: &[(
            CompositeKey,
            Option<metrics::Unit>,
            Option<SharedString>,
            DebugValue,
        )],
        name: &str,
        labels: &[(&str, &str)],
    ) -> u64 {
        snapshot
            .iter()
            .filter(|(k, ..)| k.kind() == MetricKind::Counter && k.key().name() == name)
            .filter(|(k, ..)| {
                labels
                    .iter()
                    .all(|(lk, lv)| k.key().labels().any(|l| l.key() == *lk && l.value() == *lv))
            })
            .map(|(.., v)| match v {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn decoder_and_write_queue_count_frames_by_type_and_bytes() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let mut queue = WriteQueue::new();
            let request = Message::RpcRequest {
                request_id: 7,
                body: Bytes::from_static(b"hello").into(),
            };
            let one_way = Message::OneWayMessage {
                body: Bytes::from_static(b"x").into(),
            };
            queue.push(&request);
            queue.push(&request);
            queue.push(&one_way);
            let mut wire = BytesMut::new();
            let mut slices = [std::io::IoSlice::new(&[]); 8];
            let n = queue.fill_slices(&mut slices);
            for s in &slices[..n] {
                wire.extend_from_slice(s);
            }
            let total = wire.len() as u64;
            let mut decoder = FrameDecoder::new(1 << 20);
            while decoder.decode(&mut wire).expect("valid frames").is_some() {}

            let snap = snapshotter.snapshot().into_vec();
            assert_eq!(
                counter_value(&snap, FRAMES_OUT, &[("type", "RpcRequest")]),
                2
            );
            assert_eq!(
                counter_value(&snap, FRAMES_OUT, &[("type", "OneWayMessage")]),
                1
            );
            assert_eq!(
                counter_value(&snap, FRAMES_IN, &[("type", "RpcRequest")]),
                2
            );
            assert_eq!(
                counter_value(&snap, FRAMES_IN, &[("type", "OneWayMessage")]),
                1
            );
            assert_eq!(
                counter_value(&snap, FRAMES_IN, &[("type", "RpcResponse")]),
                0
            );
            assert_eq!(counter_value(&snap, BYTES_OUT, &[]), total);
            assert_eq!(counter_value(&snap, BYTES_IN, &[]), total);
        });
    }
}
