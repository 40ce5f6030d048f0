//! Streams for endpoints: an endpoint registers a stream of chunks for the asker's connection,
//! the asker fetches them in order (`fetch_chunk`, or `open_stream("<id>_<index>")`), and
//! uploads go to a receiver registered by name (Spark: `OneForOneStreamManager`,
//! `TransportRequestHandler`, `ChunkFetchRequestHandler`).

mod common;

use std::io::Read;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rpcenv::{
    stream_chunk_id, BodySource, EndpointCtx, HandlerResult, ReplyBody, RpcAddress, RpcCallContext,
    RpcConf, RpcEndpoint, RpcEndpointRef, RpcEnv, RpcError, Upload, UploadReply,
};
use serde::{Deserialize, Serialize};

use common::{suite_conf, WAIT};

/// Tests whose memory would disturb the memory measurement run one at a time.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// The bytes of chunk `chunk` from offset `pos`, into `out`: a pattern of period 251 (a prime,
/// so pieces of power-of-two sizes do not line up with it), cheap to make and to check.
fn fill(chunk: u32, pos: u64, out: &mut [u8]) {
    let period: Vec<u8> = (0..251u64)
        .map(|p| ((p * 31 + u64::from(chunk) * 7) % 251) as u8)
        .collect();
    let mut at = (pos % 251) as usize;
    for piece in out.chunks_mut(251) {
        for b in piece {
            *b = period[at];
            at = if at == 250 { 0 } else { at + 1 };
        }
    }
}

fn chunk_bytes(chunk: u32, len: u64) -> Vec<u8> {
    let mut out = vec![0u8; len as usize];
    fill(chunk, 0, &mut out);
    out
}

/// A chunk body generated as it is written: never whole in memory.
struct Generated {
    chunk: u32,
    pos: u64,
    len: u64,
}

impl BodySource for Generated {
    fn len(&self) -> u64 {
        self.len - self.pos
    }

    fn next_piece(&mut self, max: usize) -> std::io::Result<Bytes> {
        let n = (self.len - self.pos).min(max as u64);
        let mut piece = vec![0u8; n as usize];
        fill(self.chunk, self.pos, &mut piece);
        self.pos += n;
        Ok(Bytes::from(piece))
    }
}

#[derive(Serialize, Deserialize, Debug)]
enum Open {
    /// Chunks of these sizes, in memory.
    Sizes(Vec<u64>),
    /// `chunks` chunks of `len` bytes each, generated as they are written.
    Generated { chunks: u32, len: u64 },
    /// Chunks of these sizes, registered for the app `app` instead of the asker's.
    ForApp { app: String, sizes: Vec<u64> },
}

impl rpcenv::RpcMessage for Open {}

/// Registers the stream asked for, for the asker's connection; answers its id.
struct Blocks;

impl RpcEndpoint for Blocks {
    type Message = Open;

    fn receive_and_reply(
        &mut self,
        ctx: &EndpointCtx<Open>,
        open: Open,
        reply: RpcCallContext,
    ) -> HandlerResult {
        let env = ctx.env().expect("the env is running");
        let owner = reply.stream_owner().expect("a remote ask has a connection");
        let manager = env.stream_manager();
        let id = match open {
            Open::Sizes(sizes) => manager.register_stream(
                &owner,
                sizes
                    .into_iter()
                    .enumerate()
                    .map(|(i, n)| ReplyBody::Bytes(Bytes::from(chunk_bytes(i as u32, n)))),
            ),
            Open::Generated { chunks, len } => manager.register_stream(
                &owner,
                (0..chunks).map(move |chunk| ReplyBody::source(Generated { chunk, pos: 0, len })),
            ),
            Open::ForApp { app, sizes } => manager.register_stream(
                &owner.with_app_id(&app),
                sizes
                    .into_iter()
                    .enumerate()
                    .map(|(i, n)| ReplyBody::Bytes(Bytes::from(chunk_bytes(i as u32, n)))),
            ),
        };
        reply.reply(id);
        Ok(())
    }
}

fn conf_with(pairs: &[(&str, &str)]) -> RpcConf {
    let mut c = suite_conf();
    for (k, v) in pairs {
        c.set(k, *v).unwrap();
    }
    c
}

