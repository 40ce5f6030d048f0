//! Spark's ProtocolSuite: every message survives encode -> frame decode -> decode, plus a
//! proptest round trip of arbitrary message sequences through arbitrary read splits.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rpcenv_transport::{Body, Decoded, FrameDecoder, Message, StreamChunkId, WriteQueue};

/// What the decoder yields for `m` once raw bodies are re-attached.
fn normalized(m: &Message) -> Message {
    match m.clone() {
        Message::StreamResponse {
            stream_id, body, ..
        } => Message::StreamResponse {
            stream_id,
            byte_count: body.len() as u64,
            body,
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
            body,
        },
        other => other,
    }
}

/// Decode `wire` fed in pieces of the given sizes; raw bodies are re-attached to their message.
fn decode_all(wire: &[u8], splits: &[usize]) -> Vec<Message> {
    let mut dec = FrameDecoder::new(1 << 24);
    let mut buf = BytesMut::new();
    let mut out: Vec<Message> = Vec::new();
    let mut raw: Option<(Message, BytesMut)> = None;
    let mut pos = 0;
    let mut i = 0;
    while pos < wire.len() {
        let n = splits
            .get(i)
            .copied()
            .unwrap_or(wire.len())
            .clamp(1, wire.len() - pos);
        i += 1;
        buf.extend_from_slice(&wire[pos..pos + n]);
        pos += n;
        while let Some(item) = dec.decode(&mut buf).expect("valid input decodes") {
            match item {
                Decoded::Message(m) => {
                    if m.raw_body_len().unwrap_or(0) > 0 {
                        raw = Some((m, BytesMut::new()));
                    } else {
                        out.push(m);
                    }
                }
                Decoded::Body { data, last } => {
                    let (_, body) = raw.as_mut().expect("body after a raw-body message");
                    body.extend_from_slice(&data);
                    if last {
                        let (m, body) = raw.take().unwrap();
                        let body = body.freeze();
                        out.push(match m {
                            Message::StreamResponse {
                                stream_id,
                                byte_count,
                                ..
                            } => Message::StreamResponse {
                                stream_id,
                                byte_count,
                                body,
                            },
                            Message::UploadStream {
                                request_id,
                                meta,
                                body_byte_count,
                                ..
                            } => Message::UploadStream {
                                request_id,
                                meta,
                                body_byte_count,
                                body,
                            },
                            other => panic!("unexpected {other:?}"),
                        });
                    }
                }
            }
        }
    }
    assert!(buf.is_empty() && raw.is_none() && !dec.in_raw_body());
    out
}

fn round_trip(msgs: &[Message]) {
    let mut wire = BytesMut::new();
    for m in msgs {
        m.encode(&mut wire);
    }
    let decoded = decode_all(&wire, &[]);
    let expected: Vec<_> = msgs.iter().map(normalized).collect();
    assert_eq!(decoded, expected);
}

fn bytes(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| i as u8).collect::<Vec<_>>())
}

const CHUNK: StreamChunkId = StreamChunkId {
    stream_id: 1,
    chunk_index: 2,
};

#[test]
fn protocol_suite_requests() {
    round_trip(&[
        Message::ChunkFetchRequest { chunk: CHUNK },
        Message::RpcRequest {
            request_id: 12345,
            body: Bytes::new().into(),
        },
        Message::RpcRequest {
            request_id: 12345,
            body: bytes(10).into(),
        },
        Message::StreamRequest {
            stream_id: "abcde".into(),
        },
        Message::OneWayMessage {
            body: bytes(10).into(),
        },
        Message::UploadStream {
            request_id: 1,
            meta: bytes(3),
            body_byte_count: 0,
            body: bytes(100),
        },
        Message::MergedBlockMetaRequest {
            request_id: 19,
            app_id: "app1".into(),
            shuffle_id: 0,
            shuffle_merge_id: 0,
            reduce_id: 0,
        },
    ]);
}

#[test]
fn protocol_suite_responses() {
    round_trip(&[
        Message::ChunkFetchSuccess {
            chunk: CHUNK,
            body: bytes(10),
        },
        Message::ChunkFetchSuccess {
            chunk: CHUNK,
            body: Bytes::new(),
        },
        Message::ChunkFetchFailure {
            chunk: CHUNK,
            error: "this is an error".into(),
        },
        Message::ChunkFetchFailure {
            chunk: CHUNK,
            error: String::new(),
        },
        Message::RpcResponse {
            request_id: 12345,
            body: Bytes::new().into(),
        },
        Message::RpcResponse {
            request_id: 12345,
            body: bytes(100).into(),
        },
        Message::RpcFailure {
            request_id: 0,
            error: "this is an error".into(),
        },
        Message::RpcFailure {
            request_id: 0,
            error: String::new(),
        },
        // A StreamResponse with a 0-byte body is followed by no raw bytes.
        Message::StreamResponse {
            stream_id: "anId".into(),
            byte_count: 0,
            body: Bytes::new(),
        },
        Message::StreamFailure {
            stream_id: "anId".into(),
            error: "this is an error".into(),
        },
        Message::MergedBlockMetaSuccess {
            request_id: 13,
            num_chunks: 2,
            body: bytes(7),
        },
    ]);
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(Bytes::from)
}

