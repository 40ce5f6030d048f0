//! Helpers shared by the behaviour tests.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rpcenv_transport::{
    BodySource, ReplyBody, RpcHandler, RpcResponder, TransportClient, TransportClientFactory,
    TransportConf, TransportError, TransportServer,
};

/// Generous deadline for conditions that should hold quickly.
pub(crate) const DEADLINE: Duration = Duration::from_secs(20);

/// Wait (polling) until `cond` holds; panics with `what` after the deadline.
pub(crate) async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Await `fut` with the generous deadline.
pub(crate) async fn within<T>(fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("operation did not finish within the deadline")
}

/// Enable logs when RUST_LOG is set.
pub(crate) fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Byte `i` of the test pattern.
pub(crate) fn pattern(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<_>>())
}

/// The handler of Spark's RpcIntegrationSuite (plus streams and chunks for the stream suites).
#[derive(Default)]
pub(crate) struct TestHandler {
    pub one_way: Mutex<Vec<String>>,
    pub active: Mutex<Vec<TransportClient>>,
    pub inactive: Mutex<Vec<TransportClient>>,
    pub errors: Mutex<Vec<TransportError>>,
    /// Requests whose answer is withheld (to test timeouts and connection loss).
    pub withheld: Mutex<Vec<RpcResponder>>,
}

impl RpcHandler for TestHandler {
    fn receive(&self, _client: &TransportClient, message: Bytes, responder: RpcResponder) {
        let Ok(msg) = std::str::from_utf8(&message).map(str::to_owned) else {
            responder.respond(message);
            return;
        };
        let (command, arg) = msg.split_once('/').unwrap_or((msg.as_str(), ""));
        match command {
            "hello" => responder.respond(Bytes::from(format!("Hello, {arg}!"))),
            "return error" => responder.fail(format!("Returned: {arg}")),
            "throw error" => panic!("Thrown: {arg}"),
            "withhold" => self.withheld.lock().unwrap().push(responder),
            "later" => {
                std::thread::spawn(move || {
                    responder.respond(Bytes::from("answered from a thread"))
                });
            }
            "drop" => drop(responder),
            _ => responder.respond(message),
        }
    }

    fn receive_one_way(&self, _client: &TransportClient, message: Bytes) {
        self.one_way
            .lock()
            .unwrap()
            .push(String::from_utf8(message.to_vec()).unwrap());
    }

    fn receive_stream(
        &self,
        _client: &TransportClient,
        meta: Bytes,
        body: Bytes,
        responder: RpcResponder,
    ) {
        let meta = String::from_utf8(meta.to_vec()).unwrap();
        let name = meta.rsplit('/').next().unwrap().to_string();
        if meta.starts_with("fail/exception-oncomplete/") {
            responder.fail("Failure post-processing");
            return;
        }
        let expected = upload_body(&name);
        if body != expected {
            responder.fail(format!(
                "body of {name} differs: {} vs {} bytes",
                body.len(),
                expected.len()
            ));
            return;
        }
        responder.respond(Bytes::from(name));
    }

    fn open_stream(&self, _client: &TransportClient, stream_id: &str) -> Result<Bytes, String> {
        match stream_id {
            "emptyBuffer" => Ok(Bytes::new()),
            "smallBuffer" => Ok(pattern(100)),
            "largeBuffer" => Ok(pattern(100_000)),
            _ => Err(format!("Stream '{stream_id}' was not found.")),
        }
    }

    /// `sourced/<n>`: the pattern of n bytes, produced a piece at a time as it is written.
    fn open_stream_body(
        &self,
        client: &TransportClient,
        stream_id: &str,
    ) -> Result<ReplyBody, String> {
        match stream_id
            .strip_prefix("sourced/")
            .and_then(|n| n.parse().ok())
        {
            Some(n) => Ok(ReplyBody::source(PatternSource { next: 0, end: n })),
            None => self.open_stream(client, stream_id).map(ReplyBody::Bytes),
        }
    }

    /// Stream 2: chunk i is the pattern of i * 100,000 bytes, produced a piece at a time.
    fn get_chunk_body(
        &self,
        client: &TransportClient,
        stream_id: i64,
        chunk_index: i32,
    ) -> Result<ReplyBody, String> {
        if stream_id == 2 && chunk_index >= 0 {
            let end = chunk_index as u64 * 100_000;
            return Ok(ReplyBody::source(PatternSource { next: 0, end }));
        }
        self.get_chunk(client, stream_id, chunk_index)
            .map(ReplyBody::Bytes)
    }

    fn get_chunk(
        &self,
        _client: &TransportClient,
        stream_id: i64,
        chunk_index: i32,
    ) -> Result<Bytes, String> {
        match (stream_id, chunk_index) {
            (1, 0) => Ok(pattern(100_000)),
            (1, 1) => Ok(pattern(1024 - 25)),
            _ => Err("Chunk was not found".to_string()),
        }
    }

    fn channel_active(&self, client: &TransportClient) {
        self.active.lock().unwrap().push(client.clone());
    }

    fn channel_inactive(&self, client: &TransportClient) {
        self.inactive.lock().unwrap().push(client.clone());
    }

    fn exception_caught(&self, error: &TransportError, _client: &TransportClient) {
        self.errors.lock().unwrap().push(error.clone());
    }
}

/// The upload bodies of RpcIntegrationSuite.
pub(crate) fn upload_body(name: &str) -> Bytes {
    match name {
        "largeBuffer" => Bytes::from((0..100_000).map(|i| i as u8).collect::<Vec<_>>()),
        "smallBuffer" => Bytes::from((0..100).map(|i| i as u8).collect::<Vec<_>>()),
        "emptyBuffer" => Bytes::new(),
        "file" => pattern(512 * 1024),
        other => panic!("unknown upload {other}"),
    }
}

/// A server on 127.0.0.1:0 with `handler`.
pub(crate) async fn server_with(
    conf: TransportConf,
    handler: Arc<dyn RpcHandler>,
) -> TransportServer {
    TransportServer::bind(conf, "127.0.0.1", 0, handler)
        .await
        .expect("bind")
}

/// A server with a fresh TestHandler, and the handler.
pub(crate) async fn test_server() -> (TransportServer, Arc<TestHandler>) {
    let handler = Arc::new(TestHandler::default());
    (
        server_with(TransportConf::default(), handler.clone()).await,
        handler,
    )
}

/// A client of `server` from a fresh factory (whose handler is a TestHandler too).
pub(crate) async fn client_of(
    server: &TransportServer,
) -> (TransportClientFactory, TransportClient) {
    let factory =
        TransportClientFactory::new(TransportConf::default(), Arc::new(TestHandler::default()));
    let client = factory
        .create_client("127.0.0.1", server.port())
        .await
        .expect("connect");
    (factory, client)
}

/// [`pattern`] generated a piece at a time.
pub(crate) struct PatternSource {
    next: u64,
    end: u64,
}

impl BodySource for PatternSource {
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
