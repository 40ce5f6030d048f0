//! The protocol side of one connection, free of sockets and clocks (as quinn-proto's
//! `Connection` stands beside quinn's driver): received bytes go in, and out come the steps the
//! driver carries out (a response to route, a request for the handler, an upload reassembled
//! from its pieces) and the decisions it follows (read or stop reading for the byte budget,
//! close for a deadline, close for bad input). The driver in `connection` only moves bytes
//! between the socket and this state, calls the handler and keeps the timer; times come in as
//! `now` values.
//!
//! What it decides:
//! - **frames**: the frame decoder turns the read buffer into messages and raw body pieces;
//!   responses and stream body pieces are handed to the driver for its response router,
//!   requests for its handler;
//! - **uploads**: an `UploadStream` header announcing more than the frame limit is bad input;
//!   its body, which may arrive in many pieces, is gathered (without a copy when it comes
//!   whole) and handed over once complete;
//! - **the first-frame gate**: an accepted connection must complete a frame (on an
//!   authenticated server that frame follows the handshake) within the handshake timeout;
//! - **liveness**: idle with requests outstanding, stalled in the middle of a frame;
//! - **the byte budget**: stop reading over it, read again under half of it.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::budget::ReadGate;
use crate::error::TransportError;
use crate::frame::{Decoded, FrameDecoder};
use crate::liveness::{Activity, Dead, Deadlines, Verdict};
use crate::message::Message;

/// What the driver does with one received frame.
#[derive(Debug)]
pub(crate) enum Step {
    /// A response: hand it to the outstanding request it answers.
    Response(Message),
    /// A piece of the body of a stream response, for the stream being received.
    ResponseBody { data: Bytes, last: bool },
    /// A request for the handler: `RpcRequest`, `OneWayMessage`, `StreamRequest`,
    /// `ChunkFetchRequest` or `MergedBlockMetaRequest`.
    Request(Message),
    /// An `UploadStream` whose body has arrived whole.
    Upload {
        request_id: i64,
        meta: Bytes,
        body: Bytes,
    },
}

/// An upload whose body is still arriving.
struct Upload {
    request_id: i64,
    meta: Bytes,
    /// The body so far. Its room grows with what arrives (see [`grow`]), not with what the
    /// header announced: a header is a few bytes, and a peer could send many that announce the
    /// frame limit and nothing after.
    body: BytesMut,
    /// The length the header announced.
    total: usize,
}

/// Makes room for `more` bytes in `body`, which will hold `total` in the end: at least twice
/// its room (so a body arriving in pieces is copied about once over), never more than `total`.
fn grow(body: &mut BytesMut, more: usize, total: usize) {
    let need = body.len() + more;
    if body.capacity() >= need {
        return;
    }
    let room = need
        .max(body.capacity().saturating_mul(2))
        .min(total)
        .max(need);
    let mut bigger = BytesMut::with_capacity(room);
    bigger.extend_from_slice(body);
    *body = bigger;
}

/// The protocol state of one connection.
pub(crate) struct ConnectionState {
    peer: SocketAddr,
    decoder: FrameDecoder,
    upload: Option<Upload>,
    /// The largest upload body accepted (the frame limit).
    max_upload: usize,
    /// Stops reading while the process holds too much for this peer.
    gate: ReadGate,
    deadlines: Deadlines,
    activity: Activity,
    /// Spark's module name, for the setting names in errors.
    module: String,
}

impl ConnectionState {
    /// The state of a connection established at `now`.
    pub(crate) fn new(
        peer: SocketAddr,
        max_frame_size: usize,
        max_queued_bytes: usize,
        deadlines: Deadlines,
        module: String,
        now: Instant,
    ) -> Self {
        ConnectionState {
            peer,
            decoder: FrameDecoder::new(max_frame_size),
            upload: None,
            max_upload: max_frame_size,
            gate: ReadGate::new(max_queued_bytes),
            deadlines,
            activity: Activity::new(now),
            module,
        }
    }

    /// How much free space the read buffer should have before the next read.
    pub(crate) fn reserve_hint(&self, rbuf: &BytesMut) -> usize {
        self.decoder.reserve_hint(rbuf)
    }

