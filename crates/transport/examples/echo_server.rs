//! An echo server speaking Spark's transport protocol, for interop tests.
//!
//! `echo_server [--host H] [--port P] [security flags]` (defaults 127.0.0.1 and 0). The first
//! stdout line is `listening on HOST:PORT`; it runs until killed.
//!
//! Security flags: `--secret S [--cipher ctr|gcm] [--auth-version 1|2] [--app-id ID]` turns on
//! Spark's AES authentication and session cipher (app id `sparkSaslUser` by default);
//! `--tls-cert PEM --tls-key PEM` turns on TLS, and `--tls-ca PEM` then requires client
//! certificates signed by that CA. With both, TLS encrypts and auth only authenticates.
//!
//! It answers:
//! - RpcRequest: RpcResponse with the same bytes;
//! - OneWayMessage: counted;
//! - StreamRequest `bytes/<n>`: StreamResponse of n bytes, byte i = `i % 251`; any other id:
//!   StreamFailure `Stream '<id>' was not found.`;
//! - ChunkFetchRequest(stream 1, chunk i): ChunkFetchSuccess of i*1000 bytes of the same pattern;
//!   any other stream: ChunkFetchFailure;
//! - UploadStream: RpcResponse with the uploaded body.
//!
//! Streams and chunks are capped at 64 MiB of data; above that the failure says so.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rpcenv_transport::{
    BodySource, ReplyBody, RpcHandler, RpcResponder, TransportClient, TransportConf,
    TransportServer,
};

#[path = "support/security.rs"]
mod security;

const MAX_DATA: u64 = 64 << 20;

#[derive(Default)]
struct Echo {
    one_way: AtomicU64,
}

fn pattern(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<_>>())
}

/// The pattern generated a piece at a time as the connection writes it (never whole in memory).
struct Pattern {
    next: u64,
    end: u64,
}

impl BodySource for Pattern {
    fn len(&self) -> u64 {
        self.end - self.next
    }

    fn next_piece(&mut self, max: usize) -> std::io::Result<Bytes> {
        let n = (self.end - self.next).min(max as u64);
        let piece: Vec<u8> = (self.next..self.next + n)
            .map(|i| (i % 251) as u8)
            .collect();
        self.next += n;
        Ok(Bytes::from(piece))
    }
}

impl RpcHandler for Echo {
    fn receive(&self, _client: &TransportClient, message: Bytes, responder: RpcResponder) {
        responder.respond(message);
    }

    fn receive_one_way(&self, _client: &TransportClient, _message: Bytes) {
        let n = self.one_way.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(count = n, "one-way message");
    }

    fn receive_stream(
        &self,
        _client: &TransportClient,
        _meta: Bytes,
        body: Bytes,
        responder: RpcResponder,
    ) {
        responder.respond(body);
    }

    fn open_stream_body(
        &self,
        _client: &TransportClient,
        stream_id: &str,
    ) -> Result<ReplyBody, String> {
        let not_found = || format!("Stream '{stream_id}' was not found.");
        let n: u64 = stream_id
            .strip_prefix("bytes/")
            .and_then(|n| n.parse().ok())
            .ok_or_else(not_found)?;
        if n > MAX_DATA {
            return Err(format!(
                "Stream '{stream_id}' asks for {n} bytes, more than the 64 MiB this server serves."
            ));
        }
        Ok(ReplyBody::source(Pattern { next: 0, end: n }))
    }

    fn get_chunk(
        &self,
        _client: &TransportClient,
        stream_id: i64,
        chunk_index: i32,
    ) -> Result<Bytes, String> {
        if stream_id != 1 {
            return Err(format!("Stream {stream_id} was not found."));
        }
        if chunk_index < 0 {
            return Err(format!("Chunk index {chunk_index} is negative."));
        }
        let n = chunk_index as u64 * 1000;
        if n > MAX_DATA {
            return Err(format!(
                "Chunk {chunk_index} would be {n} bytes, more than the 64 MiB this server serves."
            ));
        }
        Ok(pattern(n as usize))
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: echo_server [--host HOST] [--port PORT] {}",
        security::USAGE
    );
    std::process::exit(2);
}

#[tokio::main]
async fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let (mut host, mut port) = ("127.0.0.1".to_string(), 0u16);
    let mut sec = security::SecurityArgs::default();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--host" => host = args.next().unwrap_or_else(|| usage()),
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            flag => match sec.take(flag, &mut args) {
                Ok(true) => {}
                Ok(false) => usage(),
                Err(e) => {
                    eprintln!("echo_server: {e}");
                    usage()
                }
            },
        }
    }
    let bootstraps = match sec.server_bootstraps() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("echo_server: {e}");
            std::process::exit(1);
        }
    };
    let server = match TransportServer::bind_with_bootstraps(
        TransportConf::default(),
        &host,
        port,
        Arc::new(Echo::default()),
        bootstraps,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("echo_server: {e}");
            std::process::exit(1);
        }
    };
    let addr = server.local_addr();
    let mut out = std::io::stdout();
    let _ = writeln!(out, "listening on {}:{}", addr.ip(), addr.port());
    let _ = out.flush();
    eprintln!("echo_server: {}", sec.describe());
    std::future::pending::<()>().await;
}
