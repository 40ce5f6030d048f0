//! Rough figures: 16-byte RPC round trips over loopback, ours vs a hand-written tokio
//! length-prefixed echo (the floor), sequential and pipelined. `cargo run --release --example
//! bench_roundtrip`. Compare within one run only.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rpcenv_transport::{
    NoOpRpcHandler, RpcHandler, RpcResponder, TransportClient, TransportClientFactory,
    TransportConf, TransportServer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Echo;
impl RpcHandler for Echo {
    fn receive(&self, _c: &TransportClient, m: Bytes, r: RpcResponder) {
        r.respond(m);
    }
    fn receive_one_way(&self, _c: &TransportClient, _m: Bytes) {}
}

async fn floor_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            s.set_nodelay(true).unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let mut len = [0u8; 4];
                let mut buf = vec![0u8; 1 << 16];
                while r.read_exact(&mut len).await.is_ok() {
                    let n = u32::from_be_bytes(len) as usize;
                    if r.read_exact(&mut buf[..n]).await.is_err() {
                        break;
                    }
                    let mut out = Vec::with_capacity(4 + n);
                    out.extend_from_slice(&len);
                    out.extend_from_slice(&buf[..n]);
                    if w.write_all(&out).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

fn report(name: &str, ops: usize, secs: f64) {
    println!(
        "{name:<40} {ops:>8} ops {secs:>7.3} s {:>12.0} ops/s {:>8.1} us/op",
        ops as f64 / secs,
        secs * 1e6 / ops as f64
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = 20_000;
    let payload = Bytes::from(vec![7u8; 16]);

    // Floor: sequential.
    let port = floor_server().await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.set_nodelay(true).unwrap();
    let mut frame = Vec::new();
    frame.extend_from_slice(&16u32.to_be_bytes());
    frame.extend_from_slice(&payload);
    let mut back = vec![0u8; 20];
    for round in 0..2 {
        let t = Instant::now();
        for _ in 0..n {
            s.write_all(&frame).await.unwrap();
            s.read_exact(&mut back).await.unwrap();
        }
        if round == 1 {
            report("floor: sequential 16 B echo", n, t.elapsed().as_secs_f64());
        }
    }

    // Ours: sequential.
    let server = TransportServer::bind(TransportConf::default(), "127.0.0.1", 0, Arc::new(Echo))
        .await
        .unwrap();
    let f = TransportClientFactory::new(TransportConf::default(), Arc::new(NoOpRpcHandler));
    let c = f.create_client("127.0.0.1", server.port()).await.unwrap();
    for round in 0..2 {
        let t = Instant::now();
        for _ in 0..n {
            c.send_rpc(payload.clone()).await.unwrap();
        }
        if round == 1 {
            report(
                "rpcenv-transport: sequential 16 B rpc",
                n,
                t.elapsed().as_secs_f64(),
            );
        }
    }

    // Ours: 64 outstanding.
    let total = 200_000;
    for round in 0..2 {
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..64 {
            let c = c.clone();
            let p = payload.clone();
            set.spawn(async move {
                for _ in 0..total / 64 {
                    c.send_rpc(p.clone()).await.unwrap();
                }
            });
        }
        while set.join_next().await.is_some() {}
        if round == 1 {
            report(
                "rpcenv-transport: 64 outstanding 16 B rpc",
                total / 64 * 64,
                t.elapsed().as_secs_f64(),
            );
        }
    }

    // Ours: one-way sends, then one rpc to fence.
    let sends = 1_000_000;
    let t = Instant::now();
    for _ in 0..sends {
        c.send(payload.clone()).unwrap();
    }
    c.send_rpc(payload.clone()).await.unwrap();
    report(
        "rpcenv-transport: one-way 16 B sends",
        sends,
        t.elapsed().as_secs_f64(),
    );
}