    /// Takes the next complete frame out of `rbuf`; `None` when more bytes are needed. Bad
    /// input (an undecodable frame, an upload over the frame limit) is an error naming the
    /// peer; the connection is then closed.
    pub(crate) fn next_step(
        &mut self,
        rbuf: &mut BytesMut,
    ) -> Result<Option<Step>, TransportError> {
        loop {
            let item = match self.decoder.decode(rbuf) {
                Ok(Some(item)) => item,
                Ok(None) => return Ok(None),
                Err(e) => {
                    return Err(TransportError::BadInput {
                        peer: self.peer,
                        source: Box::new(e),
                    })
                }
            };
            let step = match item {
                Decoded::Message(msg) => {
                    self.activity.frame_seen = true;
                    self.on_message(msg)?
                }
                Decoded::Body { data, last } => self.on_body(data, last),
            };
            if step.is_some() {
                return Ok(step);
            }
        }
    }

    fn on_message(&mut self, msg: Message) -> Result<Option<Step>, TransportError> {
        if msg.is_response() {
            return Ok(Some(Step::Response(msg)));
        }
        let Message::UploadStream {
            request_id,
            meta,
            body_byte_count,
            ..
        } = msg
        else {
            return Ok(Some(Step::Request(msg)));
        };
        if body_byte_count > self.max_upload as u64 {
            return Err(TransportError::BadInput {
                peer: self.peer,
                source: Box::new(TransportError::FrameTooLarge {
                    body_length: body_byte_count,
                    max: self.max_upload,
                    setting: "TransportConf::max_frame_size",
                }),
            });
        }
        if body_byte_count == 0 {
            return Ok(Some(Step::Upload {
                request_id,
                meta,
                body: Bytes::new(),
            }));
        }
        self.upload = Some(Upload {
            request_id,
            meta,
            body: BytesMut::new(),
            total: body_byte_count as usize,
        });
        Ok(None)
    }

    fn on_body(&mut self, data: Bytes, last: bool) -> Option<Step> {
        let Some(up) = &mut self.upload else {
            return Some(Step::ResponseBody { data, last });
        };
        if up.body.is_empty() && last {
            // The whole body arrived in one piece: no copy.
            let up = self.upload.take().expect("upload in progress");
            return Some(Step::Upload {
                request_id: up.request_id,
                meta: up.meta,
                body: data,
            });
        }
        grow(&mut up.body, data.len(), up.total);
        up.body.extend_from_slice(&data);
        if !last {
            return None;
        }
        let up = self.upload.take().expect("upload in progress");
        Some(Step::Upload {
            request_id: up.request_id,
            meta: up.meta,
            body: up.body.freeze(),
        })
    }

    /// The peer closed its side: an error if it left part of a frame behind.
    pub(crate) fn on_eof(&self, rbuf: &BytesMut) -> Result<(), TransportError> {
        if !rbuf.is_empty() || self.decoder.in_raw_body() {
            return Err(TransportError::TruncatedFrame {
                peer: self.peer,
                pending_bytes: rbuf.len(),
            });
        }
        Ok(())
    }

    /// Whether a complete frame has arrived.
    pub(crate) fn frame_seen(&self) -> bool {
        self.activity.frame_seen
    }

    /// Whether reading stays stopped with `held` bytes held for this peer (over the budget:
    /// stop; under half of it: read again).
    pub(crate) fn over_budget(&mut self, held: usize) -> bool {
        self.gate.update(held)
    }

    /// Whether reading was stopped for the budget (as of the last [`over_budget`](Self::over_budget)).
    pub(crate) fn budget_paused(&self) -> bool {
        self.gate.is_paused()
    }

    /// Records progress seen at `now`: bytes moved either way (`io`), bytes read (`read`), a
    /// request issued on this side (`requested`).
    pub(crate) fn on_progress(&mut self, now: Instant, io: bool, read: bool, requested: bool) {
        if io {
            self.activity.last_io = now;
        }
        if read {
            self.activity.last_read = now;
        }
        if requested {
            self.activity.last_request = now;
        }
    }

    /// The deadlines' verdict at `now`, with `outstanding` requests of this side waiting for
    /// answers and `rbuf` the bytes read but not yet decoded. An upload being received counts as
    /// outstanding, and a partly received frame as a frame in progress.
    pub(crate) fn check_deadlines(
        &mut self,
        now: Instant,
        outstanding: usize,
        rbuf: &BytesMut,
    ) -> Verdict {
        self.activity.outstanding = outstanding + usize::from(self.upload.is_some());
        self.activity.mid_frame = !rbuf.is_empty() || self.decoder.in_raw_body();
        self.deadlines.check(now, &self.activity)
    }

