//! Criterion micro-benchmarks of rpcenv's hot paths:
//! - frame encode / decode (the transport's `Message` and `FrameDecoder`),
//! - envelope encode / decode (the request and reply bodies an env writes and reads),
//! - inbox post + process (one-way sends to a local endpoint, until it has handled them),
//! - local ask round trip (ask + reply through a local endpoint).
//!
//! `cargo bench -p rpcenv --bench hot_paths` (add `-- --quick` for a short run).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use criterion::{criterion_main, BatchSize, Criterion, Throughput};
use rpcenv::codec::bench::{decode_envelope, decode_reply_value, encode_envelope, encode_reply};
use rpcenv::{EndpointCtx, HandlerResult, RpcAddress, RpcCallContext, RpcEndpoint, RpcEnv};
use rpcenv_transport::{FrameDecoder, Message};

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    let small = Message::RpcRequest {
        request_id: 42,
        body: Bytes::from_static(&[7; 64]).into(),
    };
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_rpc_request_64B", |b| {
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            out.clear();
            small.encode(&mut out);
            std::hint::black_box(&out);
        })
    });
    // 64 frames back to back, decoded from one buffer (what one read of a busy connection holds).
    let mut batch = BytesMut::new();
    for _ in 0..64 {
        small.encode(&mut batch);
    }
    let batch = batch.freeze();
    g.throughput(Throughput::Elements(64));
    g.bench_function("decode_64_rpc_requests_64B", |b| {
        let mut decoder = FrameDecoder::new(usize::MAX);
        b.iter_batched(
            || BytesMut::from(&batch[..]),
            |mut buf| {
                let mut n = 0;
                while let Some(item) = decoder.decode(&mut buf).expect("valid frames") {
                    std::hint::black_box(item);
                    n += 1;
                }
                assert_eq!(n, 64);
            },
            BatchSize::SmallInput,
        )
    });
    let large = Message::RpcRequest {
        request_id: 7,
        body: Bytes::from(vec![7u8; 1 << 20]).into(),
    };
    let large_frame = large.to_bytes();
    g.throughput(Throughput::Bytes(large_frame.len() as u64));
    g.bench_function("decode_rpc_request_1MiB", |b| {
        let mut decoder = FrameDecoder::new(usize::MAX);
        b.iter_batched(
            || BytesMut::from(&large_frame[..]),
            |mut buf| {
                let mut items = Vec::with_capacity(1);
                while let Some(item) = decoder.decode(&mut buf).expect("valid frame") {
                    items.push(item);
                }
                // Dropped after the measurement: freeing 1 MiB is not the decoder's cost.
                (buf, items)
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Payload(#[serde(with = "serde_bytes_compat")] Vec<u8>);

/// `Vec<u8>` as a byte string (as `bytes::Bytes` or `serde_bytes` would write it).
mod serde_bytes_compat {
    pub(crate) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
        }
        d.deserialize_bytes(V)
    }
}

fn envelopes(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    g.throughput(Throughput::Elements(1));
    let sender = RpcAddress::new("127.0.0.1", 40001);
    let receiver = RpcAddress::new("127.0.0.1", 40002);
    let message = Payload(vec![7; 16]);
    g.bench_function("encode_request_16B", |b| {
        b.iter(|| encode_envelope(Some(&sender), Some(&receiver), "echo", &message).unwrap())
    });
    let body = encode_envelope(Some(&sender), Some(&receiver), "echo", &message).unwrap();
    g.bench_function("decode_request_16B", |b| {
        b.iter(|| decode_envelope::<Payload>(&body).unwrap())
    });
    g.bench_function("encode_reply_16B", |b| b.iter(|| encode_reply(&message)));
    let reply = encode_reply(&message);
    g.bench_function("decode_reply_16B", |b| {
        b.iter(|| decode_reply_value::<Payload>(&reply).unwrap())
    });
    g.finish();
}

/// Counts one-way messages and signals when a target is reached.
struct Count {
    seen: u64,
    shared: Arc<Seen>,
}

#[derive(Default)]
struct Seen {
    count: AtomicU64,
    target: AtomicU64,
    lock: Mutex<()>,
    cond: Condvar,
}

impl RpcEndpoint for Count {
    type Message = u64;
    fn receive(&mut self, _: &EndpointCtx<u64>, _: u64) -> HandlerResult {
        self.seen += 1;
        self.shared.count.store(self.seen, Ordering::Release);
        if self.seen == self.shared.target.load(Ordering::Acquire) {
            let _g = self.shared.lock.lock().unwrap();
            self.shared.cond.notify_all();
        }
        Ok(())
    }
}

struct Echo;

impl RpcEndpoint for Echo {
    type Message = u64;
    fn receive_and_reply(
        &mut self,
        _: &EndpointCtx<u64>,
        n: u64,
        reply: RpcCallContext,
    ) -> HandlerResult {
        reply.reply(n);
        Ok(())
    }
}

fn local(c: &mut Criterion) {
    let env = RpcEnv::builder("bench").client_mode(true).build().unwrap();
    let seen = Arc::new(Seen::default());
    let count = env
        .setup_endpoint(
            "count",
            Count {
                seen: 0,
                shared: seen.clone(),
            },
        )
        .unwrap();
    let echo = env.setup_endpoint("echo", Echo).unwrap();
    let mut g = c.benchmark_group("local");
    // Per message: post to the inbox from this thread, processed by a message loop thread; the
    // time runs until the endpoint has handled all of them.
    g.throughput(Throughput::Elements(1));
    g.bench_function("inbox_post_process", |b| {
        b.iter_custom(|iters| {
            let target = seen.count.load(Ordering::Acquire) + iters;
            seen.target.store(target, Ordering::Release);
            let t0 = Instant::now();
            for i in 0..iters {
                count.send(i).unwrap();
            }
            let mut guard = seen.lock.lock().unwrap();
            while seen.count.load(Ordering::Acquire) < target {
                guard = seen
                    .cond
                    .wait_timeout(guard, Duration::from_millis(1))
                    .unwrap()
                    .0;
            }
            t0.elapsed()
        })
    });
    g.bench_function("ask_round_trip", |b| {
        b.iter(|| echo.ask_sync::<u64>(7).unwrap())
    });
    g.finish();
    env.shutdown();
}

mod group {
    // The macro defines a public function without docs.
    #![allow(missing_docs)]
    use super::{envelopes, frames, local};
    criterion::criterion_group!(benches, frames, envelopes, local);
}
criterion_main!(group::benches);