/// A server env with the `blocks` endpoint.
fn server_with(pairs: &[(&str, &str)]) -> RpcEnv {
    let env = RpcEnv::builder("streams-server")
        .conf(conf_with(pairs))
        .build()
        .unwrap();
    env.setup_endpoint("blocks", Blocks).unwrap();
    env
}

fn client_with(pairs: &[(&str, &str)]) -> RpcEnv {
    RpcEnv::builder("streams-client")
        .client_mode(true)
        .conf(conf_with(pairs))
        .build()
        .unwrap()
}

fn blocks(client: &RpcEnv, server: &RpcEnv) -> RpcEndpointRef<Open> {
    client
        .setup_endpoint_ref(server.address().unwrap(), "blocks")
        .unwrap()
}

fn open(client: &RpcEnv, server: &RpcEnv, what: Open) -> i64 {
    blocks(client, server).ask_sync::<i64>(what).unwrap()
}

/// Waits for `cond` until `WAIT` has passed.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn transfer_text(e: RpcError) -> String {
    match e {
        RpcError::Transfer { source, .. } => source.to_string(),
        RpcError::StreamFailed { message, .. } => message,
        other => panic!("expected a transfer failure, got {other}"),
    }
}

fn read_all(mut r: impl Read) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.read_to_end(&mut out)?;
    Ok(out)
}

#[test]
fn chunks_are_fetched_in_order_and_the_stream_ends_after_the_last() {
    let (server, client) = (server_with(&[]), client_with(&[]));
    let addr = server.address().unwrap().clone();
    let sizes = [10u64, 20_000, 0, 300];
    let id = open(&client, &server, Open::Sizes(sizes.to_vec()));
    assert_eq!(server.stream_manager().stream_count(), 1);
    for (i, n) in sizes.iter().enumerate() {
        let chunk = client.fetch_chunk(&addr, id, i as i32).unwrap();
        assert_eq!(&chunk[..], &chunk_bytes(i as u32, *n)[..], "chunk {i}");
    }
    assert_eq!(server.stream_manager().stream_count(), 0);
    let gone = transfer_text(client.fetch_chunk(&addr, id, 4).unwrap_err());
    assert!(gone.contains("Unknown stream ID."), "{gone}");
    client.shutdown();
    server.shutdown();
}

#[test]
fn an_out_of_order_chunk_is_refused_with_sparks_text() {
    let (server, client) = (server_with(&[]), client_with(&[]));
    let addr = server.address().unwrap().clone();
    let id = open(&client, &server, Open::Sizes(vec![5, 5, 5]));
    let err = transfer_text(client.fetch_chunk(&addr, id, 1).unwrap_err());
    assert!(
        err.contains("Received out-of-order chunk index 1 (expected 0)"),
        "{err}"
    );
    assert_eq!(
        &client.fetch_chunk(&addr, id, 0).unwrap()[..],
        &chunk_bytes(0, 5)[..]
    );
    let again = transfer_text(client.fetch_chunk(&addr, id, 0).unwrap_err());
    assert!(
        again.contains("Received out-of-order chunk index 0 (expected 1)"),
        "{again}"
    );
    // A refusal leaves the stream where it was.
    assert_eq!(
        &client.fetch_chunk(&addr, id, 1).unwrap()[..],
        &chunk_bytes(1, 5)[..]
    );
    client.shutdown();
    server.shutdown();
}

#[test]
fn an_unknown_stream_is_refused() {
    let (server, client) = (server_with(&[]), client_with(&[]));
    let addr = server.address().unwrap().clone();
    let err = transfer_text(client.fetch_chunk(&addr, 12_345, 0).unwrap_err());
    assert!(err.contains("Unknown stream ID."), "{err}");
    let err = transfer_text(client.open_stream(&addr, "12345_0").unwrap_err());
    assert!(err.contains("Unknown stream ID."), "{err}");
    // An id that names no chunk is not found, with Spark's text.
    let err = transfer_text(client.open_stream(&addr, "no-such-stream").unwrap_err());
    assert_eq!(err, "Stream 'no-such-stream' was not found.");
    // The connection stays usable after refusals.
    let id = open(&client, &server, Open::Sizes(vec![3]));
    assert_eq!(
        &client.fetch_chunk(&addr, id, 0).unwrap()[..],
        &chunk_bytes(0, 3)[..]
    );
    client.shutdown();
    server.shutdown();
}