    /// The error a connection given up for `dead` closes with (it names the setting).
    pub(crate) fn dead_error(&self, dead: Dead) -> TransportError {
        let key = |name: &str| format!("spark.{}.io.{name}", self.module);
        match dead {
            Dead::Idle(quiet) => TransportError::IdleTimeout {
                peer: self.peer,
                idle: quiet,
                setting: key("connectionTimeout"),
            },
            Dead::NoFirstFrame(after) => TransportError::HandshakeTimeout {
                peer: self.peer,
                after,
                setting: key("handshakeTimeout"),
            },
            Dead::StalledFrame(quiet) => TransportError::StalledFrame {
                peer: self.peer,
                quiet,
                setting: key("connectionTimeout"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::StreamChunkId;
    use std::time::Duration;

    const MAX_FRAME: usize = 1 << 20;

    fn peer() -> SocketAddr {
        "127.0.0.1:7077".parse().unwrap()
    }

    fn state(deadlines: Deadlines, budget: usize, now: Instant) -> ConnectionState {
        ConnectionState::new(peer(), MAX_FRAME, budget, deadlines, "rpc".into(), now)
    }

    fn no_deadlines() -> Deadlines {
        Deadlines {
            connection_timeout: None,
            close_idle: false,
            first_frame: None,
        }
    }

    fn frame(msg: &Message) -> BytesMut {
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        out
    }

    fn steps(st: &mut ConnectionState, rbuf: &mut BytesMut) -> Vec<Step> {
        let mut all = Vec::new();
        while let Some(step) = st.next_step(rbuf).unwrap() {
            all.push(step);
        }
        all
    }

    #[test]
    fn requests_and_responses_are_told_apart() {
        let mut st = state(no_deadlines(), 0, Instant::now());
        let mut rbuf = frame(&Message::RpcRequest {
            request_id: 1,
            body: Bytes::from_static(b"ask").into(),
        });
        rbuf.extend_from_slice(&frame(&Message::RpcResponse {
            request_id: 2,
            body: Bytes::from_static(b"answer").into(),
        }));
        rbuf.extend_from_slice(&frame(&Message::OneWayMessage {
            body: Bytes::from_static(b"tell").into(),
        }));
        let got = steps(&mut st, &mut rbuf);
        assert!(matches!(
            &got[0],
            Step::Request(Message::RpcRequest { request_id: 1, .. })
        ));
        assert!(matches!(
            &got[1],
            Step::Response(Message::RpcResponse { request_id: 2, .. })
        ));
        assert!(matches!(
            &got[2],
            Step::Request(Message::OneWayMessage { .. })
        ));
        assert_eq!(got.len(), 3);
        assert!(st.frame_seen());
    }

    /// An upload's body arriving a few bytes at a time is handed over once, whole, after its
    /// last byte; a body arriving in one piece too.
    #[test]
    fn an_upload_is_reassembled_from_its_pieces() {
        let mut st = state(no_deadlines(), 0, Instant::now());
        let body: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let wire = frame(&Message::UploadStream {
            request_id: 9,
            meta: Bytes::from_static(b"meta"),
            body_byte_count: body.len() as u64,
            body: Bytes::from(body.clone()),
        });
        for piece_len in [1, 7, 4096, wire.len()] {
            let mut st_wire = wire.clone();
            let mut rbuf = BytesMut::new();
            let mut got = Vec::new();
            while !st_wire.is_empty() {
                let n = piece_len.min(st_wire.len());
                rbuf.extend_from_slice(&st_wire.split_to(n));
                got.extend(steps(&mut st, &mut rbuf));
                if !st_wire.is_empty() {
                    assert!(got.is_empty(), "nothing before the last byte");
                }
            }
            match got.as_slice() {
                [Step::Upload {
                    request_id: 9,
                    meta,
                    body: whole,
                }] => {
                    assert_eq!(&meta[..], b"meta");
                    assert_eq!(&whole[..], &body[..]);
                }
                other => panic!("pieces of {piece_len}: {other:?}"),
            }
        }
    }

    /// A header announcing a body as large as the frame limit reserves nothing until the body
    /// comes: its room grows with the bytes that arrive, and never past the announced length.
    #[test]
    fn an_upload_header_reserves_nothing_before_its_body() {
        let mut st = state(no_deadlines(), 0, Instant::now());
        let total = 100_000usize;
        let mut wire = frame(&Message::UploadStream {
            request_id: 4,
            meta: Bytes::from_static(b"m"),
            body_byte_count: total as u64,
            body: Bytes::from(vec![5u8; total]),
        });
        let body_at = wire.len() - total;
        let mut rbuf = wire.split_to(body_at + 10);
        assert!(steps(&mut st, &mut rbuf).is_empty());
        let room = st
            .upload
            .as_ref()
            .expect("upload in progress")
            .body
            .capacity();
        assert!(room < 1024, "{room} bytes reserved for 10 of {total}");
        while wire.len() > 1000 {
            rbuf.extend_from_slice(&wire.split_to(1000));
            assert!(steps(&mut st, &mut rbuf).is_empty());
            let room = st.upload.as_ref().unwrap().body.capacity();
            assert!(room <= total, "{room} bytes reserved for a body of {total}");
        }
        rbuf.extend_from_slice(&wire);
        match steps(&mut st, &mut rbuf).as_slice() {
            [Step::Upload { body, .. }] => assert_eq!(&body[..], &vec![5u8; total][..]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_empty_upload_is_handed_over_at_once() {
        let mut st = state(no_deadlines(), 0, Instant::now());
        let mut rbuf = frame(&Message::UploadStream {
            request_id: 3,
            meta: Bytes::from_static(b"m"),
            body_byte_count: 0,
            body: Bytes::new(),
        });
        let got = steps(&mut st, &mut rbuf);
        assert!(
            matches!(&got[..], [Step::Upload { request_id: 3, body, .. }] if body.is_empty()),
            "{got:?}"
        );
    }

    #[test]
    fn an_upload_over_the_frame_limit_is_bad_input() {
        let mut st = state(no_deadlines(), 0, Instant::now());
        let mut rbuf = BytesMut::new();
        // The header announces a body over the limit; the body itself never comes.
        Message::UploadStream {
            request_id: 4,
            meta: Bytes::new(),
            body_byte_count: MAX_FRAME as u64 + 1,
            body: Bytes::new(),
        }
        .encode_header_for_body(MAX_FRAME + 1, &mut rbuf);
        // The header alone is refused.
        let e = st.next_step(&mut rbuf).unwrap_err();
        assert!(e.is_bad_input(), "{e:?}");
        assert!(e.to_string().contains("127.0.0.1:7077"), "{e}");
    }

    #[test]
    fn stream_body_pieces_go_to_the_response_side() {
        let mut st = state(no_deadlines(), 0, Instant::now());
        let mut rbuf = BytesMut::new();
        Message::StreamResponse {
            stream_id: "s".into(),
            byte_count: 5,
            body: Bytes::new(),
        }
        .encode_header_for_body(5, &mut rbuf);
        rbuf.extend_from_slice(b"hel");
        let mut got = steps(&mut st, &mut rbuf);
        rbuf.extend_from_slice(b"lo");
        got.extend(steps(&mut st, &mut rbuf));
        assert!(
            matches!(&got[0], Step::Response(Message::StreamResponse { .. })),
            "{got:?}"
        );
        let body: Vec<u8> = got[1..]
            .iter()
            .flat_map(|s| match s {
                Step::ResponseBody { data, .. } => data.to_vec(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(body, b"hello");
        assert!(matches!(
            got.last(),
            Some(Step::ResponseBody { last: true, .. })
        ));
    }

    #[test]
    fn a_truncated_frame_at_eof_is_an_error() {
        let mut st = state(no_deadlines(), 0, Instant::now());
        let whole = frame(&Message::ChunkFetchRequest {
            chunk: StreamChunkId {
                stream_id: 1,
                chunk_index: 2,
            },
        });
        let mut rbuf = BytesMut::from(&whole[..whole.len() - 1]);
        assert!(steps(&mut st, &mut rbuf).is_empty());
        let e = st.on_eof(&rbuf).unwrap_err();
        assert!(matches!(e, TransportError::TruncatedFrame { .. }), "{e:?}");
        let mut empty = BytesMut::new();
        let mut fresh = state(no_deadlines(), 0, Instant::now());
        assert!(steps(&mut fresh, &mut empty).is_empty());
        fresh.on_eof(&empty).unwrap();
    }

    #[test]
    fn garbage_is_bad_input_naming_the_peer() {
        let mut st = state(no_deadlines(), 0, Instant::now());
        // A frame length shorter than its own header.
        let mut rbuf = BytesMut::from(&[0u8, 0, 0, 0, 0, 0, 0, 7, 99, 0, 0][..]);
        let e = st.next_step(&mut rbuf).unwrap_err();
        assert!(e.is_bad_input(), "{e:?}");
    }

    /// The first-frame gate: an accepted connection that completes no frame (on an
    /// authenticated server, the handshake is what precedes it) within the handshake timeout is
    /// closed with an error naming `handshakeTimeout`; one frame opens the gate for good.
    #[test]
    fn the_first_frame_gate_closes_a_silent_connection_and_opens_on_a_frame() {
        let t0 = Instant::now();
        let gate = Deadlines {
            connection_timeout: None,
            close_idle: false,
            first_frame: Some(Duration::from_secs(10)),
        };
        let empty = BytesMut::new();
        let mut silent = state(gate, 0, t0);
        assert_eq!(
            silent.check_deadlines(t0, 0, &empty),
            Verdict::RecheckAt(Some(t0 + Duration::from_secs(10)))
        );
        match silent.check_deadlines(t0 + Duration::from_secs(10), 0, &empty) {
            Verdict::Close(dead) => {
                let e = silent.dead_error(dead);
                assert!(
                    matches!(e, TransportError::HandshakeTimeout { .. }),
                    "{e:?}"
                );
                assert!(
                    e.to_string().contains("spark.rpc.io.handshakeTimeout"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        let mut talking = state(gate, 0, t0);
        let mut rbuf = frame(&Message::OneWayMessage {
            body: Bytes::from_static(b"hi").into(),
        });
        steps(&mut talking, &mut rbuf);
        assert_eq!(
            talking.check_deadlines(t0 + Duration::from_secs(3600), 0, &rbuf),
            Verdict::RecheckAt(None)
        );
    }

    /// Half a frame, then nothing for the connection timeout: closed as stalled, the time
    /// counted from the last bytes read (not from the connection's start).
    #[test]
    fn a_stalled_frame_is_closed_after_the_connection_timeout() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(5);
        let deadlines = Deadlines {
            connection_timeout: Some(timeout),
            close_idle: false,
            first_frame: None,
        };
        let mut st = state(deadlines, 0, t0);
        let whole = frame(&Message::OneWayMessage {
            body: Bytes::from_static(b"never finished").into(),
        });
        let mut rbuf = BytesMut::from(&whole[..6]);
        let read_at = t0 + Duration::from_secs(2);
        st.on_progress(read_at, true, true, false);
        assert!(steps(&mut st, &mut rbuf).is_empty());
        assert_eq!(
            st.check_deadlines(read_at + Duration::from_secs(4), 0, &rbuf),
            Verdict::RecheckAt(Some(read_at + timeout))
        );
        match st.check_deadlines(read_at + timeout, 0, &rbuf) {
            Verdict::Close(dead) => {
                let e = st.dead_error(dead);
                assert!(matches!(e, TransportError::StalledFrame { .. }), "{e:?}");
                assert!(
                    e.to_string().contains("spark.rpc.io.connectionTimeout"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// Spark's idle rule: quiet for the connection timeout closes a connection only while
    /// requests are outstanding.
    #[test]
    fn the_idle_rule_closes_only_with_requests_outstanding() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(30);
        let deadlines = Deadlines {
            connection_timeout: Some(timeout),
            close_idle: false,
            first_frame: None,
        };
        let empty = BytesMut::new();
        let mut st = state(deadlines, 0, t0);
        let later = t0 + timeout;
        assert!(matches!(
            st.check_deadlines(later, 0, &empty),
            Verdict::RecheckAt(Some(_))
        ));
        match st.check_deadlines(later, 1, &empty) {
            Verdict::Close(dead) => {
                assert!(matches!(
                    st.dead_error(dead),
                    TransportError::IdleTimeout { .. }
                ))
            }
            other => panic!("{other:?}"),
        }
        // A request issued recently keeps it open.
        st.on_progress(later - Duration::from_secs(1), false, false, true);
        assert!(matches!(
            st.check_deadlines(later, 1, &empty),
            Verdict::RecheckAt(Some(_))
        ));
    }

    /// The byte budget, as the connection sees it: over the budget it stops reading, and reads
    /// again only once what it holds falls under half.
    #[test]
    fn the_byte_budget_stops_and_resumes_reading() {
        let mut st = state(no_deadlines(), 1000, Instant::now());
        assert!(!st.over_budget(1000));
        assert!(st.over_budget(1001));
        assert!(st.budget_paused());
        assert!(st.over_budget(600));
        assert!(!st.over_budget(499));
        assert!(!st.budget_paused());
        let mut unlimited = state(no_deadlines(), 0, Instant::now());
        assert!(!unlimited.over_budget(usize::MAX));
    }
}
