//! Drives a Spark `TransportServer` (the interop harness's `Interop server`, an echo handler)
//! with our `TransportClient`. `interop_client --port P [--host H]`; prints `ok <check>` per
//! passed check and exits 1 on the first mismatch.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rpcenv_transport::{NoOpRpcHandler, TransportClientFactory, TransportConf, TransportError};

fn pattern(n: usize) -> Bytes {
    Bytes::from((0..n).map(|i| (i % 251) as u8).collect::<Vec<_>>())
}

fn check(cond: bool, what: &str) {
    if !cond {
        println!("MISMATCH {what}");
        std::process::exit(1);
    }
    println!("ok {what}");
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(30), f).await {
        Ok(v) => v,
        Err(_) => {
            println!("MISMATCH timed out");
            std::process::exit(1);
        }
    }
}

#[tokio::main]
async fn main() {
    let (mut host, mut port) = ("127.0.0.1".to_string(), None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--host" => host = args.next().expect("--host HOST"),
            "--port" => port = args.next().and_then(|p| p.parse::<u16>().ok()),
            _ => {
                eprintln!("usage: interop_client --port PORT [--host HOST]");
                std::process::exit(2);
            }
        }
    }
    let port = port.expect("--port PORT");
    let factory = TransportClientFactory::new(TransportConf::default(), Arc::new(NoOpRpcHandler));
    let c = within(factory.create_client(&host, port))
        .await
        .expect("connect to the Spark server");

    let small = Bytes::from_static(b"0123456789abcdef");
    check(
        within(c.send_rpc(small.clone())).await.ok() == Some(small.clone()),
        "rpc 16-byte echo",
    );
    check(
        within(c.send_rpc(Bytes::new()))
            .await
            .map(|b| b.is_empty())
            .unwrap_or(false),
        "rpc empty echo",
    );
    let big = pattern(1 << 20);
    check(
        within(c.send_rpc(big.clone())).await.ok() == Some(big),
        "rpc 1 MiB echo",
    );

    let futs: Vec<_> = (0..1000)
        .map(|i| c.send_rpc(Bytes::from(format!("req-{i}"))))
        .collect();
    let mut all = true;
    for (i, f) in futs.into_iter().enumerate() {
        all &= within(f).await.ok() == Some(Bytes::from(format!("req-{i}")));
    }
    check(all, "1000 pipelined rpcs");

    for i in 0..10 {
        c.send(Bytes::from(format!("one-way-{i}"))).expect("send");
    }
    let count = within(c.send_rpc(Bytes::from_static(b"__oneway_count__"))).await;
    check(
        count.ok().as_deref() == Some(&b"10"[..]),
        "10 one-way messages counted",
    );

    match within(c.send_rpc(Bytes::from_static(b"__fail__"))).await {
        Err(TransportError::RpcFailure { message, .. }) => check(
            message.contains("failed on request"),
            "rpc failure carries the JVM error",
        ),
        other => check(false, &format!("rpc failure, got {other:?}")),
    }

    let (s1, s2, s3, s4) = (
        c.stream("bytes/1000"),
        c.stream("nope"),
        c.stream("bytes/0"),
        c.stream("bytes/3000000"),
    );
    let b1 = within(async { within(s1).await?.collect(64 << 20).await }).await;
    check(b1.ok() == Some(pattern(1000)), "stream bytes/1000");
    let e2 = within(s2).await.err().map(|e| e.to_string());
    check(
        e2.as_deref() == Some("Stream 'nope' was not found."),
        "stream failure text",
    );
    let b3 = within(async { within(s3).await?.collect(64 << 20).await }).await;
    check(
        b3.map(|b| b.is_empty()).unwrap_or(false),
        "zero-length stream",
    );
    let b4 = within(async { within(s4).await?.collect(64 << 20).await }).await;
    check(b4.ok() == Some(pattern(3_000_000)), "stream bytes/3000000");

    check(
        within(c.fetch_chunk(1, 3)).await.ok() == Some(pattern(3000)),
        "chunk (1,3)",
    );
    let e = within(c.fetch_chunk(2, 0))
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    check(
        e.starts_with("Failure while fetching StreamChunkId[streamId=2,chunkIndex=0]: ")
            && e.contains("Unknown stream 2"),
        &format!(
            "chunk of unknown stream fails: {}",
            e.lines().next().unwrap_or_default()
        ),
    );

    // Spark's RpcHandler rejects uploads by default: an RpcFailure, then Spark closes the
    // channel (it cannot know how much of the body was sent).
    let up = within(c.upload_stream(Bytes::from_static(b"meta"), pattern(5000))).await;
    check(
        matches!(up, Err(TransportError::RpcFailure { .. })),
        "upload refused by default handler",
    );
    within(async {
        while c.is_active() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    check(true, "Spark closes the channel after a refused upload");
    let c2 = within(factory.create_client(&host, port))
        .await
        .expect("reconnect");
    check(c2 != c, "the pool replaced the closed connection");
    check(
        within(c2.send_rpc(small.clone())).await.ok() == Some(small),
        "new connection works",
    );
    factory.close();
    println!("ALL OK (rpcenv TransportClient -> Spark TransportServer)");
}