#[test]
fn a_chunk_is_served_as_a_stream_by_id_and_index() {
    let (server, client) = (server_with(&[]), client_with(&[]));
    let addr = server.address().unwrap().clone();
    let sizes = [70_000u64, 1, 0, 2 << 20];
    let id = open(&client, &server, Open::Sizes(sizes.to_vec()));
    // Chunk 0 as a stream, 1 as a chunk, 2 (empty) and 3 as streams: one order for both forms.
    let r = client.open_stream(&addr, &stream_chunk_id(id, 0)).unwrap();
    assert_eq!(r.stream_id(), format!("{id}_0"));
    assert_eq!(r.len(), sizes[0]);
    assert_eq!(read_all(r).unwrap(), chunk_bytes(0, sizes[0]));
    assert_eq!(
        &client.fetch_chunk(&addr, id, 1).unwrap()[..],
        &chunk_bytes(1, 1)[..]
    );
    let empty = client.open_chunk_stream(&addr, id, 2).unwrap();
    assert_eq!(empty.stream_id(), format!("{id}_2"));
    assert!(empty.is_empty());
    assert!(read_all(empty).unwrap().is_empty());
    let last = client.runtime().block_on(async {
        use tokio::io::AsyncReadExt;
        let mut r = client.open_chunk_stream_async(&addr, id, 3).await.unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        out
    });
    assert_eq!(last, chunk_bytes(3, sizes[3]));
    assert_eq!(server.stream_manager().stream_count(), 0);
    client.shutdown();
    server.shutdown();
}

const AUTH: [(&str, &str); 2] = [("authenticate", "true"), ("authenticate.secret", "good")];

#[test]
fn a_stream_registered_for_another_app_is_refused() {
    let server = server_with(&AUTH);
    let client = client_with(&AUTH);
    let addr = server.address().unwrap().clone();
    // The asker's own stream: its connection authenticated as the env's app id.
    let own = open(&client, &server, Open::Sizes(vec![8]));
    assert_eq!(
        &client.fetch_chunk(&addr, own, 0).unwrap()[..],
        &chunk_bytes(0, 8)[..]
    );
    // A stream registered for another app is refused to this one, on both request forms.
    let other = open(
        &client,
        &server,
        Open::ForApp {
            app: "other-app".into(),
            sizes: vec![8],
        },
    );
    let expected =
        format!("Client sparkSaslUser not authorized to read stream {other} (app other-app).");
    let err = transfer_text(client.fetch_chunk(&addr, other, 0).unwrap_err());
    assert!(err.contains(&expected), "{err}");
    let err = transfer_text(
        client
            .open_stream(&addr, &stream_chunk_id(other, 0))
            .unwrap_err(),
    );
    assert!(err.contains(&expected), "{err}");
    // A peer of another app never gets a connection: authentication proves the app id.
    let intruder = client_with(&[
        ("authenticate", "true"),
        ("authenticate.secret", "good"),
        ("authenticate.appId", "other-app"),
    ]);
    let refused = intruder.fetch_chunk(&addr, other, 0).unwrap_err();
    assert!(
        matches!(refused, RpcError::Connection { .. }),
        "expected a failed connection, got {refused}"
    );
    intruder.shutdown();
    client.shutdown();
    server.shutdown();
}

#[test]
fn closing_the_connection_releases_its_streams() {
    let server = server_with(&[]);
    let addr = server.address().unwrap().clone();
    let first = client_with(&[]);
    let id = open(&first, &server, Open::Sizes(vec![4, 4, 4]));
    first.fetch_chunk(&addr, id, 0).unwrap();
    assert_eq!(server.stream_manager().stream_count(), 1);
    first.shutdown();
    first.await_termination().unwrap();
    wait_until("the stream is released", || {
        server.stream_manager().stream_count() == 0
    });
    // A new connection cannot fetch it.
    let second = client_with(&[]);
    let err = transfer_text(second.fetch_chunk(&addr, id, 1).unwrap_err());
    assert!(err.contains("Unknown stream ID."), "{err}");
    second.shutdown();
    server.shutdown();
}