/// A request body given in 1 to 4 parts (some empty, some larger than the write queue keeps
/// inline), as a sender that keeps a large byte string apart gives it.
fn arb_body() -> impl Strategy<Value = Body> {
    prop::collection::vec(
        prop_oneof![
            4 => arb_bytes(),
            1 => (0usize..100_000).prop_map(|n| Bytes::from(vec![(n % 251) as u8; n])),
        ],
        1..5,
    )
    .prop_map(Body::from_parts)
}

fn arb_string() -> impl Strategy<Value = String> {
    ".{0,20}"
}

fn arb_chunk() -> impl Strategy<Value = StreamChunkId> {
    (any::<i64>(), any::<i32>()).prop_map(|(stream_id, chunk_index)| StreamChunkId {
        stream_id,
        chunk_index,
    })
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        arb_chunk().prop_map(|chunk| Message::ChunkFetchRequest { chunk }),
        (arb_chunk(), arb_bytes())
            .prop_map(|(chunk, body)| Message::ChunkFetchSuccess { chunk, body }),
        (arb_chunk(), arb_string())
            .prop_map(|(chunk, error)| Message::ChunkFetchFailure { chunk, error }),
        (any::<i64>(), arb_body())
            .prop_map(|(request_id, body)| Message::RpcRequest { request_id, body }),
        (any::<i64>(), arb_body())
            .prop_map(|(request_id, body)| Message::RpcResponse { request_id, body }),
        (any::<i64>(), arb_string())
            .prop_map(|(request_id, error)| Message::RpcFailure { request_id, error }),
        arb_string().prop_map(|stream_id| Message::StreamRequest { stream_id }),
        (arb_string(), arb_bytes()).prop_map(|(stream_id, body)| Message::StreamResponse {
            stream_id,
            byte_count: 0,
            body
        }),
        (arb_string(), arb_string())
            .prop_map(|(stream_id, error)| Message::StreamFailure { stream_id, error }),
        arb_body().prop_map(|body| Message::OneWayMessage { body }),
        (any::<i64>(), arb_bytes(), arb_bytes()).prop_map(|(request_id, meta, body)| {
            Message::UploadStream {
                request_id,
                meta,
                body_byte_count: 0,
                body,
            }
        }),
        (
            any::<i64>(),
            arb_string(),
            any::<i32>(),
            any::<i32>(),
            any::<i32>()
        )
            .prop_map(
                |(request_id, app_id, shuffle_id, shuffle_merge_id, reduce_id)| {
                    Message::MergedBlockMetaRequest {
                        request_id,
                        app_id,
                        shuffle_id,
                        shuffle_merge_id,
                        reduce_id,
                    }
                }
            ),
        (any::<i64>(), any::<i32>(), arb_bytes()).prop_map(|(request_id, num_chunks, body)| {
            Message::MergedBlockMetaSuccess {
                request_id,
                num_chunks,
                body,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_messages_survive_arbitrary_read_splits(
        msgs in prop::collection::vec(arb_message(), 1..20),
        splits in prop::collection::vec(1usize..64, 0..400),
    ) {
        let mut wire = BytesMut::new();
        for m in &msgs {
            m.encode(&mut wire);
        }
        let decoded = decode_all(&wire, &splits);
        let expected: Vec<_> = msgs.iter().map(normalized).collect();
        prop_assert_eq!(decoded, expected);
    }

    /// What a connection writes: the write queue's slices, taken by writes of arbitrary
    /// lengths, are the bytes `Message::encode` gives, whatever parts a body came in.
    #[test]
    fn the_write_queue_writes_bodies_in_parts_as_one(
        msgs in prop::collection::vec(arb_message(), 1..12),
        writes in prop::collection::vec(1usize..70_000, 0..200),
    ) {
        let mut expected = BytesMut::new();
        let mut queue = WriteQueue::new();
        for m in &msgs {
            m.encode(&mut expected);
            queue.push(m);
        }
        prop_assert_eq!(queue.len(), expected.len());
        let mut written = Vec::new();
        let mut i = 0;
        while !queue.is_empty() {
            queue.pull().unwrap();
            let mut slices = [std::io::IoSlice::new(&[]); 64];
            let n = queue.fill_slices(&mut slices);
            let mut budget = writes.get(i).copied().unwrap_or(usize::MAX);
            i += 1;
            let before = written.len();
            for s in &slices[..n] {
                let take = s.len().min(budget);
                written.extend_from_slice(&s[..take]);
                budget -= take;
                if budget == 0 {
                    break;
                }
            }
            queue.advance(written.len() - before);
        }
        prop_assert!(written == expected[..], "the queue wrote other bytes than encode");
    }
}