#[test]
fn at_the_chunk_cap_the_server_closes_the_connection() {
    let _heavy = heavy();
    // The server's byte budget counts the unwritten part of a body: it must exceed the chunk,
    // so that the server still reads requests while chunk 0 waits for the reader.
    let server = server_with(&[
        ("rpc.io.maxChunksBeingTransferred", "1"),
        ("rpc.io.maxQueuedBytesPerConnection", "256m"),
    ]);
    let client = client_with(&[("rpc.io.maxQueuedBytesPerConnection", "1m")]);
    let addr = server.address().unwrap().clone();
    let len = 64u64 << 20;
    let id = open(&client, &server, Open::Generated { chunks: 2, len });
    // Chunk 0 is being written while the reader does not read: the one chunk the cap allows.
    let mut unread = client.open_stream(&addr, &stream_chunk_id(id, 0)).unwrap();
    assert_eq!(server.stream_manager().chunks_being_transferred(), 1);
    // The next request meets the cap: the server closes the connection instead of serving it
    // (asked from another thread: the client reads nothing more until chunk 0 is read).
    let fetch = {
        let (client, addr) = (client.clone(), addr.clone());
        std::thread::spawn(move || client.fetch_chunk(&addr, id, 1))
    };
    wait_until(
        "the server closed the connection and released its stream",
        || server.stream_manager().stream_count() == 0 && server.stats().connections_in == 0,
    );
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0u64;
    let end = loop {
        match unread.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => read += n as u64,
            Err(e) => break Err(e),
        }
    };
    assert!(
        end.is_err() && read < len,
        "chunk 0 must end with the connection ({read} of {len} bytes read)"
    );
    assert!(fetch.join().unwrap().is_err(), "chunk 1 was not served");
    assert_eq!(server.stream_manager().chunks_being_transferred(), 0);
    client.shutdown();
    server.shutdown();
}

/// A receiver that hands each upload to the test and answers `"<meta>:<len>"`, or fails when
/// the metadata says so.
fn sink(seen: mpsc::Sender<Upload>) -> impl Fn(Upload, UploadReply) + Send + Sync + 'static {
    let seen = Mutex::new(seen);
    move |upload: Upload, reply: UploadReply| {
        if upload.meta.starts_with(b"fail") {
            reply.fail("Destination refused the upload");
            return;
        }
        let answer = format!(
            "{}:{}",
            String::from_utf8_lossy(&upload.meta),
            upload.body.len()
        );
        seen.lock().unwrap().send(upload).unwrap();
        reply.ok(Bytes::from(answer));
    }
}

#[test]
fn uploads_reach_their_receiver_and_its_answer_comes_back() {
    let server = server_with(&[]);
    let client = client_with(&[]);
    let addr = server.address().unwrap().clone();
    let (tx, rx) = mpsc::channel();
    server.register_upload_receiver("sink", sink(tx)).unwrap();
    assert!(matches!(
        server.register_upload_receiver("sink", |_: Upload, r: UploadReply| r.ok(Bytes::new())),
        Err(RpcError::UploadReceiverExists { .. })
    ));
    // Spark's RpcIntegrationSuite buffers: 100000 bytes (byte i = i), 100, empty, 512 KiB.
    let large: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    let bodies = [
        ("largeBuffer", large),
        ("smallBuffer", vec![7u8; 100]),
        ("emptyBuffer", Vec::new()),
        ("file", chunk_bytes(9, 512 << 10)),
    ];
    for (name, body) in &bodies {
        let answer = client
            .upload_stream(
                &addr,
                "sink",
                Bytes::from(name.as_bytes().to_vec()),
                Bytes::from(body.clone()),
            )
            .unwrap();
        assert_eq!(&answer[..], format!("{name}:{}", body.len()).as_bytes());
        let got = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(got.receiver, "sink");
        assert_eq!(&got.meta[..], name.as_bytes());
        assert_eq!(&got.body[..], &body[..], "{name} arrives byte-equal");
        assert_eq!(got.app_id, None);
    }
    // A refusal by the receiver fails the upload with its text; the connection stays usable.
    let err = client
        .upload_stream(
            &addr,
            "sink",
            Bytes::from_static(b"fail"),
            Bytes::from_static(b"x"),
        )
        .unwrap_err();
    assert!(transfer_text(err).contains("Destination refused the upload"));
    let err = client
        .upload_stream(&addr, "nope", Bytes::new(), Bytes::from_static(b"x"))
        .unwrap_err();
    assert!(transfer_text(err).contains("No upload receiver called 'nope'"));
    let answer = client
        .upload_stream(
            &addr,
            "sink",
            Bytes::from_static(b"again"),
            Bytes::from_static(b"xy"),
        )
        .unwrap();
    assert_eq!(&answer[..], b"again:2");
    assert!(server.remove_upload_receiver("sink"));
    client.shutdown();
    server.shutdown();
}

#[test]
fn an_upload_over_the_size_limit_is_refused() {
    let _heavy = heavy();
    let server = server_with(&[("rpc.message.maxSize", "1m")]);
    let (tx, rx) = mpsc::channel();
    server.register_upload_receiver("sink", sink(tx)).unwrap();
    let addr = server.address().unwrap().clone();
    let body = Bytes::from(vec![1u8; 2 << 20]);
    // The sender's own limit refuses it before anything is sent.
    let small = client_with(&[("rpc.message.maxSize", "1m")]);
    match small.upload_stream(&addr, "sink", Bytes::new(), body.clone()) {
        Err(RpcError::MessageTooLarge { size, max }) => {
            assert_eq!((size, max), (2 + 4 + (2 << 20), 1 << 20));
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    // A sender with a larger limit: the server refuses the announced length by closing the
    // connection, without reading the body into memory; the receiver never sees it.
    let large = client_with(&[("rpc.message.maxSize", "4m")]);
    let err = large
        .upload_stream(&addr, "sink", Bytes::new(), body)
        .unwrap_err();
    assert!(matches!(err, RpcError::Transfer { .. }), "{err}");
    assert!(rx.try_recv().is_err(), "the receiver got nothing");
    // The server goes on serving.
    let answer = small
        .upload_stream(
            &addr,
            "sink",
            Bytes::from_static(b"ok"),
            Bytes::from_static(b"1"),
        )
        .unwrap();
    assert_eq!(&answer[..], b"ok:1");
    small.shutdown();
    large.shutdown();
    server.shutdown();
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// A stream far larger than the connection's byte budget, read slowly: the connection stops
/// reading while the reader is behind, so the process's peak memory (server and client are both
/// here) does not follow the stream's length. (The peak is a few times the budget, not the
/// budget: the connection's task moves between IO threads, and each thread's malloc arena keeps
/// its own high-water mark.)
#[test]
fn a_large_stream_read_slowly_keeps_memory_bounded() {
    let _heavy = heavy();
    let server = server_with(&[]);
    let client = client_with(&[]);
    let addr = server.address().unwrap().clone();
    let len = 512u64 << 20;
    let id = open(&client, &server, Open::Generated { chunks: 1, len });
    // Reset the peak (VmHWM) to the current RSS, so the peak below is this transfer's.
    std::fs::write("/proc/self/clear_refs", "5").unwrap();
    let before = status_kib("VmRSS:");
    let mut reader = client.open_stream(&addr, &stream_chunk_id(id, 0)).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut expected = vec![0u8; 64 << 10];
    let mut pos = 0u64;
    let mut mismatch = None;
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        fill(0, pos, &mut expected[..n]);
        if mismatch.is_none() && buf[..n] != expected[..n] {
            mismatch = Some(pos);
        }
        pos += n as u64;
        // A slow reader: the connection must stop reading rather than buffer what it is sent.
        if pos.is_multiple_of(1 << 20) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let growth_mib = status_kib("VmHWM:").saturating_sub(before) / 1024;
    assert_eq!(pos, len);
    assert_eq!(mismatch, None, "the piece at this offset differs");
    // Measured 55-79 MiB (133 once, with the other tests of this file running beside it); a
    // body buffered whole would be over 512.
    assert!(
        growth_mib < (len >> 20) * 3 / 8,
        "peak memory grew by {growth_mib} MiB for a {} MiB stream",
        len >> 20
    );
    eprintln!(
        "a {} MiB stream read slowly: peak memory grew by {growth_mib} MiB",
        len >> 20
    );
    client.shutdown();
    server.shutdown();
}

/// `open_stream` needs an address the client can connect to: a closed port fails with the
/// connection's error, not a transfer error.
#[test]
fn a_fetch_from_an_env_that_is_gone_fails_with_the_connection_error() {
    let server = server_with(&[]);
    let addr: RpcAddress = server.address().unwrap().clone();
    server.shutdown();
    server.await_termination().unwrap();
    let client = client_with(&[]);
    let err = client.fetch_chunk(&addr, 1, 0).unwrap_err();
    assert!(matches!(err, RpcError::Connection { .. }), "{err}");
    client.shutdown();
}

/// Streams travel over the connection an ask came over: a client-mode env's fetch reuses the
/// pooled connection its ask opened, so the stream it registered is found.
#[test]
fn the_owner_is_the_connection_the_ask_came_over() {
    let (server, client) = (server_with(&[]), client_with(&[]));
    let addr = server.address().unwrap().clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    server
        .register_upload_receiver("who", move |u: Upload, r: UploadReply| {
            seen2.lock().unwrap().push(u.peer);
            r.ok(Bytes::new())
        })
        .unwrap();
    let id = open(&client, &server, Open::Sizes(vec![1]));
    client
        .upload_stream(&addr, "who", Bytes::new(), Bytes::new())
        .unwrap();
    client.fetch_chunk(&addr, id, 0).unwrap();
    let stats = server.stats();
    assert_eq!(
        stats.connections_in, 1,
        "one connection for asks, uploads and fetches"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    client.shutdown();
    server.shutdown();
}

#[derive(Serialize, Deserialize, Debug)]
enum Late {
    /// Held unanswered until `Register`.
    Hold,
    /// Registers a stream for the held ask's connection; answers its id.
    Register,
}

impl rpcenv::RpcMessage for Late {}

/// Holds an ask, and registers a stream for its connection only when told to: an endpoint
/// that answers after its asker has gone.
struct LateBlocks {
    held: Option<RpcCallContext>,
    on_hold: mpsc::Sender<()>,
}

impl RpcEndpoint for LateBlocks {
    type Message = Late;

    fn receive_and_reply(
        &mut self,
        ctx: &EndpointCtx<Late>,
        msg: Late,
        reply: RpcCallContext,
    ) -> HandlerResult {
        match msg {
            Late::Hold => {
                self.held = Some(reply);
                let _ = self.on_hold.send(());
            }
            Late::Register => {
                let held = self.held.take().expect("an ask is held");
                let owner = held.stream_owner().expect("a remote ask has a connection");
                let env = ctx.env().expect("the env is running");
                let id = env.stream_manager().register_stream(
                    &owner,
                    (0..2u32).map(|i| ReplyBody::Bytes(Bytes::from(chunk_bytes(i, 16)))),
                );
                held.reply(id);
                reply.reply(id);
            }
        }
        Ok(())
    }
}

/// A stream registered for a connection that has already closed (the ask that asked for it was
/// answered after the asker went) could never be read, and nothing would release it: it is
/// not kept.
#[test]
fn a_stream_registered_after_its_connection_closed_is_not_kept() {
    let server = server_with(&[]);
    let (on_hold, held) = mpsc::channel();
    let late = server
        .setup_endpoint(
            "late",
            LateBlocks {
                held: None,
                on_hold,
            },
        )
        .unwrap();
    let client = client_with(&[]);
    let remote: RpcEndpointRef<Late> = client
        .setup_endpoint_ref(server.address().unwrap(), "late")
        .unwrap();
    let asker = std::thread::spawn(move || remote.ask_sync::<i64>(Late::Hold));
    held.recv_timeout(WAIT)
        .expect("the ask reached the endpoint");
    client.shutdown();
    assert!(asker.join().unwrap().is_err(), "the asker went unanswered");
    wait_until("the server saw the connection close", || {
        server.stats().connections_in == 0
    });
    late.ask_sync::<i64>(Late::Register).unwrap();
    assert_eq!(
        server.stream_manager().stream_count(),
        0,
        "a stream was kept for a closed connection"
    );
    server.shutdown();
}
